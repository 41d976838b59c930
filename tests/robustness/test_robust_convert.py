"""`stablesr convert` with bad configs, bad checkpoints and bad outputs: one line, exit 2 (usage)
or 1 (runtime), and an existing output left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture
def sr_files(tmp_path, stablesr_tiny_state, cfw_tiny_state, tiny_config):
    """The tiny official-layout SR checkpoint and CFW checkpoint, with the configs that fit them."""
    from stablesr.models.text_encoder import OpenCLIPTextEncoder
    from stablesr.weights.keymap_unet import encoder_config_from_ldm, unet_config_from_ldm
    from stablesr.weights.keymap_vae import vae_config_from_ldm

    state = dict(stablesr_tiny_state)
    state.update({f"first_stage_model.{k}": v for k, v in cfw_tiny_state.items() if "fusion_layer" not in k})
    torch.manual_seed(0)
    text = OpenCLIPTextEncoder(width=64, layers=2, heads=1, embed_dim=64)
    state.update({f"cond_stage_model.model.{k}": v for k, v in text.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "stablesr_000117.ckpt")
    wrong_cfw = {k: (torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if "fusion_layer" in k and v.ndim == 4 else v)
                 for k, v in cfw_tiny_state.items()}
    torch.save({"state_dict": wrong_cfw}, tmp_path / "vqgan_cfw_wrong.ckpt")
    configs = {"unet": unet_config_from_ldm(tiny_config["unet_config.params"]),
               "encoder": encoder_config_from_ldm(tiny_config["structcond_stage_config.params"]),
               "vae": vae_config_from_ldm(tiny_config["ddconfig (first_stage_config & CFW)"], embed_dim=4)}
    for name, config in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
    (tmp_path / "not_json.json").write_text("{unet: 1")
    (tmp_path / "a_list.json").write_text("[1, 2]")
    (tmp_path / "bad_keys.json").write_text(json.dumps({**configs["unet"], "no_such_argument": 3}))
    wider = [2 * width for width in configs["unet"]["block_out_channels"]]
    (tmp_path / "wider.json").write_text(json.dumps({**configs["unet"], "block_out_channels": wider}))
    (tmp_path / "truncated.ckpt").write_bytes((tmp_path / "stablesr_000117.ckpt").read_bytes()[:5000])
    (tmp_path / "afile").write_text("x")
    return tmp_path


def _argv(folder: Path, output: Path, **replace) -> list:
    argv = {"ckpt": folder / "stablesr_000117.ckpt", "--unet-config": folder / "unet.json",
            "--encoder-config": folder / "encoder.json", "--vae-config": folder / "vae.json", **replace}
    extra = [argv.pop("cfw")] if "cfw" in argv else []
    return ["convert", argv.pop("ckpt"), *extra, "-o", output, *[x for pair in argv.items() for x in pair]]


CASES = {  # name: (replacements, exit code, message)
    "missing unet config": ({"--unet-config": "absent.json"}, 2, "--unet-config"),
    "unet config not json": ({"--unet-config": "not_json.json"}, 2, "is not JSON"),
    "vae config a list": ({"--vae-config": "a_list.json"}, 2, "must hold a JSON object"),
    "unet config unknown key": ({"--unet-config": "bad_keys.json"}, 2, "no_such_argument"),
    "cfw of the wrong shape": ({"cfw": "vqgan_cfw_wrong.ckpt"}, 2, "CFW autoencoder: 70 tensors of the wrong shape"),
    "unet config of another size": ({"--unet-config": "wider.json"}, 2, "the diffusers UNet: 685 mis-shaped"),
    "truncated checkpoint": ({"ckpt": "truncated.ckpt"}, 2, "truncated.ckpt"),
    "absent checkpoint": ({"ckpt": "absent.ckpt"}, 2, "absent.ckpt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_are_one_line(cli, sr_files, case):
    replace, expected_code, message = CASES[case]
    replace = {key: sr_files / value for key, value in replace.items()}
    code, _, err = cli(*_argv(sr_files, sr_files / "model", **replace))
    assert code == expected_code and message in err and err.count("\n") == 1, err
    assert not (sr_files / "model").exists()


def test_output_that_is_a_file_or_holds_other_files_is_untouched(cli, sr_files):
    code, _, err = cli(*_argv(sr_files, sr_files / "afile"), "--overwrite")
    assert code == 2 and "is a file, not a folder" in err and (sr_files / "afile").read_text() == "x"
    (sr_files / "photos").mkdir()
    (sr_files / "photos" / "keep.jpg").write_bytes(b"precious")
    code, _, err = cli(*_argv(sr_files, sr_files / "photos"), "--overwrite")
    assert code == 2 and "holds files but no model" in err
    assert [p.name for p in (sr_files / "photos").iterdir()] == ["keep.jpg"]


def test_a_full_disk_during_overwrite_keeps_the_old_model(cli, sr_files, monkeypatch):
    import errno

    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.weights.loading import load_pipeline

    code, _, err = cli(*_argv(sr_files, sr_files / "model"))
    assert code == 0, err
    before = {p: p.read_bytes() for p in sorted((sr_files / "model").rglob("*")) if p.is_file()}

    def full_disk(self, folder, **kwargs):
        (Path(folder) / "unet").mkdir(parents=True)
        (Path(folder) / "unet" / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StableSRPipeline, "save_pretrained", full_disk)
    code, _, err = cli(*_argv(sr_files, sr_files / "model"), "--overwrite")
    assert code == 1 and "No space left on device" in err and "nothing was changed" in err
    assert {p: p.read_bytes() for p in sorted((sr_files / "model").rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in sr_files.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    assert load_pipeline(sr_files / "model").config.cfw_trained is False

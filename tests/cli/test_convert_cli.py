"""`stablesr convert` on official-layout checkpoints (the tiny parity weights packed like the real files)."""

import json

import pytest
import torch

from conftest import assert_close_scaled
from stablesr.cli.main import main
from stablesr.models.text_encoder import (
    OFFICIAL_NEGATIVE_PROMPT,
    OpenCLIPTextEncoder,
    empty_prompt_tokens,
    known_prompt_tokens,
)
from stablesr.weights.keymap_unet import encoder_config_from_ldm, unet_config_from_ldm
from stablesr.weights.keymap_vae import vae_config_from_ldm
from stablesr.weights.loading import load_pipeline


class ModelCheckpoint:  # stands in for the pytorch_lightning callback pickled in the official .ckpt files
    def __init__(self):
        self.monitor = "val/loss"


@pytest.fixture(scope="module")
def official_files(tmp_path_factory, stablesr_tiny_state, cfw_tiny_state, tiny_config):
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    text = OpenCLIPTextEncoder(width=64, layers=2, heads=1, embed_dim=64)
    state = dict(stablesr_tiny_state)
    state.update({f"first_stage_model.{k}": v for k, v in cfw_tiny_state.items() if "fusion_layer" not in k})
    state.update({f"cond_stage_model.model.{k}": v for k, v in text.state_dict().items()})
    state["alphas_cumprod"] = torch.ones(1000)  # schedule buffers are ignored
    torch.save({"state_dict": state, "epoch": 117, "callbacks": {"ModelCheckpoint": ModelCheckpoint()}},
               folder / "stablesr_000117.ckpt")
    torch.save({"state_dict": {**cfw_tiny_state, "loss.logvar": torch.zeros(())}}, folder / "vqgan_cfw_00011.ckpt")
    configs = {"unet": unet_config_from_ldm(tiny_config["unet_config.params"]),
               "encoder": encoder_config_from_ldm(tiny_config["structcond_stage_config.params"]),
               "vae": vae_config_from_ldm(tiny_config["ddconfig (first_stage_config & CFW)"], embed_dim=4)}
    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    return folder, text


def convert_args(folder, output):
    return ["convert", str(folder / "stablesr_000117.ckpt"), str(folder / "vqgan_cfw_00011.ckpt"), "-o", str(output),
            "--unet-config", str(folder / "unet.json"), "--encoder-config", str(folder / "encoder.json"),
            "--vae-config", str(folder / "vae.json")]


def test_convert_then_load_reproduces_the_official_end_to_end_case(tmp_path, official_files, parity_cases):
    folder, text = official_files
    assert main(convert_args(folder, tmp_path / "model")) == 0
    pipe = load_pipeline(tmp_path / "model")
    assert pipe.config.cfw_trained and pipe.prediction_type == "epsilon"
    with torch.no_grad():  # the cached '' embedding is the text tower's penultimate layer + ln_final
        assert torch.allclose(pipe.prompt_embeds.null, text(empty_prompt_tokens()), atol=1e-6)
        negative = text(known_prompt_tokens(OFFICIAL_NEGATIVE_PROMPT))  # cached without a tokenizer
        assert torch.allclose(pipe.encode_prompt(OFFICIAL_NEGATIVE_PROMPT), negative, atol=1e-6)
        assert not torch.allclose(negative, pipe.prompt_embeds.null)
        pipe.prompt_embeds.null.copy_(parity_cases["b.context"])  # the fixture's stand-in for OpenCLIP('')
    cases = parity_cases
    draws = iter(cases[f"i.noise.{k:03d}"] for k in range(6))
    out = pipe((cases["i.lr_image"] + 1) / 2, upscale=4, num_inference_steps=4, fidelity=0.5, color_fix="wavelet",
               tile_size=16, tile_overlap=8, tile_batch_size=1, faithful=True, noise_sampler=lambda like: next(draws),
               output_type="pt", progress=False).images
    assert_close_scaled(out, cases["i.im_sr"], 1e-3, "i.im_sr via convert")


def test_convert_refuses_to_overwrite_and_reports_partial_checkpoints(tmp_path, official_files, capsys):
    folder, _ = official_files
    assert main(convert_args(folder, tmp_path / "model")) == 0
    assert main(convert_args(folder, tmp_path / "model")) == 2
    assert "--overwrite" in capsys.readouterr().err
    state = torch.load(folder / "stablesr_000117.ckpt", weights_only=False)["state_dict"]
    dropped = next(k for k in state if ".spade.mlp_gamma.weight" in k)
    del state[dropped]
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    args = convert_args(folder, tmp_path / "other")
    args[1] = str(tmp_path / "partial.ckpt")
    assert main(args) == 2
    assert "mlp_gamma" in capsys.readouterr().err  # names the missing key; nothing written
    assert not (tmp_path / "other" / "model_index.json").exists()

"""`stablesr train` with bad configs, bad data, occupied output folders and incompatible or tampered
checkpoints: one line and exit 2 before any work, or a run that skips what it cannot read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from robust_helpers import write_image
from safetensors.torch import load_file, save_file

RAN = []


def _run_args(init: Path, hr: Path, output: Path, *extra) -> list:
    return ["train", "stablesr", "--model.pipeline", init, "--data.hr_folders", hr, "--data.crop_size", "32",
            "--data.min_size", "32", "--data.batch_size", "2", "--data.num_workers", "0", "--data.degradation",
            "bicubic", "--run.max_steps", "2", "--run.gradient_accumulation_steps", "1", "--run.checkpoint_every",
            "1", "--run.progress", "false", "--run.ema_decay", "0.9", "--run.output_dir", output, *extra]


@pytest.fixture(scope="module")
def hr(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("robust_hr")
    for index in range(3):
        write_image(folder / f"hr{index}.png", size=(48, 40), seed=index)
    return folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, hr) -> Path:
    """A 2-step run (batch 2, EMA on, one process) with checkpoints at steps 1 and 2."""
    from stablesr.cli.main import main

    output = tmp_path_factory.mktemp("robust_run") / "run"
    assert main([str(arg) for arg in _run_args(tiny_model_dir, hr, output)]) == 0
    return output


def _one_error_line(err: str) -> bool:
    """Exactly one `error:` line, and it ends the output (progress bars of model loading may precede it)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    return sum(line.startswith("error:") for line in lines) == 1 and lines[-1].startswith("error:")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_string_for_a_list_option_is_one_element(cli, tmp_path):
    (tmp_path / "train.yaml").write_text("data: {hr_folders: /photos}\nrun: {validation_images: one.png}\n")
    code, out, _ = cli("train", "stablesr", "--config", tmp_path / "train.yaml", "--print-config")
    config = json.loads(out)
    assert code == 0 and config["data"]["hr_folders"] == ["/photos"] and config["run"]["validation_images"] == [
        "one.png"]
    code, out, _ = cli("train", "stablesr", "--data.hr_folders", "/photos", "--print-config")
    assert code == 0 and json.loads(out)["data"]["hr_folders"] == ["/photos"]


def _bad_setup_cases(tmp_path: Path, hr: Path) -> dict[str, tuple[list, str]]:
    (tmp_path / "syntax.yaml").write_text("data: {hr_folders: [a\n")
    (tmp_path / "list.yaml").write_text("- data\n")
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "small" / "tiny.png", size=(20, 20))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("keep me")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return {
        "yaml syntax": (["--config", tmp_path / "syntax.yaml"], "syntax.yaml is not valid YAML"),
        "yaml not a mapping": (["--config", tmp_path / "list.yaml"], "must hold a mapping"),
        "option not yaml": (["--run.max_steps", "[1"], "--run.max_steps '[1' is not a valid YAML value"),
        "missing folder": (["--data.hr_folders", tmp_path / "absent"], "not found"),
        "empty folder": (["--data.hr_folders", tmp_path / "empty"], "no usable images"),
        "all too small": (["--data.hr_folders", tmp_path / "small"], "no usable images (>= 32 px"),
        "queue not a multiple": (["--data.degrade_on", "device", "--data.queue_size", "5"], "multiple of"),
        "output occupied": (["--run.output_dir", tmp_path / "occupied"], "already holds files"),
        "output is a file": (["--run.output_dir", tmp_path / "afile"], "is a file, not a folder"),
        "overwrite and resume": (["--overwrite", "--run.resume", "latest"], "choose one"),
        "missing validation image": (["--run.validation_images", tmp_path / "absent.png"], "absent.png"),
        "broken validation image": (["--run.validation_images", tmp_path / "broken.png"], "broken.png"),
        "bad choice": (["--data.degradation", "blur"], "degradation must be one of"),
    }


BAD_SETUPS = ["yaml syntax", "yaml not a mapping", "option not yaml", "missing folder", "empty folder",
              "all too small", "queue not a multiple", "output occupied", "output is a file", "overwrite and resume",
              "missing validation image", "broken validation image", "bad choice"]


@pytest.mark.parametrize("case", BAD_SETUPS)
def test_bad_setups_are_one_line_before_any_work(cli, tmp_path, tiny_model_dir, hr, case):
    extra, message = _bad_setup_cases(tmp_path, hr)[case]
    before = {p.name for p in tmp_path.iterdir()}
    code, _, err = cli(*_run_args(tiny_model_dir, hr, tmp_path / "run"), *extra)
    assert code == 2 and message in err and _one_error_line(err), err
    assert {p.name for p in tmp_path.iterdir()} == before  # no output folder was started
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "keep me"


def test_unreadable_training_images_are_reported_and_skipped(cli, tmp_path, tiny_model_dir, hr):
    data = tmp_path / "data"
    shutil.copytree(hr, data)
    jpeg = write_image(data / "cut.jpg", size=(160, 160)).read_bytes()
    (data / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])  # the header is fine, the pixels end early
    (data / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped unreadable training image .*cut.jpg"):
        code, out, _ = cli(*_run_args(tiny_model_dir, data, tmp_path / "run"), "--run.max_steps", "3")
    assert code == 0 and f"left out 1 of 5 training images (too small or unreadable): {data / 'empty.png'}" in out
    assert (tmp_path / "run" / "checkpoints" / "step-00000003").is_dir()


def test_overwrite_replaces_an_earlier_run(cli, tmp_path, finished_run, tiny_model_dir, hr):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("keep me")
    code, _, _ = cli(*_run_args(tiny_model_dir, hr, run), "--run.max_steps", "1", "--overwrite")
    assert code == 0 and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
    assert len((run / "logs" / "train_log.csv").read_text().splitlines()) == 2  # header + step 1 only
    assert (run / "notes.txt").read_text() == "keep me"


def _tamper(run: Path, how: str) -> None:
    latest = run / "checkpoints" / "step-00000002"
    if how == "processes":
        state = json.loads((latest / "trainer_state.json").read_text())
        (latest / "trainer_state.json").write_text(json.dumps({**state, "num_processes": 2}))
    elif how == "model size":
        weights = load_file(str(latest / "trainable.safetensors"))
        name = sorted(weights)[0]
        weights[name] = torch.zeros(weights[name].shape[0] + 1, *weights[name].shape[1:])
        save_file(weights, str(latest / "trainable.safetensors"))
    elif how == "pickled code":
        class Evil:
            def __reduce__(self):
                return RAN.append, ("optimizer.pt ran code",)

        torch.save({"optimizers": Evil()}, latest / "optimizer.pt")


RESUME_CASES = {  # name: (extra options, tampering, message)
    "batch size": (["--data.batch_size", "3"], None, "data.batch_size 2 in the checkpoint, 3 now"),
    "accumulation": (["--run.gradient_accumulation_steps", "2"], None,
                     "run.gradient_accumulation_steps 1 in the checkpoint, 2 now"),
    "ema off": (["--run.ema_decay", "0"], None, "EMA on in the checkpoint, off now"),
    "processes": ([], "processes", "processes 2 in the checkpoint, 1 now"),
    "model size": ([], "model size", "model size: trainable"),
    "pickled code": ([], "pickled code", "optimizer.pt: not a checkpoint file written by stablesr"),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_incompatible_or_tampered_checkpoints_are_refused(cli, tmp_path, finished_run, tiny_model_dir, hr, case):
    extra, tampering, message = RESUME_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if tampering:
        _tamper(run, tampering)
    before = _tree(run)
    code, _, err = cli(*_run_args(tiny_model_dir, hr, run), "--run.max_steps", "3", "--run.resume", "latest", *extra)
    assert code == 2 and "cannot resume from" in err and message in err and _one_error_line(err), err
    assert _tree(run) == before and RAN == []


def test_a_compatible_resume_continues(cli, tmp_path, finished_run, tiny_model_dir, hr):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    code, out, _ = cli(*_run_args(tiny_model_dir, hr, run), "--run.max_steps", "3", "--run.resume", "latest")
    assert code == 0 and f"resumed from {run / 'checkpoints' / 'step-00000002'} at step 2" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002",
                                                                      "step-00000003"]


def test_a_full_disk_mid_run_is_one_line_and_keeps_finished_checkpoints(cli, tmp_path, tiny_model_dir, hr,
                                                                        monkeypatch):
    import errno

    from stablesr.training import checkpoints

    real_write = checkpoints.write_main_files

    def write_until_full(folder, *, step, **kwargs):
        if step >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(folder, step=step, **kwargs)

    monkeypatch.setattr(checkpoints, "write_main_files", write_until_full)
    code, _, err = cli(*_run_args(tiny_model_dir, hr, tmp_path / "run"), "--run.max_steps", "3")
    assert code == 1 and "training stopped at step 2" in err and "No space left on device" in err
    assert _one_error_line(err)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.is_dir()) == [
        "step-00000001", "step-00000002.tmp"]


def test_exports_are_readable_and_replace_a_stale_manifest(cli, tmp_path, tiny_model_dir, tiny_pipeline, hr):
    import os
    import stat

    from stablesr.weights.folders import MANIFEST, write_model_folder
    from stablesr.weights.loading import load_pipeline

    exported = write_model_folder(tmp_path / "exported", tiny_pipeline.save_pretrained)
    assert (exported / MANIFEST).is_file()
    code, _, _ = cli(*_run_args(tiny_model_dir, hr, tmp_path / "run"), "--run.max_steps", "1", "--export", exported)
    assert code == 0 and not (exported / MANIFEST).exists()
    assert load_pipeline(exported).config.cfw_trained is True
    mask = os.umask(0)
    os.umask(mask)
    for folder in (exported, tmp_path / "run"):
        modes = {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*.safetensors")}
        assert modes == {0o666 & ~mask}, folder


def test_overwrite_with_a_bad_model_keeps_the_earlier_run(cli, tmp_path, finished_run, hr):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _tree(run)
    code, _, err = cli(*_run_args(tmp_path / "no_model", hr, run), "--overwrite")
    assert code == 2 and "no_model" in err and _one_error_line(err)
    assert _tree(run) == before


@pytest.mark.parametrize("extra, message", [
    ([], "set `pipeline:` to the stage-1 pipeline folder"),
    (["--pipeline", "{model}", "--data.folders", "{tmp}/absent"], "no latents/*.safetensors or latents/*.npy"),
    (["--pipeline", "{tmp}/absent_model", "--data.folders", "{tmp}/triplets"], "absent_model"),
])
def test_cfw_bad_setups_are_one_line(cli, tmp_path, tiny_model_dir, extra, message):
    (tmp_path / "triplets" / "latents").mkdir(parents=True)
    save_file({"latent": torch.zeros(1, 4, 4, 4)}, str(tmp_path / "triplets" / "latents" / "a.safetensors"))
    extra = [arg.format(model=tiny_model_dir, tmp=tmp_path) for arg in extra]
    if not any(arg == "--data.folders" for arg in extra):
        extra += ["--data.folders", str(tmp_path)]
    code, _, err = cli("train", "cfw", *extra, "--run.output_dir", tmp_path / "run", "--run.progress", "false")
    assert code == 2 and message in err and _one_error_line(err), err
    assert not (tmp_path / "run").exists()

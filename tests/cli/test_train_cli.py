"""End to end on CPU: `stablesr train stablesr` -> pipeline folder -> `stablesr upscale --model FOLDER`,
then `generate-cfw-data` -> `train cfw` on the same tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import PIL.Image
import pytest

from conftest import write_hr_images
from stablesr.cli.main import main

TRAINING_TESTS = Path(__file__).resolve().parents[1] / "training"


def _tiny_models():
    spec = importlib.util.spec_from_file_location("tiny_models", TRAINING_TESTS / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tiny = _tiny_models()
    root = tmp_path_factory.mktemp("train_cli")
    tiny.make_tiny_pipeline().save_pretrained(root / "init", safe_serialization=True)
    write_hr_images(root / "hr", count=3)
    (root / "train.yaml").write_text(
        f"model: {{pipeline: {root / 'init'}}}\n"
        f"data: {{hr_folders: [{root / 'hr'}], crop_size: 64, min_size: 64, batch_size: 2, num_workers: 0}}\n"
        "run: {max_steps: 100, gradient_accumulation_steps: 2, checkpoint_every: 2, progress: false}\n")
    return root


def test_print_config_applies_yaml_then_overrides(workspace, capsys):
    assert main(["train", "stablesr", "--config", str(workspace / "train.yaml"), "--run.max_steps", "7",
                 "--optimizer.betas", "[0.8, 0.9]", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["run"]["max_steps"] == 7 and config["run"]["gradient_accumulation_steps"] == 2
    assert config["optimizer"]["betas"] == [0.8, 0.9] and config["data"]["degradation"] == "stablesr"


def test_bad_option_value_is_one_clear_error(workspace, capsys):
    assert main(["train", "stablesr", "--config", str(workspace / "train.yaml"),
                 "--run.mixed_precision", "fp8", "--print-config"]) == 2
    assert "mixed_precision must be one of" in capsys.readouterr().err


def test_train_then_upscale_with_the_trained_folder(workspace):
    run_dir = workspace / "run"
    assert main(["train", "stablesr", "--config", str(workspace / "train.yaml"), "--run.max_steps", "2",
                 "--run.output_dir", str(run_dir), "--export", str(workspace / "exported")]) == 0
    for folder in (run_dir, workspace / "exported"):
        assert (folder / "model_index.json").is_file() and (folder / "sr_module").is_dir()
    assert (run_dir / "checkpoints" / "step-00000002" / "optimizer.pt").is_file()
    PIL.Image.new("RGB", (12, 10), (120, 30, 200)).save(workspace / "lr.png")
    assert main(["upscale", str(workspace / "lr.png"), "-o", str(workspace / "sr"), "--model", str(run_dir),
                 "--steps", "2", "--tile-size", "8", "--tile-overlap", "4", "--device", "cpu", "--no-progress"]) == 0
    assert PIL.Image.open(workspace / "sr" / "lr.png").size == (48, 40)


def test_cfw_data_then_cfw_training(workspace):
    assert main(["generate-cfw-data", str(workspace / "hr"), "--model", str(workspace / "init"), "-o",
                 str(workspace / "cfw"), "--num-samples", "2", "--crop-size", "32", "--steps", "2",
                 "--degradation", "bicubic", "--device", "cpu", "--no-progress"]) == 0
    assert len(list((workspace / "cfw" / "latents").iterdir())) == 2
    assert main(["train", "cfw", "--pipeline", str(workspace / "init"), "--data.folders", f"[{workspace / 'cfw'}]",
                 "--data.num_workers", "0", "--loss.perceptual_weight", "0", "--loss.disc_start", "1",
                 "--loss.disc_channels", "8", "--run.max_steps", "2", "--run.gradient_accumulation_steps", "1",
                 "--run.output_dir", str(workspace / "cfw_run"), "--run.progress", "false"]) == 0
    index = json.loads((workspace / "cfw_run" / "model_index.json").read_text())
    assert index["cfw_trained"] is True


def test_two_process_cpu_ddp_run_trains_checkpoints_and_exports(workspace, tmp_path):
    """torchrun with 2 ranks on CPU: accelerate runs them as one gloo DDP job (one writer per checkpoint)."""
    import os
    import subprocess
    import sys

    output = tmp_path / "ddp"
    port = str(_free_port())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               "-m", "stablesr", "train", "stablesr", "--config", str(workspace / "train.yaml"),
               "--run.max_steps", "2", "--run.checkpoint_every", "1", "--run.output_dir", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training on 2 process(es) (MULTI_CPU)" in result.stdout
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert (output / "model_index.json").is_file()


def _free_port() -> int:
    """A TCP port nobody listens on now (a fixed one collides with other test runs on the machine)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

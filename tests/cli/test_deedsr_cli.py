"""End to end on CPU with tiny models: `stablesr train deedsr-degradation` (stage 1) -> `stablesr train deedsr`
(stage 2) -> `stablesr upscale --method deedsr --model FOLDER`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import PIL.Image
import torch

from conftest import write_hr_images
from stablesr.cli.main import main
from stablesr.models.degradation_learner import DegradationLearner

TRAINING_TESTS = Path(__file__).resolve().parents[1] / "training"
TINY_LEARNER = "{block: basic, layers: [1, 1], widths: [8, 16], stem_channels: 8}"


def test_stage1_trains_checkpoints_resumes_and_exports_the_learner(tmp_path):
    write_hr_images(tmp_path / "hr", count=3)
    (tmp_path / "stage1.yaml").write_text(
        f"architecture: {TINY_LEARNER}\ncontrastive: {{queue_size: 8, head_dim: 8, patch_size: 8}}\n"
        f"data: {{hr_folders: [{tmp_path / 'hr'}], crop_size: 64, min_size: 64, batch_size: 2, num_workers: 0}}\n"
        f"run: {{output_dir: {tmp_path / 'run'}, checkpoint_every: 1, progress: false}}\n")
    common = ["train", "deedsr-degradation", "--config", str(tmp_path / "stage1.yaml")]
    assert main([*common, "--run.max_steps", "2"]) == 0
    learner = DegradationLearner.from_pretrained(tmp_path / "run" / "degradation_learner")
    assert learner.vector_dim == 16 and learner(torch.rand(1, 3, 16, 16)).shape == (1, 16)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()
    assert main([*common, "--run.max_steps", "3", "--run.resume", "latest"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "step-00000003").is_dir()


def _tiny_deedsr():
    spec = importlib.util.spec_from_file_location("tiny_deedsr", TRAINING_TESTS / "tiny_deedsr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_upscale_method_deedsr_uses_its_settings_and_pipeline(tmp_path, capsys):
    _tiny_deedsr().make_tiny_deedsr_pipeline().save_pretrained(tmp_path / "model", safe_serialization=True)
    PIL.Image.new("RGB", (12, 10), (120, 30, 200)).save(tmp_path / "lr.png")
    common = ["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "sr"), "--method", "deedsr", "--model",
              str(tmp_path / "model"), "--device", "cpu", "--no-progress"]
    assert main([*common, "--fidelity", "0.5"]) == 2
    assert "--fidelity does not apply to --method deedsr" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--guided-steps", "4"]) == 2
    assert "--guided-steps 4 (guided_steps): must be <= the number of steps 3" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--guided-steps", "2", "--tile-size", "8", "--tile-overlap", "4"]) == 0
    assert PIL.Image.open(tmp_path / "sr" / "lr.png").size == (48, 40)


def test_stage1_then_stage2_then_upscale_end_to_end(tmp_path):
    """Both stages from the command line on tiny models, then `upscale --method deedsr` with the result."""
    tiny_models = importlib.util.module_from_spec(
        spec := importlib.util.spec_from_file_location("tiny_models", TRAINING_TESTS / "tiny_models.py"))
    spec.loader.exec_module(tiny_models)
    tiny_models.make_tiny_pipeline().save_pretrained(tmp_path / "base", safe_serialization=True)
    write_hr_images(tmp_path / "hr", count=3)
    data = f"{{hr_folders: [{tmp_path / 'hr'}], crop_size: 64, min_size: 64, batch_size: 2, num_workers: 0}}"
    (tmp_path / "stage1.yaml").write_text(
        f"architecture: {TINY_LEARNER}\ncontrastive: {{queue_size: 8, head_dim: 8, patch_size: 8}}\ndata: {data}\n"
        f"run: {{output_dir: {tmp_path / 'stage1'}, max_steps: 2, progress: false}}\n")
    assert main(["train", "deedsr-degradation", "--config", str(tmp_path / "stage1.yaml")]) == 0
    (tmp_path / "stage2.yaml").write_text(
        f"model: {{base: {tmp_path / 'base'}, degradation_learner: {tmp_path / 'stage1'}}}\n"
        "adapter: {cond_channels: 32, hidden_channels: 16, model_channels: 32, channel_mult: [1, 2], num_heads: 2}\n"
        f"data: {data}\n"
        f"run: {{output_dir: {tmp_path / 'stage2'}, max_steps: 2, gradient_accumulation_steps: 1, progress: false}}\n")
    assert main(["train", "deedsr", "--config", str(tmp_path / "stage2.yaml")]) == 0
    for name in ("unet", "adapter", "degradation_learner", "vae", "scheduler"):
        assert (tmp_path / "stage2" / name).is_dir()
    PIL.Image.new("RGB", (12, 10), (120, 30, 200)).save(tmp_path / "lr.png")
    assert main(["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "sr"), "--method", "deedsr", "--model",
                 str(tmp_path / "stage2"), "--steps", "3", "--tile-size", "8", "--tile-overlap", "4", "--device", "cpu",
                 "--no-progress"]) == 0
    assert PIL.Image.open(tmp_path / "sr" / "lr.png").size == (48, 40)

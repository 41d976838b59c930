"""End to end on CPU with tiny models: `stablesr train deedsr-degradation` (stage 1) -> `stablesr train deedsr`
(stage 2) -> `stablesr upscale --method deedsr --model FOLDER`."""

from __future__ import annotations

import torch

from conftest import write_hr_images
from stablesr.cli.main import main
from stablesr.models.degradation_learner import DegradationLearner

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

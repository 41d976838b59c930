"""Stage-1 trainer on a tiny seeded pipeline: overfitting, exact resume, frozen parts, export."""

from __future__ import annotations

import hashlib

import pytest
import torch

from stablesr.training.config import StableSRTrainConfig, config_from_dict
from stablesr.training.stablesr_trainer import StableSRTrainer, diffusion_target, train_stablesr
from stablesr.training.stream import step_generator
from tiny_models import make_tiny_pipeline


def tiny_config(hr_folder, output_dir, **run) -> StableSRTrainConfig:
    data = {"hr_folders": [str(hr_folder)], "crop_size": 32, "min_size": 32, "batch_size": 2, "num_workers": 0,
            "degradation": "bicubic"}
    run = {"output_dir": str(output_dir), "max_steps": 6, "gradient_accumulation_steps": 1, "checkpoint_every": 3,
           "log_every": 2, "progress": False, **run}
    return config_from_dict(StableSRTrainConfig, {"data": data, "run": run, "optimizer": {"learning_rate": 1e-3}})


def digest(tensors: dict[str, torch.Tensor]) -> str:
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        hasher.update(name.encode())
        hasher.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def test_v_target_is_the_velocity():
    z0, noise, alpha_bar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor(0.36)
    assert torch.equal(diffusion_target(z0, noise, alpha_bar, "epsilon"), noise)
    torch.testing.assert_close(diffusion_target(z0, noise, alpha_bar, "v_prediction"), 0.6 * noise - 0.8 * z0)


def test_thirty_steps_overfit_a_fixed_batch(hr_folder, tmp_path):
    trainer = StableSRTrainer(tiny_config(hr_folder, tmp_path), pipeline=make_tiny_pipeline())
    batch = {"gt": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
             "lr_up": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))}
    # the same generator seed every step: same t, noise and posterior samples -> a truly fixed batch
    losses = [trainer.train_micro_step(batch, step_generator(torch.device("cpu"), 0, 0))["loss"] for _ in range(30)]
    trainer.close()
    assert losses[-1] < losses[0] / 10, losses


def test_frozen_parts_do_not_change_and_only_the_sr_module_trains(hr_folder, tmp_path):
    pipe = make_tiny_pipeline()
    frozen_before = digest({**pipe.unet.state_dict(), **pipe.vae.state_dict()})
    sr_before = digest(pipe.sr_module.state_dict())
    trainer = StableSRTrainer(tiny_config(hr_folder, tmp_path, max_steps=2), pipeline=pipe)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    assert not pipe.unet.training and not pipe.vae.training
    assert all(p.requires_grad for p in pipe.sr_module.parameters())
    trainer.train()
    trainer.close()
    assert digest({**pipe.unet.state_dict(), **pipe.vae.state_dict()}) == frozen_before
    assert digest(pipe.sr_module.state_dict()) != sr_before


@pytest.mark.parametrize("degrade_on", ["loader", "device"])
def test_resume_is_bit_identical(hr_folder, tmp_path, degrade_on):
    def run(output_dir, max_steps, resume=None):
        config = tiny_config(hr_folder, output_dir, max_steps=max_steps, resume=resume, ema_decay=0.9,
                             gradient_accumulation_steps=2)
        config = config_from_dict(StableSRTrainConfig, {**_as_dict(config), "data": {
            **_as_dict(config)["data"], "degrade_on": degrade_on, "queue_size": 4}})
        trainer = StableSRTrainer(config, pipeline=make_tiny_pipeline())
        trainer.train()
        trainer.close()
        return trainer

    straight = run(tmp_path / "straight", 6)
    run(tmp_path / "split", 3)
    resumed = run(tmp_path / "split", 6, resume="latest")
    assert resumed.step == 6
    for name, tensor in straight.trainable.state_dict().items():
        assert torch.equal(resumed.trainable.state_dict()[name], tensor), name
    for name, tensor in straight.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[name], tensor), name
    assert (tmp_path / "split" / "checkpoints" / "step-00000006" / "trainable.safetensors").is_file()


def _as_dict(config) -> dict:
    from stablesr.data.records import to_record

    return to_record(config)


def test_export_loads_into_the_pipeline_and_upscales(hr_folder, tmp_path):
    from stablesr.pipelines.stablesr import StableSRPipeline

    trainer = StableSRTrainer(tiny_config(hr_folder, tmp_path / "run", max_steps=2), pipeline=make_tiny_pipeline())
    folder = trainer.train()
    trainer.close()
    loaded = StableSRPipeline.from_pretrained(folder)
    for name, tensor in trainer.trainable.state_dict().items():
        assert torch.equal(loaded.sr_module.state_dict()[name], tensor), name
    rows = (folder / "logs" / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr") and len(rows) == 1 + 1  # header + the row at step 2
    out = loaded(torch.rand(1, 3, 16, 16), upscale=4, num_inference_steps=2, tile_size=8, tile_overlap=4,
                 progress=False, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_validation_previews_are_written(hr_folder, tmp_path):
    import PIL.Image

    lr_image = tmp_path / "small.png"
    PIL.Image.open(next(hr_folder.iterdir())).resize((12, 8)).save(lr_image)
    config = tiny_config(hr_folder, tmp_path / "run", max_steps=1, validation_images=[str(lr_image)], validate_every=1,
                         validation_steps=2)
    folder = train_stablesr(config, pipeline=make_tiny_pipeline())
    preview = folder / "validation" / "step-00000001" / "small.png"
    assert PIL.Image.open(preview).size == (48, 32)

"""`train vae` and `train prior` (the from-scratch stages of stablesr-nano) and joint prior finetuning."""

from __future__ import annotations

import pytest
import torch

from stablesr.training.config import PriorTrainConfig, StableSRTrainConfig, VAETrainConfig, config_from_dict
from stablesr.training.prior_trainer import PriorTrainer, build_sr_module, build_unet
from stablesr.training.stablesr_trainer import StableSRTrainer
from stablesr.training.stream import step_generator
from stablesr.training.vae_trainer import (
    VAETrainer,
    build_vae,
    frequency_l1,
    kl_to_standard_normal,
    latent_scaling_factor,
    load_trained_vae,
)

TINY_VAE = {"block_out_channels": [32, 32, 32], "num_fuse_blocks": 1, "fuse_growth_channels": 8}
TINY_UNET = {"block_out_channels": [32, 32, 32], "cross_attention_dim": 16, "attention_heads": 2}
TINY_SR = {"cond_channels": 32, "model_channels": 32, "channel_mult": [1, 1, 1], "sft_hidden_channels": 16}


def run_settings(output_dir, **extra) -> dict:
    return {"output_dir": str(output_dir), "max_steps": 3, "gradient_accumulation_steps": 1, "checkpoint_every": 3,
            "log_every": 1, "progress": False, **extra}


def data_settings(hr_folder, crop: int) -> dict:
    return {"hr_folders": [str(hr_folder)], "crop_size": crop, "min_size": crop, "batch_size": 2, "num_workers": 0,
            "repeats": 2, "cache_images": True}


def test_kl_and_frequency_losses_known_values():
    mean, logvar = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # 0.5 * [(1 + 1 - 1 - 0) + (0 + e - 1 - 1)] / 2
    assert kl_to_standard_normal(mean, logvar).item() == pytest.approx(0.25 * (1 + torch.e - 2), rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(3), torch.zeros(3)).item() == 0.0
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert frequency_l1(x, x).item() == 0.0
    # a constant offset c only moves the DC term: |c * sqrt(64)| over 3 * 8 * 5 rfft bins
    assert frequency_l1(x + 0.5, x).item() == pytest.approx(0.5 * 8 * 3 / (3 * 8 * 5), rel=1e-5)


def test_vae_stage_trains_exports_and_sets_the_latent_scale(hr_folder, tmp_path):
    config = config_from_dict(VAETrainConfig, {
        "architecture": TINY_VAE, "data": data_settings(hr_folder, 32),
        "loss": {"disc_start": 2, "disc_weight": 0.1}, "optimizer": {"learning_rate": 2e-3},
        "run": run_settings(tmp_path / "vae")})
    trainer = VAETrainer(config)
    assert not any(p.requires_grad for p in trainer.trainable.fusion_layer_1.parameters())
    coarse = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))  # a smooth, compressible image
    batch = {"gt": torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)}
    losses = [trainer.train_micro_step(batch, step_generator(torch.device("cpu"), 0, 0))["l1"] for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses
    folder = trainer.train()
    vae = load_trained_vae(folder)
    assert vae.config.block_out_channels == [32, 32, 32] or tuple(vae.config.block_out_channels) == (32, 32, 32)
    assert vae.config.scaling_factor == pytest.approx(latent_scaling_factor(vae, trainer.dataset), rel=1e-5)
    assert vae.config.scaling_factor != 1.0
    for name, value in trainer.exported_vae().state_dict().items():
        torch.testing.assert_close(vae.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_prior_stage_exports_a_pipeline_that_upscales(hr_folder, tmp_path):
    torch.manual_seed(0)
    vae = build_vae(config_from_dict(VAETrainConfig, {"architecture": TINY_VAE}).architecture)
    vae.register_to_config(scaling_factor=0.5)
    config = config_from_dict(PriorTrainConfig, {
        "unet": TINY_UNET, "sr_module": TINY_SR, "data": data_settings(hr_folder, 32),
        "optimizer": {"learning_rate": 1e-3}, "run": run_settings(tmp_path / "prior")})
    trainer = PriorTrainer(config, vae=vae)
    before = {k: v.clone() for k, v in trainer.trainable.state_dict().items()}
    batch = {"gt": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    losses = [trainer.train_micro_step(batch, step_generator(torch.device("cpu"), 0, 0))["loss"] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert any(not torch.equal(before[k], v) for k, v in trainer.trainable.state_dict().items())
    folder = trainer.train()

    from stablesr.weights.loading import load_pipeline

    pipe = load_pipeline(folder)
    assert pipe.prediction_type == "v_prediction" and pipe.vae_scale_factor == 4
    assert pipe.config.cfw_trained is False
    assert torch.equal(pipe.prompt_embeds.get("null"), torch.zeros(1, 1, 16))
    for name, value in trainer.trainable.state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[name], value, rtol=0, atol=0, msg=name)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(3))
    out = pipe(image, upscale=4, num_inference_steps=2, tile_size=8, tile_overlap=4, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 48, 64) and torch.isfinite(out).all()


def test_sr_module_sizes_follow_the_unet():
    unet = build_unet(config_from_dict(PriorTrainConfig, {"unet": TINY_UNET}).unet, 4)
    sr_module = build_sr_module(unet, config_from_dict(PriorTrainConfig, {"sr_module": TINY_SR}).sr_module)
    assert len(sr_module.sft_layers) == 3 + 2 + 3 * 2  # down resnets + middle + up resnets (layers_per_block 1)
    feats = sr_module.encoder(torch.randn(1, 4, 16, 16), torch.tensor([10]))
    assert sorted(feats) == [4, 8, 16]


def test_joint_finetuning_trains_and_exports_the_prior(hr_folder, tmp_path):
    from tiny_models import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    config = config_from_dict(StableSRTrainConfig, {
        "train_unet": True, "unet_learning_rate": 1e-3,
        "data": {**data_settings(hr_folder, 32), "degradation": "stablesr", "mild_fraction": 0.5},
        "optimizer": {"learning_rate": 1e-3}, "run": run_settings(tmp_path / "sr", ema_decay=0.5)})
    trainer = StableSRTrainer(config, pipeline=pipe)
    assert all(p.requires_grad for p in pipe.unet.parameters()) and pipe.unet.training
    assert len(trainer.dataset) == 2 * len(trainer.dataset.files)
    folder = trainer.train()
    trainer.close()
    assert any(not torch.equal(unet_before[k], v) for k, v in pipe.unet.state_dict().items())

    from stablesr.weights.loading import load_pipeline

    exported = load_pipeline(folder)
    ema_unet, _ = trainer.exported_modules()
    for name, value in ema_unet.state_dict().items():  # the EMA weights of the jointly trained UNet ship
        torch.testing.assert_close(exported.unet.state_dict()[name], value, rtol=0, atol=0, msg=name)

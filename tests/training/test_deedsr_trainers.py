"""DeeDSR trainers on tiny models: stage 1's step decay; stage 2 trains only the adapter and the cross-attention
key/value projections (learner, UNet rest and VAE bit-identical), resumes exactly and exports a loadable folder."""

from __future__ import annotations

import pytest
import torch
from tiny_deedsr import make_tiny_deedsr_pipeline

from stablesr.pipelines.deedsr import DeeDSRPipeline
from stablesr.training.config import DeeDSRTrainConfig, DegradationTrainConfig, config_from_dict
from stablesr.training.deedsr_trainer import DeeDSRTrainer
from stablesr.training.degradation_trainer import decayed_learning_rate


def test_step_decay_at_forty_and_eighty_percent():
    config = config_from_dict(DegradationTrainConfig, {"run": {"max_steps": 10}})
    assert [decayed_learning_rate(config, step) for step in (0, 3, 4, 7, 8, 9)] == pytest.approx(
        [0.03, 0.03, 0.003, 0.003, 0.0003, 0.0003], rel=1e-12)


def tiny_config(hr_folder, output_dir, **run) -> DeeDSRTrainConfig:
    data = {"hr_folders": [str(hr_folder)], "crop_size": 32, "min_size": 32, "batch_size": 2, "num_workers": 0,
            "degradation": "bicubic"}
    run = {"output_dir": str(output_dir), "max_steps": 2, "gradient_accumulation_steps": 1, "checkpoint_every": 1,
           "progress": False, **run}
    return config_from_dict(DeeDSRTrainConfig, {"data": data, "run": run, "optimizer": {"learning_rate": 1e-3}})


def test_stage2_trains_only_the_adapter_and_key_value_projections(hr_folder, tmp_path):
    pipe = make_tiny_deedsr_pipeline()
    before = {name: p.detach().clone() for name, p in pipe.unet.named_parameters()}
    learner_before = {name: p.detach().clone() for name, p in pipe.degradation_learner.state_dict().items()}
    vae_before = {name: p.detach().clone() for name, p in pipe.vae.named_parameters()}
    adapter_before = pipe.adapter.modulation_layers[0].to_gamma.weight.detach().clone()
    trainer = DeeDSRTrainer(tiny_config(hr_folder, tmp_path / "run"), pipeline=pipe)
    folder = trainer.train()
    trainer.close()
    changed = {name for name, p in pipe.unet.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".attn2.to_k." in name or ".attn2.to_v." in name for name in changed)
    assert all(torch.equal(p, learner_before[name]) for name, p in pipe.degradation_learner.state_dict().items())
    assert all(torch.equal(p, vae_before[name]) for name, p in pipe.vae.named_parameters())
    assert not torch.equal(pipe.adapter.modulation_layers[0].to_gamma.weight, adapter_before)  # leaves zero
    saved = trainer.trainable_weights()["trainable"]
    assert all(name.startswith("adapter.") or ".attn2.to_" in name for name in saved)

    loaded = DeeDSRPipeline.from_pretrained(folder)
    for name, p in loaded.unet.named_parameters():
        assert torch.equal(p, dict(pipe.unet.named_parameters())[name])
    # exact resume: 2 steps then 1 more equals 3 steps straight
    straight = DeeDSRTrainer(tiny_config(hr_folder, tmp_path / "straight", max_steps=3),
                             pipeline=make_tiny_deedsr_pipeline())
    straight.train()
    straight.close()
    resumed = DeeDSRTrainer(tiny_config(hr_folder, tmp_path / "run", max_steps=3, resume="latest"),
                            pipeline=make_tiny_deedsr_pipeline())
    resumed.train()
    resumed.close()
    for name, value in straight.trainable_weights()["trainable"].items():
        assert torch.equal(value, resumed.trainable_weights()["trainable"][name]), name

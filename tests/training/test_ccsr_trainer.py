"""CCSR stage 1 on a tiny pipeline: overfitting a fixed batch (v1, v2), frozen parts, export, the CLI."""

import hashlib

import pytest
import torch
from tiny_ccsr import make_tiny_ccsr_pipeline

from stablesr.training.ccsr_trainer import CCSRStage1Trainer
from stablesr.training.config import CCSRStage1TrainConfig, config_from_dict
from stablesr.training.stream import step_generator


def tiny_config(hr_folder, output_dir, **run):
    data = {"hr_folders": [str(hr_folder)], "crop_size": 32, "min_size": 32, "batch_size": 2, "num_workers": 0,
            "degradation": "bicubic"}
    run = {"output_dir": str(output_dir), "max_steps": 2, "gradient_accumulation_steps": 1, "checkpoint_every": 2,
           "log_every": 1, "progress": False, **run}
    return config_from_dict(CCSRStage1TrainConfig, {"data": data, "run": run, "optimizer": {"learning_rate": 1e-3}})


def digest(tensors):
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        hasher.update(name.encode() + tensors[name].detach().contiguous().numpy().tobytes())
    return hasher.hexdigest()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_twenty_steps_fit_a_fixed_batch(hr_folder, tmp_path, version):
    trainer = CCSRStage1Trainer(tiny_config(hr_folder, tmp_path), pipeline=make_tiny_ccsr_pipeline(version=version))
    batch = {"gt": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
             "lr_up": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))}
    losses = [trainer.train_micro_step(batch, step_generator(torch.device("cpu"), 0, 0)) for _ in range(30)]
    # The fixed batch and draws are deterministic; l_T dominates (x0 from t = 999 amplifies errors by
    # 1/sqrt(a) = 14.6). Adam's first steps turn last-bit gradient differences (CPU, thread count) into
    # different paths, some of which climb back after a dip, so the claim is the lowest loss reached:
    # 0.78-0.84 of the first on the machines and thread counts tried.
    assert min(x["loss"] for x in losses[1:]) < 0.9 * losses[0]["loss"], [x["loss"] for x in losses]
    assert losses[0]["loss"] == pytest.approx(losses[0]["l_eps"] + losses[0]["l_T"] + losses[0]["l_tmax"], rel=1e-6)


def test_only_the_control_module_trains_and_the_export_loads(hr_folder, tmp_path):
    from stablesr.pipelines.ccsr import CCSRPipeline

    pipe = make_tiny_ccsr_pipeline()
    frozen = digest({**pipe.unet.state_dict(), **pipe.vae.state_dict(), **pipe.cond_encoder.state_dict()})
    control = digest(pipe.controlnet.state_dict())
    folder = CCSRStage1Trainer(tiny_config(hr_folder, tmp_path), pipeline=pipe).train()
    assert digest({**pipe.unet.state_dict(), **pipe.vae.state_dict(), **pipe.cond_encoder.state_dict()}) == frozen
    assert digest(pipe.controlnet.state_dict()) != control
    loaded = CCSRPipeline.from_pretrained(folder)
    assert digest(loaded.controlnet.state_dict()) == digest(pipe.controlnet.state_dict())


def test_cli_stage_runs_from_a_pipeline_folder(hr_folder, tmp_path):
    from stablesr.cli.main import main

    make_tiny_ccsr_pipeline().save_pretrained(tmp_path / "ccsr", safe_serialization=True)
    code = main(["train", "ccsr-stage1", "--model.pipeline", str(tmp_path / "ccsr"), "--data.hr_folders",
                 f"[{hr_folder}]", "--data.crop_size", "32", "--data.min_size", "32", "--data.batch_size", "1",
                 "--data.num_workers", "0", "--data.degradation", "bicubic", "--run.max_steps", "1",
                 "--run.output_dir", str(tmp_path / "run"), "--run.progress", "false"])
    assert code == 0 and (tmp_path / "run" / "model_index.json").is_file()


def stage2_config(hr_folder, output_dir, **loss):
    from stablesr.training.config import CCSRStage2TrainConfig

    data = {"hr_folders": [str(hr_folder)], "crop_size": 32, "min_size": 32, "batch_size": 2, "num_workers": 0,
            "degradation": "bicubic"}
    run = {"output_dir": str(output_dir), "max_steps": 2, "gradient_accumulation_steps": 1, "checkpoint_every": 2,
           "log_every": 1, "progress": False}
    return config_from_dict(CCSRStage2TrainConfig, {"data": data, "run": run, "steps": 15, "loss": {
        "perceptual_weight": 0.0, **loss}, "optimizer": {"learning_rate": 1e-3}})


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_stage2_decoder_fits_the_trajectory_of_a_fixed_batch(hr_folder, tmp_path, version):
    from stablesr.training.ccsr_trainer import CCSRStage2Trainer

    trainer = CCSRStage2Trainer(stage2_config(hr_folder, tmp_path, disc_start=1000),
                                pipeline=make_tiny_ccsr_pipeline(version=version))
    assert set(trainer.trainable) == ({"decoder", "post_quant_conv"} if version == "v1" else {"decoder"})
    batch = {"gt": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
             "lr_up": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))}
    losses = [trainer.train_micro_step(batch, step_generator(torch.device("cpu"), 0, 0))["l1"] for _ in range(15)]
    assert losses[-1] < 0.75 * losses[0], losses  # deterministic: the same trajectory every step


def test_stage2_trains_only_the_decoder_and_discriminator_and_exports(hr_folder, tmp_path):
    from stablesr.pipelines.ccsr import CCSRPipeline
    from stablesr.training.ccsr_trainer import CCSRStage2Trainer

    pipe = make_tiny_ccsr_pipeline()
    frozen = digest({**pipe.unet.state_dict(), **pipe.controlnet.state_dict(), **pipe.vae.encoder.state_dict()})
    decoder = digest(pipe.vae.decoder.state_dict())
    trainer = CCSRStage2Trainer(stage2_config(hr_folder, tmp_path), pipeline=pipe)  # GAN on from step 1
    folder = trainer.train()
    assert digest({**pipe.unet.state_dict(), **pipe.controlnet.state_dict(), **pipe.vae.encoder.state_dict()}) \
        == frozen
    assert digest(pipe.vae.decoder.state_dict()) != decoder
    assert digest(CCSRPipeline.from_pretrained(folder).vae.decoder.state_dict()) == digest(
        pipe.vae.decoder.state_dict())

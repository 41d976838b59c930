"""StableSR stage 1: train the time-aware encoder and the SFT layers on a frozen SD UNet.

Wang et al., "Exploiting Diffusion Prior for Real-World Image Super-Resolution", IJCV 2024,
https://arxiv.org/abs/2305.07015, section 3.2 and the official training recipe:

    z_gt = 0.18215 * sample(q(z | gt)),  z_lr = 0.18215 * sample(q(z | bicubic_up(lr)))
    t ~ U{0, ..., 999},  eps ~ N(0, I),  x_t = sqrt(a_t) z_gt + sqrt(1 - a_t) eps
    loss = || target - UNet_SFT(x_t, t, c_'', E(z_lr, t)) ||^2,  target = eps (or v for v-models)

code name       paper
---------       -----
lr_latent       z_lr (the encoder sees the CLEAN LR latent and the same t as the UNet)
sft_unet        the frozen UNet with SFT modulation
alphas_cumprod  a_t (SD 2.x scaled-linear schedule, 1000 steps)

Only `StableSRModule` (encoder + SFT, ~105.5 M parameters at SD 2.1 size) trains; the UNet, the
VAE and the text embedding are frozen (eval mode, requires_grad False).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stablesr.data.batch_degrader import BatchDegrader
from stablesr.data.datasets import HRFolderDataset, item_seed, list_images, read_rgb
from stablesr.data.degradations import preset_settings
from stablesr.errors import StableSRError
from stablesr.models.sft_unet import SFTUNet
from stablesr.sampling.samplers import q_sample
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear
from stablesr.training.config import StableSRTrainConfig
from stablesr.training.init import load_initial_pipeline
from stablesr.training.loop import Trainer
from stablesr.training.previews import encode_latent, save_png, upscale_preview


def diffusion_target(z_gt: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """eps, or v = sqrt(a) eps - sqrt(1 - a) z_0 (Salimans & Ho 2022) for v-prediction models."""
    if prediction_type == "epsilon":
        return noise
    return alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * z_gt


def scan_hr_folders(config: StableSRTrainConfig) -> HRFolderDataset:
    """The HR training set of `config` (its files' headers checked: missing folders, no usable image raise)."""
    data = config.data
    on_loader = data.degrade_on == "loader"
    settings = preset_settings(data.degradation, scale=data.scale) if on_loader else None
    mild = preset_settings("bicubic", scale=data.scale) if on_loader and data.mild_fraction > 0 else None
    return HRFolderDataset(data.hr_folders, crop_size=data.crop_size, min_size=data.min_size,
                           min_bytes=data.min_bytes, hflip=data.hflip, seed=config.run.seed, degradation=settings,
                           repeats=data.repeats, cache_images=data.cache_images, mild_degradation=mild,
                           mild_fraction=data.mild_fraction)


class StableSRTrainer(Trainer):
    """Stage-1 trainer. `pipeline` (optional) replaces `config.model` as the starting point;
    `dataset` (optional) replaces the HR folders (items with "gt" and "lr_up" in [0, 1])."""

    def __init__(self, config: StableSRTrainConfig, *, pipeline=None, dataset=None) -> None:
        if not config.data.hr_folders and dataset is None:
            raise StableSRError("data.hr_folders is empty: give at least one folder of HR training images")
        if config.data.degrade_on == "device" and config.data.queue_size % config.data.batch_size:
            raise StableSRError(f"data.queue_size {config.data.queue_size} must be a multiple of data.batch_size "
                                f"{config.data.batch_size}")
        self.batch_size, self.num_workers = config.data.batch_size, config.data.num_workers
        self._pipeline, self._dataset = pipeline, dataset
        self._hr_dataset = scan_hr_folders(config) if dataset is None else None  # data errors before the model loads
        super().__init__(config)

    def build(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.pipe = pipe = self._pipeline if self._pipeline is not None else load_initial_pipeline(config.model)
        pipe.unet.eval().requires_grad_(False)
        pipe.vae.eval().requires_grad_(False)
        sr_module = pipe.sr_module.train().requires_grad_(True)
        groups = [{"params": list(sr_module.parameters()), "lr": config.optimizer.learning_rate}]
        self.trainable = sr_module
        if config.train_unet:  # joint finetuning of the prior (a from-scratch prior, e.g. stablesr-nano)
            pipe.unet.train().requires_grad_(True)
            self.trainable = nn.ModuleDict({"sr_module": sr_module, "unet": pipe.unet})
            groups.append({"params": list(pipe.unet.parameters()), "lr": config.unet_learning_rate})
        if config.run.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        pipe.vae.to(accelerator.device)
        self.sft_unet = SFTUNet(pipe.unet, pipe.sr_module)
        optimizer = torch.optim.AdamW(groups, betas=config.optimizer.betas,
                                      weight_decay=config.optimizer.weight_decay, eps=config.optimizer.eps)
        self.model, optimizer = accelerator.prepare(self.sft_unet, optimizer)
        self.optimizers, self.accumulate_modules = {"sr_module": optimizer}, [self.model]
        self.context = pipe.prompt_embeds.get("null").to(accelerator.device)  # (1, 77, D)
        self.alphas_cumprod = alphas_cumprod_from_betas(betas_scaled_linear()).float().to(accelerator.device)
        self.dataset, self.degrader = self._build_data()

    def _build_data(self) -> tuple[torch.utils.data.Dataset, BatchDegrader | None]:
        if self._dataset is not None:
            return self._dataset, None
        data, seed = self.config.data, self.config.run.seed
        settings = preset_settings(data.degradation, scale=data.scale)
        dataset = self._hr_dataset
        if data.degrade_on == "loader":
            return dataset, None
        process_seed = item_seed(seed, self.accelerator.process_index)
        generator = torch.Generator(self.accelerator.device).manual_seed(process_seed)
        return dataset, BatchDegrader(settings, queue_size=data.queue_size, generator=generator)

    # ------------------------------------------------------------------ one micro-batch
    def pairs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(gt, lr_up), each (B, 3, S, S) in [-1, 1] on the device."""
        device = self.accelerator.device
        if self.degrader is not None:
            batch = self.degrader(batch["gt"].to(device))
        return batch["gt"].to(device) * 2 - 1, batch["lr_up"].to(device) * 2 - 1

    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        gt, lr_up = self.pairs(batch)
        vae = self.pipe.vae
        z_gt = encode_latent(vae, gt.to(vae.dtype), generator).float()  # (B, 4, S/8, S/8)
        lr_latent = encode_latent(vae, lr_up.to(vae.dtype), generator).float()
        batch_size = z_gt.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (batch_size,), generator=generator, device=z_gt.device)
        noise = torch.randn(z_gt.shape, generator=generator, device=z_gt.device)
        alpha_bar = self.alphas_cumprod[t].view(batch_size, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        x_t = q_sample(z_gt, alpha_bar, noise)
        target = diffusion_target(z_gt, noise, alpha_bar, self.pipe.prediction_type)
        with self.accelerator.autocast():
            model_out = self.model(x_t, t, self.context.expand(batch_size, -1, -1), lr_latent)
        loss = F.mse_loss(model_out.float(), target)
        self.accelerator.backward(loss)
        max_norm = self.config.optimizer.max_grad_norm
        if max_norm > 0 and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.trainable.parameters(), max_norm)
        self.optimizers["sr_module"].step()
        self.optimizers["sr_module"].zero_grad(set_to_none=True)
        return {"loss": loss.item()}

    # ------------------------------------------------------------------ state, export, previews
    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"trainable": self.trainable.state_dict()}

    def load_trainable_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        self.trainable.load_state_dict(weights["trainable"])

    def rank_state(self) -> dict | None:
        if self.degrader is None:
            return None
        degrader = self.degrader
        return {"queue": {k: v.cpu() for k, v in degrader.queue.items()}, "queue_params": degrader.queue_params,
                "filled": degrader.filled, "generator": degrader.generator.get_state()}

    def load_rank_state(self, state: dict | None) -> None:
        if self.degrader is None or state is None:
            return
        device = self.accelerator.device
        self.degrader.queue = {k: v.to(device) for k, v in state["queue"].items()}
        self.degrader.queue_params, self.degrader.filled = state["queue_params"], state["filled"]
        self.degrader.generator.set_state(state["generator"])

    def exported_modules(self):
        """(unet, sr_module) to ship: the EMA weights of what trained when EMA is on, else the live ones."""
        trained = self.trainable
        if self.ema is not None:
            trained = copy.deepcopy(trained)
            self.ema.copy_to(trained)
        if isinstance(trained, nn.ModuleDict):
            return trained["unet"].eval(), trained["sr_module"]
        return self.pipe.unet, trained

    def exported_sr_module(self):
        """The SR module to ship: the EMA weights when EMA is on, else the live ones."""
        return self.exported_modules()[1]

    def export(self, folder: str | Path) -> Path:
        from stablesr.pipelines.stablesr import StableSRPipeline

        folder = Path(folder)
        if self.accelerator.is_main_process:
            pipe = self.pipe
            unet, sr_module = self.exported_modules()
            exported = StableSRPipeline(unet=unet, sr_module=sr_module, vae=pipe.vae,
                                        scheduler=pipe.scheduler, prompt_embeds=pipe.prompt_embeds,
                                        cfw_trained=pipe.config.cfw_trained)
            exported.save_pretrained(folder, safe_serialization=True)
        self.accelerator.wait_for_everyone()
        return folder

    def validate(self) -> None:
        """SR previews of `run.validation_images` into OUTPUT/validation/step-XXXXXXXX/."""
        run, vae = self.config.run, self.pipe.vae
        fidelity = 0.5 if self.pipe.config.cfw_trained else 0.0
        folder = Path(run.output_dir) / "validation" / f"step-{self.step:08d}"
        self.trainable.eval()
        for path in list_images(run.validation_images):
            generator = torch.Generator(self.accelerator.device).manual_seed(run.seed)
            lr = read_rgb(path)[None].to(vae.device)  # (3, h, w) -> (1, 3, h, w)
            sr = upscale_preview(self.sft_unet, vae, self.context, lr, scale=self.config.data.scale,
                                 steps=run.validation_steps, prediction_type=self.pipe.prediction_type,
                                 fidelity=fidelity, generator=generator)
            save_png(sr, folder / f"{Path(path).stem}.png")
        self.trainable.train()

    def close(self) -> None:
        """Detach the SFT hooks so `self.pipe` is an ordinary pipeline again (ends training)."""
        self.sft_unet.remove_hooks()


def train_stablesr(config: StableSRTrainConfig, *, pipeline=None) -> Path:
    """Run stage-1 training to `config.run.max_steps`; returns the exported pipeline folder."""
    trainer = StableSRTrainer(config, pipeline=pipeline)
    try:
        return trainer.train()
    finally:
        trainer.close()

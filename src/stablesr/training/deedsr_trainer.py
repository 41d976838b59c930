"""DeeDSR stage 2: the degradation-aware adapter on a frozen SD UNet, with the degradation learner frozen.

Bi et al., ECCV 2024 (https://arxiv.org/abs/2404.00661), section 3.3, and the released recipe:

    d = DegradationLearner(lr)                               # frozen, stage 1
    z_gt, z_lr = scaled posterior samples of gt and bicubic_up(lr)
    t ~ U{0, ..., 999},  x_t = sqrt(a_t) z_gt + sqrt(1 - a_t) eps
    loss = || target - UNet_adapted(x_t, t; adapter(z_lr, t, d)) ||^2,   target = eps (or v)

Trainable: the adapter (time-aware encoder, DA blocks, token projection, modulation layers) and every
cross-attention's key/value projection (attn2.to_k / to_v) of the UNet; everything else is frozen.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stablesr.data.datasets import HRFolderDataset
from stablesr.data.degradations import preset_settings
from stablesr.errors import StableSRError
from stablesr.models.deedsr_adapter import DeeDSRModule, DeeDSRUNet, cross_attention_projections
from stablesr.models.degradation_learner import DegradationLearner
from stablesr.pipelines.deedsr import DeeDSRPipeline
from stablesr.sampling.samplers import q_sample
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear
from stablesr.training.config import DeeDSRTrainConfig
from stablesr.training.degradation_trainer import EXPORT_FOLDER
from stablesr.training.loop import Trainer
from stablesr.training.previews import encode_latent
from stablesr.training.stablesr_trainer import diffusion_target


def load_initial_deedsr_pipeline(config: DeeDSRTrainConfig) -> DeeDSRPipeline:
    """A DeeDSR folder to continue, or a StableSR-format base + the stage-1 learner + a fresh adapter."""
    init = config.model
    if (init.pipeline is None) == (init.base is None):
        raise StableSRError("set exactly one of model.pipeline (a DeeDSR folder) or model.base (with "
                            "model.degradation_learner)")
    if init.pipeline is not None:
        return DeeDSRPipeline.from_pretrained(init.pipeline)
    if init.degradation_learner is None:
        raise StableSRError("model.base needs model.degradation_learner: a `stablesr train deedsr-degradation` "
                            "run folder (or its degradation_learner/ folder)")
    from stablesr.weights.loading import load_pipeline

    learner_folder = Path(init.degradation_learner)
    if (learner_folder / EXPORT_FOLDER).is_dir():
        learner_folder = learner_folder / EXPORT_FOLDER
    learner = DegradationLearner.from_pretrained(learner_folder)
    base = load_pipeline(init.base)
    adapter = DeeDSRModule.from_unet(base.unet, vector_dim=learner.vector_dim, **vars(config.adapter))
    return DeeDSRPipeline(unet=base.unet, adapter=adapter, degradation_learner=learner, vae=base.vae,
                          scheduler=base.scheduler)


class DeeDSRTrainer(Trainer):
    """Stage-2 trainer. `pipeline` (optional) replaces `config.model`; `dataset` (optional) replaces the HR
    folders (items with "gt" (3, S, S), "lr" (3, S/s, S/s) and "lr_up" (3, S, S) in [0, 1])."""

    def __init__(self, config: DeeDSRTrainConfig, *, pipeline: DeeDSRPipeline | None = None, dataset=None) -> None:
        data = config.data
        if not data.hr_folders and dataset is None:
            raise StableSRError("data.hr_folders is empty: give at least one folder of HR training images")
        if data.degrade_on != "loader":
            raise StableSRError("train deedsr degrades in the data loader: data.degrade_on must be 'loader'")
        self.batch_size, self.num_workers = data.batch_size, data.num_workers
        self._pipeline = pipeline
        self._dataset = dataset if dataset is not None else HRFolderDataset(
            data.hr_folders, crop_size=data.crop_size, min_size=data.min_size, min_bytes=data.min_bytes,
            hflip=data.hflip, seed=config.run.seed, degradation=preset_settings(data.degradation, scale=data.scale),
            repeats=data.repeats, cache_images=data.cache_images)
        super().__init__(config)

    def build(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.pipe = pipe = self._pipeline if self._pipeline is not None else load_initial_deedsr_pipeline(config)
        for frozen in (pipe.unet, pipe.vae, pipe.degradation_learner):
            frozen.eval().requires_grad_(False)
        projections = cross_attention_projections(pipe.unet)
        for parameter in projections:
            parameter.requires_grad_(True)
        adapter = pipe.adapter.train().requires_grad_(True)
        self.trainable = nn.ModuleDict({"adapter": adapter, "unet": pipe.unet})  # EMA and checkpoints: requires_grad
        self.trained_names = [name for name, p in self.trainable.named_parameters() if p.requires_grad]
        if config.run.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        pipe.vae.to(accelerator.device)
        pipe.degradation_learner.to(accelerator.device)
        self.deedsr_unet = DeeDSRUNet(pipe.unet, adapter, pipe.degradation_learner)
        optimizer = torch.optim.AdamW([*adapter.parameters(), *projections], lr=config.optimizer.learning_rate,
                                      betas=config.optimizer.betas, weight_decay=config.optimizer.weight_decay,
                                      eps=config.optimizer.eps)
        self.model, optimizer = accelerator.prepare(self.deedsr_unet, optimizer)
        self.optimizers, self.accumulate_modules = {"adapter": optimizer}, [self.model]
        self.alphas_cumprod = alphas_cumprod_from_betas(betas_scaled_linear()).float().to(accelerator.device)
        self.dataset = self._dataset

    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        device, vae = self.accelerator.device, self.pipe.vae
        gt, lr_up = batch["gt"].to(device) * 2 - 1, batch["lr_up"].to(device) * 2 - 1  # (B, 3, S, S) in [-1, 1]
        degradation_vector = self.deedsr_unet.degradation_vector(batch["lr"].to(device))  # (B, D), frozen
        z_gt = encode_latent(vae, gt.to(vae.dtype), generator).float()  # (B, 4, S/8, S/8)
        lr_latent = encode_latent(vae, lr_up.to(vae.dtype), generator).float()
        batch_size = z_gt.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (batch_size,), generator=generator, device=device)
        noise = torch.randn(z_gt.shape, generator=generator, device=device)
        alpha_bar = self.alphas_cumprod[t].view(batch_size, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        target = diffusion_target(z_gt, noise, alpha_bar, self.pipe.prediction_type)
        with self.accelerator.autocast():
            model_out = self.model(q_sample(z_gt, alpha_bar, noise), t, lr_latent, degradation_vector)
        loss = F.mse_loss(model_out.float(), target)
        self.accelerator.backward(loss)
        max_norm = self.config.optimizer.max_grad_norm
        if max_norm > 0 and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_([p for p in self.trainable.parameters() if p.requires_grad], max_norm)
        self.optimizers["adapter"].step()
        self.optimizers["adapter"].zero_grad(set_to_none=True)
        return {"loss": loss.item()}

    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The adapter and the key/value projections only (not the frozen UNet)."""
        state = self.trainable.state_dict()
        return {"trainable": {name: state[name] for name in state
                              if name.startswith("adapter.") or name in self.trained_names}}

    def load_trainable_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        missing, unexpected = self.trainable.load_state_dict(weights["trainable"], strict=False)
        if unexpected or any(name.startswith("adapter.") or name in self.trained_names for name in missing):
            raise StableSRError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected "
                                f"{unexpected[:3]}")

    def export(self, folder: str | Path) -> Path:
        """A DeeDSR pipeline folder (EMA weights of what trained when EMA is on)."""
        folder = Path(folder)
        if self.accelerator.is_main_process:
            trained = self.trainable
            if self.ema is not None:
                trained = copy.deepcopy(trained)
                self.ema.copy_to(trained)
            pipe = self.pipe
            exported = DeeDSRPipeline(unet=trained["unet"], adapter=trained["adapter"],
                                      degradation_learner=pipe.degradation_learner, vae=pipe.vae,
                                      scheduler=pipe.scheduler)
            exported.save_pretrained(folder, safe_serialization=True)
        self.accelerator.wait_for_everyone()
        return folder

    def close(self) -> None:
        """Detach the modulation hooks (ends training)."""
        self.deedsr_unet.remove_hooks()

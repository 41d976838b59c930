"""CCSR stage 1: train the control module on a frozen SD UNet for truncated sampling (v1 or v2).

Sun et al. 2024, https://arxiv.org/abs/2401.00877, Sec. 3; losses in `training/ccsr_losses.py`:

    z0 = 0.18215 * sample(q(z | gt));  c = the condition latent of bicubic_up(lr) (v1: cond_encoder mode,
    v2: a VAE posterior sample);  loss = l_eps (t < t_max) + l_T + l_tmax  (v1: l_tmax has the eps term)

Only the control module trains; the UNet, VAE and condition encoder are frozen (eval, no grad).
Deviation: the official v1 code steps two Adam optimizers over the same parameters, one for l_eps and
one for l_T + l_tmax; here one AdamW steps on their sum (as the official v2 code does).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from stablesr.errors import StableSRError
from stablesr.models.controlnet import ControlledUNet
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear
from stablesr.training.ccsr_losses import loss_eps, losses_t_max, sample_truncated_t
from stablesr.training.config import CCSRStage1TrainConfig
from stablesr.training.previews import encode_latent
from stablesr.training.stablesr_trainer import StableSRTrainer


def load_ccsr_pipeline(folder: str | None):
    """The CCSR pipeline training starts from (a converted folder or an earlier run's output)."""
    from stablesr.pipelines.ccsr import CCSRPipeline

    if folder is None:
        raise StableSRError("model.pipeline is required for ccsr-stage1: a CCSR folder written by "
                            "`stablesr convert --method ccsr` (or by an earlier training run)")
    return CCSRPipeline.from_pretrained(folder)


class CCSRStage1Trainer(StableSRTrainer):
    """Stage-1 trainer for the control module; data handling (HR folders, degradations) as StableSR's.
    `pipeline` (optional) replaces `config.model.pipeline`; `dataset` replaces the HR folders."""

    def __init__(self, config: CCSRStage1TrainConfig, *, pipeline=None, dataset=None) -> None:
        super().__init__(config, pipeline=pipeline, dataset=dataset)

    def build(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.pipe = pipe = self._pipeline if self._pipeline is not None else load_ccsr_pipeline(config.model.pipeline)
        for frozen in (pipe.unet, pipe.vae, pipe.cond_encoder):
            if frozen is not None:
                frozen.eval().requires_grad_(False).to(accelerator.device)
        self.trainable = pipe.controlnet.train().requires_grad_(True)
        optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=config.optimizer.learning_rate,
                                      betas=config.optimizer.betas, weight_decay=config.optimizer.weight_decay,
                                      eps=config.optimizer.eps)
        self.model, optimizer = accelerator.prepare(ControlledUNet(pipe.unet, pipe.controlnet), optimizer)
        self.optimizers, self.accumulate_modules = {"controlnet": optimizer}, [self.model]
        self.context = pipe.prompt_embeds.find("").to(accelerator.device)  # (1, 77, D); training uses ''
        self.alphas_cumprod = alphas_cumprod_from_betas(betas_scaled_linear()).float().to(accelerator.device)
        self.dataset, self.degrader = self._build_data()

    def condition(self, lr_up: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The condition latent (B, 4, S/8, S/8) of lr_up (B, 3, S, S) in [-1, 1], as the pipeline computes it."""
        pipe = self.pipe
        if pipe.version == "v1":
            return pipe.cond_encoder.condition_latent(lr_up).contiguous()
        return encode_latent(pipe.vae, lr_up, generator)

    def losses(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"l_eps", "l_T", "l_tmax", "loss"} for one micro-batch (draws from `generator` in a fixed order)."""
        gt, lr_up = self.pairs(batch)
        with torch.no_grad():
            z0 = encode_latent(self.pipe.vae, gt, generator).float()  # (B, 4, S/8, S/8)
            cond = self.condition(lr_up, generator).float()
        batch_size, device = z0.shape[0], z0.device
        context = self.context.expand(batch_size, -1, -1)

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.accelerator.autocast():
                return self.model(x_t, t, context, cond).float()

        t = sample_truncated_t(batch_size, self.config.t_max_step, generator=generator, device=device)
        noises = [torch.randn(z0.shape, generator=generator, device=device) for _ in range(3)]
        l_eps = loss_eps(model, z0, t, noises[0], self.alphas_cumprod)
        jumps = losses_t_max(model, z0, noises[1], noises[2], self.alphas_cumprod, t_tau=self.config.t_max_step,
                             version=self.pipe.version)
        return {"l_eps": l_eps, "l_T": jumps["l_T"], "l_tmax": jumps["l_tmax"], "loss": l_eps + jumps["total"]}

    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        losses = self.losses(batch, generator)
        self.accelerator.backward(losses["loss"])
        max_norm = self.config.optimizer.max_grad_norm
        if max_norm > 0 and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.trainable.parameters(), max_norm)
        self.optimizers["controlnet"].step()
        self.optimizers["controlnet"].zero_grad(set_to_none=True)
        return {name: value.item() for name, value in losses.items()}

    def exported_controlnet(self):
        """The control module to ship: its EMA weights when EMA is on, else the live ones."""
        if self.ema is None:
            return self.trainable
        trained = copy.deepcopy(self.trainable)
        self.ema.copy_to(trained)
        return trained

    def export(self, folder: str | Path) -> Path:
        from stablesr.pipelines.ccsr import CCSRPipeline

        folder = Path(folder)
        if self.accelerator.is_main_process:
            pipe = self.pipe
            CCSRPipeline(unet=pipe.unet, controlnet=self.exported_controlnet().eval(), vae=pipe.vae,
                         scheduler=pipe.scheduler, prompt_embeds=pipe.prompt_embeds,
                         cond_encoder=pipe.cond_encoder).save_pretrained(folder, safe_serialization=True)
        self.accelerator.wait_for_everyone()
        return folder

    def validate(self) -> None:
        """No previews for this stage yet."""

    def close(self) -> None:
        """Nothing to detach (the control module composes with the UNet without hooks)."""

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


class LatentDecoder(torch.nn.Module):
    """z (B, 4, h, w) UNSCALED -> image (B, 3, 8h, 8w): the VAE's decode path as one module, so that
    accelerate can wrap it (DDP synchronises the decoder's gradients only through a wrapped forward)."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


class CCSRStage2Trainer(CCSRStage1Trainer):
    """Stage 2: the frozen stage-1 trajectory (no gradients) gives x0; the VAE decoder learns to decode it.

    v1: x_T = q(z_gt, 999) (the official stage-2 start), decoder + post_quant_conv train; v2: x_T = q(c, 999)
    (`is_start_lr`), the decoder trains. Generator: L1 + LPIPS (when available) + hinge GAN; the PatchGAN
    discriminator trains from `loss.disc_start` on.
    """

    def __init__(self, config, *, pipeline=None, dataset=None, lpips=None) -> None:
        self._lpips = lpips
        super().__init__(config, pipeline=pipeline, dataset=dataset)

    def build(self) -> None:
        from torch import nn

        from stablesr.training.discriminator import PatchDiscriminator

        config, accelerator = self.config, self.accelerator
        self.pipe = pipe = self._pipeline if self._pipeline is not None else load_ccsr_pipeline(config.model.pipeline)
        for frozen in (pipe.unet, pipe.controlnet, pipe.vae, pipe.cond_encoder):
            if frozen is not None:
                frozen.eval().requires_grad_(False).to(accelerator.device)
        parts = {"decoder": pipe.vae.decoder}
        if pipe.version == "v1":
            parts["post_quant_conv"] = pipe.vae.post_quant_conv
        self.trainable = nn.ModuleDict(parts).train().requires_grad_(True)
        self.perceptual = self._perceptual_loss()
        discriminator = PatchDiscriminator(channels=config.loss.disc_channels, num_layers=config.loss.disc_layers)
        adam = dict(lr=config.optimizer.learning_rate, betas=config.optimizer.betas,
                    weight_decay=config.optimizer.weight_decay, eps=config.optimizer.eps)
        self.decoder_model, self.discriminator, optimizer_g, optimizer_d = accelerator.prepare(
            LatentDecoder(pipe.vae), discriminator, torch.optim.Adam(self.trainable.parameters(), **adam),
            torch.optim.Adam(discriminator.parameters(), **adam))
        self.optimizers = {"decoder": optimizer_g, "discriminator": optimizer_d}
        self.accumulate_modules = [self.decoder_model, self.discriminator]
        self.controlled = ControlledUNet(pipe.unet, pipe.controlnet)
        self.context = pipe.prompt_embeds.find("").to(accelerator.device)
        self.alphas_cumprod = alphas_cumprod_from_betas(betas_scaled_linear()).float().to(accelerator.device)
        self.dataset, self.degrader = self._build_data()

    def _perceptual_loss(self):
        from stablesr.errors import WeightsNotFoundError
        from stablesr.metrics.lpips import LPIPS

        if self.config.loss.perceptual_weight == 0:
            return None
        if self._lpips is not None:
            return self._lpips.to(self.accelerator.device).eval().requires_grad_(False)
        try:
            return LPIPS.from_files("vgg", backbone_path=self.config.loss.lpips_backbone_path).to(
                self.accelerator.device)
        except WeightsNotFoundError as error:
            self.accelerator.print(f"perceptual loss OFF, training with L1 + GAN only: {error}")
            return None

    @torch.no_grad()
    def trajectory_x0(self, z_gt: torch.Tensor, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The frozen stage-1 sampler's output latent (scaled, (B, 4, h, w)), untiled."""
        from stablesr.configs_ccsr import CCSRSettings
        from stablesr.sampling.denoisers import EpsDenoiser
        from stablesr.sampling.samplers import default_noise_sampler, q_sample
        from stablesr.sampling.truncated import sample_truncated

        config, pipe = self.config, self.pipe
        steps = config.steps or (45 if pipe.version == "v1" else 1)
        t_min = config.t_min if config.t_min is not None else (0.3333 if pipe.version == "v1" else 0.0)
        plan = pipe.plan(CCSRSettings(num_inference_steps=steps, t_max=config.t_max, t_min=t_min))
        context = self.context.expand(z_gt.shape[0], -1, -1)

        def model(x_t: torch.Tensor, t: int) -> torch.Tensor:
            timesteps = torch.full((x_t.shape[0],), t, device=x_t.device)
            return self.controlled(x_t, timesteps, context, cond).float()

        noise = default_noise_sampler(generator)
        start = z_gt if pipe.version == "v1" else cond
        x_T = q_sample(start, self.alphas_cumprod[plan.start_t], noise(start))
        return sample_truncated(EpsDenoiser(model), x_T, self.alphas_cumprod, plan, noise_sampler=noise)

    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        from stablesr.training.discriminator import hinge_discriminator_loss, hinge_generator_loss

        gt, lr_up = self.pairs(batch)
        vae, loss_settings = self.pipe.vae, self.config.loss
        with torch.no_grad():
            z_gt = encode_latent(vae, gt, generator).float()
            x0 = self.trajectory_x0(z_gt, self.condition(lr_up, generator).float(), generator)
        with self.accelerator.autocast():
            image = self.decoder_model(x0 / vae.config.scaling_factor).float().clamp(-1, 1)  # (B, 3, S, S)
        l1 = (image - gt).abs().mean()
        perceptual = self.perceptual(image, gt).mean() if self.perceptual is not None else l1.new_zeros(())
        disc_on = self.step >= loss_settings.disc_start
        g_loss = l1.new_zeros(())
        if disc_on:
            discriminator = self.accelerator.unwrap_model(self.discriminator).requires_grad_(False)
            g_loss = hinge_generator_loss(discriminator(image))
            discriminator.requires_grad_(True)
        loss = loss_settings.l1_weight * l1 + loss_settings.perceptual_weight * perceptual \
            + loss_settings.disc_weight * g_loss
        self.accelerator.backward(loss)
        self.optimizers["decoder"].step()
        self.optimizers["decoder"].zero_grad(set_to_none=True)
        d_loss = 0.0
        if disc_on:
            logits_real, logits_fake = self.discriminator(torch.cat([gt, image.detach()])).chunk(2)
            d = hinge_discriminator_loss(logits_real, logits_fake)
            self.accelerator.backward(d)
            self.optimizers["discriminator"].step()
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
            d_loss = d.item()
        return {"loss": loss.item(), "l1": l1.item(), "perceptual": perceptual.item(), "g_loss": g_loss.item(),
                "d_loss": d_loss}

    def exported_controlnet(self):
        return self.pipe.controlnet

    def export(self, folder: str | Path) -> Path:
        """The pipeline with the finetuned decoder (its EMA weights when EMA is on)."""
        if self.ema is not None:
            live = copy.deepcopy(self.trainable.state_dict())
            self.ema.copy_to(self.trainable)
            try:
                return super().export(folder)
            finally:
                self.trainable.load_state_dict(live)
        return super().export(folder)

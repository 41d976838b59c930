"""One diffusion chain for super-resolution: schedule, starting latent x_T, sampler.

Shared by the pipelines (with a tiled model) and the training previews / CFW data (untiled), so
every caller samples exactly as StableSR (https://arxiv.org/abs/2305.07015) does: x_T =
q_sample(z_lr, t = T - 1) with the un-respaced table (the official tile script) or pure noise, then
respaced DDPM or DDIM steps on the original timesteps.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from stablesr.sampling.denoisers import Model, PredictionType, wrap_model
from stablesr.sampling.samplers import NoiseSampler, StepCallback, q_sample, sample_ddim, sample_ddpm
from stablesr.sampling.schedules import alphas_cumprod_from_betas, ddim_schedule, respaced_schedule


def sample_chain(model: Model, lr_latent: Tensor, betas: Tensor, *, steps: int, prediction_type: PredictionType,
                 noise_sampler: NoiseSampler, sampler: Literal["ddpm", "ddim"] = "ddpm", eta: float = 0.0,
                 start: Literal["lr", "noise"] = "lr", faithful: bool = False,
                 callback: StepCallback | None = None) -> Tensor:
    """lr_latent (B, 4, h, w) scaled, model(x_t, t) -> raw output -> sampled scaled latent (B, 4, h, w).

    betas: the training schedule (T,). Draws in order: x_T's noise, then one per step.
    `faithful` uses the official float32 respacing and DDIM's mixed timestep grids.
    """
    denoiser = wrap_model(model, prediction_type)
    alphas_cumprod = alphas_cumprod_from_betas(betas)
    if start == "lr":  # q(x_{T-1} | z_lr) with the un-respaced table, as the official tile script
        x_t = q_sample(lr_latent, alphas_cumprod[-1].item(), noise_sampler(lr_latent))
    else:
        x_t = noise_sampler(lr_latent)
    if sampler == "ddpm":
        schedule = respaced_schedule(betas, steps, faithful=faithful)
        return sample_ddpm(denoiser, x_t, schedule, noise_sampler=noise_sampler, callback=callback)
    schedule = ddim_schedule(alphas_cumprod, steps, eta=eta, grid="official" if faithful else "consistent")
    return sample_ddim(denoiser, x_t, schedule, noise_sampler=noise_sampler, callback=callback)


def untiled_model(sft_unet, context: Tensor, lr_latent: Tensor) -> Model:
    """model(x_t, t) for a whole (B, 4, h, w) latent: the SFT UNet with context (1, 77, D) and lr_latent."""
    batch = lr_latent.shape[0]
    context = context.to(lr_latent.device, sft_unet.unet.dtype).expand(batch, -1, -1)

    def model(x_t: Tensor, t: int) -> Tensor:
        timesteps = torch.full((batch,), t, dtype=torch.long, device=x_t.device)
        return sft_unet(x_t, timesteps, context, lr_latent)

    return model

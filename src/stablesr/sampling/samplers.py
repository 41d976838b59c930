"""Samplers as pure functions sharing one signature: sample_x(denoiser, x, schedule, *, ...) -> x0.

The denoiser already returns (x0_pred, eps_pred) (see `sampling/denoisers.py`), so no sampler
knows whether the network predicts eps, v or x0.

Papers: DDPM ancestral sampling (Ho et al. 2020, https://arxiv.org/abs/2006.11239, Algorithm 2) on a
respaced chain (Nichol & Dhariwal 2021, https://arxiv.org/abs/2102.09672); DDIM (Song et al. 2021,
https://arxiv.org/abs/2010.02502, eq. 12); v-parameterisation (Salimans & Ho 2022,
https://arxiv.org/abs/2202.00512).

Code names and paper symbols:
    x_t        x_t, the current latent          alpha_bar   alpha_bar_t (cumulative product)
    eps_pred   epsilon_theta(x_t, t)            x0_pred     x_0 predicted from x_t and the model output
    t          original timestep 0..999 given to the network; i is the index in the (respaced) chain

Random draws follow the official order so a recorded noise tape replays exactly: one draw per step,
including the last step, whose draw is multiplied by zero (DDPM) or by sigma_0 (DDIM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stablesr.sampling.denoisers import Denoiser
from stablesr.sampling.schedules import DDIMSchedule, DiffusionSchedule

NoiseSampler = Callable[[Tensor], Tensor]
"""noise_sampler(like) -> standard normal noise shaped like `like`."""

StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""callback(i, t, x_t after the step, x0_pred), called after every step (progress bars, previews)."""


def q_sample(x0: Tensor, alpha_bar: float | Tensor, noise: Tensor) -> Tensor:
    """Forward diffusion q(x_t | x_0): sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise (Ho et al. eq. 4)."""
    if isinstance(alpha_bar, Tensor):
        alpha_bar = alpha_bar.to(device=x0.device, dtype=torch.promote_types(x0.dtype, torch.float32))
    return alpha_bar**0.5 * x0 + (1.0 - alpha_bar) ** 0.5 * noise


def default_noise_sampler(generator: torch.Generator | None) -> NoiseSampler:
    """torch.randn shaped like the latent, from `generator` (global RNG when None).

    Draws in float32 on the generator's device, then moves/casts to the latent, so a CPU
    generator gives the same noise whatever the compute device and precision.
    """

    def sample_noise(like: Tensor) -> Tensor:
        device = generator.device if generator is not None else like.device
        noise = torch.randn(like.shape, generator=generator, dtype=torch.float32, device=device)
        return noise.to(device=like.device, dtype=like.dtype)

    return sample_noise


def tape_noise_sampler(tape: Sequence[Tensor]) -> NoiseSampler:
    """Replays recorded draws in order (e.g. fixture noise tapes); raises when the tape runs out."""
    draws = iter(tape)

    def sample_noise(like: Tensor) -> Tensor:
        draw = next(draws, None)
        if draw is None:
            raise RuntimeError(f"noise tape exhausted after {len(tape)} draws")
        return draw.to(device=like.device, dtype=like.dtype).reshape(like.shape)

    return sample_noise


def ddpm_step(x0_pred: Tensor, x_t: Tensor, schedule: DiffusionSchedule, i: int, noise: Tensor) -> Tensor:
    """One ancestral step i -> i-1: x_prev = coef1 x0_pred + coef2 x_t + exp(logvar / 2) noise; no noise at i = 0.

    x0_pred is not clipped. Returns x_prev shaped like x_t (B, C, h, w).
    """
    mean = float(schedule.posterior_mean_coef1[i]) * x0_pred + float(schedule.posterior_mean_coef2[i]) * x_t
    if i == 0:
        return mean
    return mean + math.exp(0.5 * float(schedule.posterior_log_variance_clipped[i])) * noise


def ddim_step(x0_pred: Tensor, eps_pred: Tensor, schedule: DDIMSchedule, i: int, noise: Tensor) -> Tensor:
    """One DDIM step i -> i-1 (Song et al. eq. 12). Returns x_prev shaped like x0_pred (B, C, h, w)."""
    alpha_bar_prev, sigma = float(schedule.alphas_prev[i]), float(schedule.sigmas[i])
    direction = (1.0 - alpha_bar_prev - sigma**2) ** 0.5 * eps_pred
    return alpha_bar_prev**0.5 * x0_pred + direction + sigma * noise


def _resolve_noise_sampler(noise_sampler: NoiseSampler | None, generator: torch.Generator | None) -> NoiseSampler:
    if noise_sampler is not None and generator is not None:
        raise ValueError("pass either noise_sampler or generator, not both")
    return noise_sampler or default_noise_sampler(generator)


def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    schedule: DiffusionSchedule,
    *,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Respaced ancestral DDPM (Ho et al. 2020, Algorithm 2; Nichol & Dhariwal 2021 respacing).

    x: x_T (B, C, h, w). The denoiser gets the original timestep `schedule.timesteps[i]` and the
    chain's alpha_bar_i for i = N-1 .. 0. One noise draw per step, the draw at i = 0 unused
    (official tape order). Returns x_0 (B, C, h, w).
    """
    noise_sampler = _resolve_noise_sampler(noise_sampler, generator)
    for i in reversed(range(len(schedule))):
        t = int(schedule.timesteps[i])
        x0_pred, _ = denoiser(x, t, float(schedule.alphas_cumprod[i]))
        x = ddpm_step(x0_pred, x, schedule, i, noise_sampler(x))
        if callback is not None:
            callback(i, t, x, x0_pred)
    return x


def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    schedule: DDIMSchedule,
    *,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12), eta inside the schedule's sigmas; eta = 0 is deterministic.

    x: x_T (B, C, h, w). The denoiser gets `schedule.timesteps[i]` and alpha_bar = `schedule.alphas[i]`
    for i = S-1 .. 0. One noise draw per step, scaled by sigma_i (official tape order, drawn even
    when sigma_i = 0). Returns x_0.
    """
    noise_sampler = _resolve_noise_sampler(noise_sampler, generator)
    for i in reversed(range(len(schedule))):
        t = int(schedule.timesteps[i])
        x0_pred, eps_pred = denoiser(x, t, float(schedule.alphas[i]))
        x = ddim_step(x0_pred, eps_pred, schedule, i, noise_sampler(x))
        if callback is not None:
            callback(i, t, x, x0_pred)
    return x

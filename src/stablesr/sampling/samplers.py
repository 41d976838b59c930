"""Samplers as pure functions sharing one signature: sample_x(denoiser, x, schedule, *, ...) -> x0.

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
from typing import Literal

import torch
from torch import Tensor

from stablesr.sampling.schedules import DDIMSchedule, DiffusionSchedule

Denoiser = Callable[[Tensor, int], Tensor]
"""denoiser(x_t (B, C, h, w), t original timestep) -> raw model output (eps or v), same shape."""

NoiseSampler = Callable[[Tensor], Tensor]
"""noise_sampler(like) -> standard normal noise shaped like `like`."""

StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""callback(i, t, x_t after the step, x0_pred), called after every step (progress bars, previews)."""

PredictionType = Literal["epsilon", "v_prediction"]


def _split_epsilon(model_out: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
    x0_pred = (1.0 / alpha_bar) ** 0.5 * x_t - (1.0 / alpha_bar - 1.0) ** 0.5 * model_out
    return x0_pred, model_out


def _split_velocity(model_out: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
    sqrt_alpha_bar, sqrt_one_minus = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    x0_pred = sqrt_alpha_bar * x_t - sqrt_one_minus * model_out
    eps_pred = sqrt_alpha_bar * model_out + sqrt_one_minus * x_t
    return x0_pred, eps_pred


_PARAMETERISATIONS = {"epsilon": _split_epsilon, "v_prediction": _split_velocity}


def predict_x0_and_eps(
    model_out: Tensor, x_t: Tensor, alpha_bar: float | Tensor, *, prediction_type: PredictionType
) -> tuple[Tensor, Tensor]:
    """(x0_pred, eps_pred) from a raw model output (eps or v), shaped like x_t (B, C, h, w).

    eps: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a).
    v:   x0 = sqrt(a) x_t - sqrt(1 - a) v,  eps = sqrt(a) v + sqrt(1 - a) x_t.

    `alpha_bar` is a float (coefficients in double precision) or a tensor broadcastable to x_t (B, C, h, w).
    """
    if prediction_type not in _PARAMETERISATIONS:
        raise ValueError(f"prediction_type must be one of {sorted(_PARAMETERISATIONS)}, got {prediction_type!r}")
    if isinstance(alpha_bar, Tensor):
        alpha_bar = alpha_bar.to(device=x_t.device, dtype=torch.promote_types(x_t.dtype, torch.float32))
    return _PARAMETERISATIONS[prediction_type](model_out, x_t, alpha_bar)


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


def ddpm_step(
    model_out: Tensor,
    x_t: Tensor,
    schedule: DiffusionSchedule,
    i: int,
    noise: Tensor,
    *,
    prediction_type: PredictionType = "epsilon",
) -> tuple[Tensor, Tensor]:
    """One ancestral step i -> i-1: x_prev = coef1 x0_pred + coef2 x_t + exp(logvar / 2) noise; no noise at i = 0.

    x0_pred is not clipped. Returns (x_prev, x0_pred), both shaped like x_t (B, C, h, w).
    """
    alpha_bar = float(schedule.alphas_cumprod[i])
    x0_pred, _ = predict_x0_and_eps(model_out, x_t, alpha_bar, prediction_type=prediction_type)
    mean = float(schedule.posterior_mean_coef1[i]) * x0_pred + float(schedule.posterior_mean_coef2[i]) * x_t
    if i == 0:
        return mean, x0_pred
    std = math.exp(0.5 * float(schedule.posterior_log_variance_clipped[i]))
    return mean + std * noise, x0_pred


def ddim_step(
    model_out: Tensor,
    x_t: Tensor,
    schedule: DDIMSchedule,
    i: int,
    noise: Tensor,
    *,
    prediction_type: PredictionType = "epsilon",
) -> tuple[Tensor, Tensor]:
    """One DDIM step i -> i-1 (Song et al. eq. 12). Returns (x_prev, x0_pred), shaped like x_t (B, C, h, w)."""
    x0_pred, eps_pred = predict_x0_and_eps(
        model_out, x_t, float(schedule.alphas[i]), prediction_type=prediction_type
    )
    alpha_bar_prev, sigma = float(schedule.alphas_prev[i]), float(schedule.sigmas[i])
    direction = (1.0 - alpha_bar_prev - sigma**2) ** 0.5 * eps_pred
    return alpha_bar_prev**0.5 * x0_pred + direction + sigma * noise, x0_pred


def _resolve_noise_sampler(noise_sampler: NoiseSampler | None, generator: torch.Generator | None) -> NoiseSampler:
    if noise_sampler is not None and generator is not None:
        raise ValueError("pass either noise_sampler or generator, not both")
    return noise_sampler or default_noise_sampler(generator)


def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    schedule: DiffusionSchedule,
    *,
    prediction_type: PredictionType = "epsilon",
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Respaced ancestral DDPM (Ho et al. 2020, Algorithm 2; Nichol & Dhariwal 2021 respacing).

    x: x_T (B, C, h, w). The denoiser gets the original timestep `schedule.timesteps[i]` for
    i = N-1 .. 0. One noise draw per step, the draw at i = 0 unused (official tape order).
    Returns x_0 (B, C, h, w).
    """
    noise_sampler = _resolve_noise_sampler(noise_sampler, generator)
    for i in reversed(range(len(schedule))):
        t = int(schedule.timesteps[i])
        model_out = denoiser(x, t)
        x, x0_pred = ddpm_step(model_out, x, schedule, i, noise_sampler(x), prediction_type=prediction_type)
        if callback is not None:
            callback(i, t, x, x0_pred)
    return x


def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    schedule: DDIMSchedule,
    *,
    prediction_type: PredictionType = "epsilon",
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12), eta inside the schedule's sigmas; eta = 0 is deterministic.

    x: x_T (B, C, h, w). The denoiser gets `schedule.timesteps[i]` for i = S-1 .. 0. One noise draw
    per step, scaled by sigma_i (official tape order, drawn even when sigma_i = 0). Returns x_0.
    """
    noise_sampler = _resolve_noise_sampler(noise_sampler, generator)
    for i in reversed(range(len(schedule))):
        t = int(schedule.timesteps[i])
        model_out = denoiser(x, t)
        x, x0_pred = ddim_step(model_out, x, schedule, i, noise_sampler(x), prediction_type=prediction_type)
        if callback is not None:
            callback(i, t, x, x0_pred)
    return x

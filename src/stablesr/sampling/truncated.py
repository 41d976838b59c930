"""CCSR's non-uniform truncated sampling: one x0 jump from T, re-noise to t_max, a few steps, early x0 output.

Paper: Sun et al., "Improving the Stability and Efficiency of Diffusion Models for Content Consistent
Super-Resolution" (CCSR, https://arxiv.org/abs/2401.00877), Sec. 3 ("non-uniform timestep sampling").

    1. x0_T   = x0 predicted from x_T at t = T - 1               (one evaluation)
    2. x_tau  = q_sample(x0_T, alpha_bar[tau], fresh noise)     (tau: the grid point for t_max)
    3. ancestral DDPM steps over the grid from tau down to t_min (one evaluation each)
    4. output = x0 predicted at the last visited timestep        (no step after it)

Two grids (the two official releases), both as `TruncatedPlan`s of original timesteps:
    v1 (`plan_ccsr_v1`): guided-diffusion respacing of T to N steps, the re-noise index round((N-1) t_max).
    v2 (`plan_ccsr_v2`): diffusers' DDPM "leading" grid (k * (T // N))[::-1] + 1; N = 1 outputs x0_T.

Code names and paper symbols: t_max, t_min (fractions of the chain), tau (re-noise timestep),
alpha_bar (cumulative alpha of the T-step training schedule), x0_pred (x_hat_0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from stablesr.sampling.denoisers import Denoiser
from stablesr.sampling.samplers import NoiseSampler, StepCallback, default_noise_sampler, q_sample
from stablesr.sampling.schedules import POSTERIOR_VARIANCE_FLOOR, respace_timesteps


@dataclass(frozen=True)
class TruncatedPlan:
    """The original timesteps one truncated run visits.

    start_t: the first evaluation (x_T); renoise_t: the timestep x0_T is re-noised to (None: the run
    ends after the first evaluation); loop: (t, t_prev) pairs, descending, one evaluation each; after
    the last one no step is taken (its x0 prediction is the output). t_prev < 0 means alpha_bar_prev = 1.
    """

    start_t: int
    renoise_t: int | None
    loop: tuple[tuple[int, int], ...]

    @property
    def visited(self) -> list[int]:
        """Every timestep the network sees, in order."""
        return [self.start_t, *(t for t, _ in self.loop)]

    @property
    def output_t(self) -> int:
        """The timestep whose x0 prediction is the output."""
        return self.loop[-1][0] if self.loop else self.start_t

    @property
    def num_evaluations(self) -> int:
        """Model evaluations per latent (per tile; classifier-free guidance doubles the batch, not this)."""
        return 1 + len(self.loop)


def _check_fractions(num_steps: int, t_max: float, t_min: float) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= t_min < t_max < 1.0:
        raise ValueError(f"need 0 <= t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")


def plan_ccsr_v1(num_steps: int = 45, t_max: float = 0.6667, t_min: float = 0.3333, *,
                 num_train_timesteps: int = 1000) -> TruncatedPlan:
    """CCSR v1 on the respaced grid g = respace_timesteps(T, N) (ascending).

    Re-noise to g[round((N-1) t_max)]; the loop walks indices round(N t_max) - 1 down to round(N t_min)
    (the last round(N t_min) of the top round(N t_max) dropped), each stepping to the next lower index.

    Example: plan_ccsr_v1(45, 0.6667, 0.3333).visited -> [999, 658, 636, 613, ..., 363, 341]: 16 evaluations,
    output x0 at 341; plan_ccsr_v1(15).visited -> [999, 642, 571, 500, 428, 357].
    """
    _check_fractions(num_steps, t_max, t_min)
    grid = respace_timesteps(num_train_timesteps, num_steps)
    top, dropped = round(num_steps * t_max), round(num_steps * t_min)
    indices = list(range(top - 1, -1, -1))[: max(top - dropped, 0)]
    if not indices:
        raise ValueError(f"t_max={t_max} and t_min={t_min} leave no step of {num_steps}; widen the interval")
    loop = tuple((grid[i], grid[i - 1] if i > 0 else -1) for i in indices)
    return TruncatedPlan(grid[-1], grid[round((num_steps - 1) * t_max)], loop)


def plan_ccsr_v2(num_steps: int = 1, t_max: float = 0.6667, t_min: float = 0.0, *,
                 num_train_timesteps: int = 1000, start_t: int = 999) -> TruncatedPlan:
    """CCSR v2 on diffusers' DDPM "leading" grid g = (k * (T // N) for k = N-1..0) + 1 (descending).

    N = 1: only x0 at start_t. Otherwise re-noise to g[-round(N t_max)] and loop over g[-round(N t_max):]
    without its last round(N t_min) entries; each step goes to t - T // N.

    Examples: plan_ccsr_v2(6, 0.6667, 0.5).visited -> [999, 499]; plan_ccsr_v2(10, 0.6667, 0.5).visited ->
    [999, 601, 501]; plan_ccsr_v2(1).visited -> [999].
    """
    _check_fractions(num_steps, t_max, t_min)
    if num_steps == 1:
        return TruncatedPlan(start_t, None, ())
    stride = num_train_timesteps // num_steps
    grid = [k * stride + 1 for k in reversed(range(num_steps))]
    top, dropped = round(num_steps * t_max), round(num_steps * t_min)
    if top < 1 or top - dropped < 1:
        raise ValueError(f"t_max={t_max} and t_min={t_min} leave no step of {num_steps}; widen the interval")
    loop = tuple((t, t - stride) for t in grid[-top:][: top - dropped])
    return TruncatedPlan(start_t, grid[-top], loop)


def posterior_step(x0_pred: Tensor, x_t: Tensor, alpha_bar: float, alpha_bar_prev: float, noise: Tensor) -> Tensor:
    """q(x_prev | x_t, x0) ancestral step between two chain points (Ho et al. eq. 6-7, fixed-small variance).

    beta = 1 - alpha_bar / alpha_bar_prev; mean = coef1 x0 + coef2 x_t; x_prev = mean + sqrt(var) noise,
    var = beta (1 - alpha_bar_prev) / (1 - alpha_bar) clipped at 1e-20 (zero noise when alpha_bar_prev = 1).
    """
    beta = 1.0 - alpha_bar / alpha_bar_prev
    coef1 = beta * math.sqrt(alpha_bar_prev) / (1.0 - alpha_bar)
    coef2 = (1.0 - alpha_bar_prev) * math.sqrt(1.0 - beta) / (1.0 - alpha_bar)
    mean = coef1 * x0_pred + coef2 * x_t
    if alpha_bar_prev == 1.0:
        return mean
    variance = max(beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar), POSTERIOR_VARIANCE_FLOOR)
    return mean + math.sqrt(variance) * noise


def sample_truncated(
    denoiser: Denoiser,
    x: Tensor,
    alphas_cumprod: Tensor,
    plan: TruncatedPlan,
    *,
    first_denoiser: Denoiser | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """CCSR non-uniform truncated sampling (Sun et al. 2024, Sec. 3); returns x0 at `plan.output_t`.

    x: x_T (B, C, h, w). alphas_cumprod: the T-step training table (T,), read in float64.
    `first_denoiser` (default `denoiser`) makes the first evaluation (CCSR v2 uses the negative
    prompt alone there). Draws: the re-noise, then one per loop step except the last.
    callback(k, t, x_t, x0_pred) after every evaluation (k counts evaluations).
    """
    if noise_sampler is not None and generator is not None:
        raise ValueError("pass either noise_sampler or generator, not both")
    noise_sampler = noise_sampler or default_noise_sampler(generator)
    table = alphas_cumprod.to(torch.float64)

    def alpha(t: int) -> float:
        return 1.0 if t < 0 else float(table[t])

    x0_pred, _ = (first_denoiser or denoiser)(x, plan.start_t, alpha(plan.start_t))
    if callback is not None:
        callback(0, plan.start_t, x, x0_pred)
    if plan.renoise_t is None:
        return x0_pred
    x = q_sample(x0_pred, alpha(plan.renoise_t), noise_sampler(x0_pred))  # fresh noise, not x_T's
    for k, (t, t_prev) in enumerate(plan.loop, start=1):
        x0_pred, _ = denoiser(x, t, alpha(t))
        if callback is not None:
            callback(k, t, x, x0_pred)
        if k < len(plan.loop):
            x = posterior_step(x0_pred, x, alpha(t), alpha(t_prev), noise_sampler(x))
    return x0_pred

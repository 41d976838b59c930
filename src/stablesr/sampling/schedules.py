"""Noise schedules and timestep respacing for the DDPM/DDIM chains StableSR samples with.

Papers: DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239), respacing (Nichol & Dhariwal 2021,
https://arxiv.org/abs/2102.09672), DDIM (Song et al. 2021, https://arxiv.org/abs/2010.02502).

Code names and paper symbols:
    betas              beta_t            (noise added at step t)
    alphas_cumprod     alpha_bar_t       = prod_{s<=t} (1 - beta_s)
    posterior_*        q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, beta_tilde_t)
    timesteps          original t in 0..T-1 that the network sees; index i = 0..N-1 walks the respaced chain

All maths is float64 unless `faithful=True` asks for the official float32 derivation (see `respaced_schedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

POSTERIOR_VARIANCE_FLOOR = 1e-20  # log-variance is clipped at log(1e-20) = -46.05, as in latent-diffusion


def betas_scaled_linear(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's "linear" schedule, linear in sqrt(beta): (linspace(sqrt(b0), sqrt(b1), T))**2.

    Example: betas_scaled_linear()[0] -> 0.00085, betas_scaled_linear()[-1] -> 0.012 (float64, shape (T,)).
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    roots = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64)
    return roots**2


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64 (T,).

    Example: alphas_cumprod_from_betas(betas_scaled_linear())[999] -> 0.0046601 (sqrt -> 0.068265).
    """
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def respace_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Evenly spaced original timesteps, guided-diffusion `space_timesteps(T, [N])` rule, ascending.

    The stride (T - 1) / (N - 1) is accumulated in floating point and each position rounded
    (round half to even), so the last timestep is always T - 1.

    Examples: respace_timesteps(1000, 4) -> [0, 333, 666, 999];
    respace_timesteps(1000, 200) -> [0, 5, 10, ..., 994, 999]; respace_timesteps(1000, 1000) -> range(1000).
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    stride = 1.0 if num_steps == 1 else (num_train_timesteps - 1) / (num_steps - 1)
    position, taken = 0.0, []
    for _ in range(num_steps):
        taken.append(round(position))
        position += stride
    return sorted(set(taken))


@dataclass(frozen=True)
class DiffusionSchedule:
    """One respaced DDPM chain; every tensor is (N,) and indexed by the chain index i = 0..N-1.

    `timesteps[i]` is the original t (ascending, int64) that the network and the time-aware encoder see.
    `alphas_cumprod[i]` equals the original alpha_bar at `timesteps[i]`; the betas are the respaced
    beta'_i = 1 - alpha_bar[t_i] / alpha_bar[t_{i-1}] and the posterior terms follow from them.
    """

    timesteps: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    betas: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


def _posterior_terms(betas: Tensor, alphas_cumprod: Tensor, alphas_cumprod_prev: Tensor) -> dict[str, Tensor]:
    """q(x_{i-1} | x_i, x_0) variance, clipped log-variance and mean coefficients (Ho et al. eq. 6-7)."""
    one_minus_alpha_bar = 1.0 - alphas_cumprod
    variance = betas * (1.0 - alphas_cumprod_prev) / one_minus_alpha_bar
    return {
        "posterior_variance": variance,
        "posterior_log_variance_clipped": torch.log(variance.clamp(min=POSTERIOR_VARIANCE_FLOOR)),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / one_minus_alpha_bar,
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / one_minus_alpha_bar,
    }


def _schedule_float64(betas: Tensor, timesteps: Tensor) -> DiffusionSchedule:
    alpha_bar = alphas_cumprod_from_betas(betas)[timesteps]
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    respaced_betas = 1.0 - alpha_bar / alpha_bar_prev
    terms = _posterior_terms(respaced_betas, alpha_bar, alpha_bar_prev)
    return DiffusionSchedule(timesteps, alpha_bar, alpha_bar_prev, respaced_betas, **terms)


def _sqrt_float32(values: Tensor) -> Tensor:
    """Correctly rounded float32 sqrt (via float64), as numpy computes it."""
    return torch.sqrt(values.to(torch.float64)).to(torch.float32)


def _schedule_faithful(betas: Tensor, timesteps: Tensor) -> DiffusionSchedule:
    """The official float32 derivation, reproduced operation by operation (bit-exact vs fixture case c).

    The respaced betas come from the float32 alpha_bar buffer, alpha_bar is re-accumulated in float32
    by sequential products (numpy; torch.cumprod accumulates float32 in float64),
    alpha_bar_prev is float64 (a float64 1.0 prepended), and the posterior terms mix the two before
    the final cast of every buffer to float32.
    """
    alpha_bar_table = alphas_cumprod_from_betas(betas).to(torch.float32)[timesteps]
    previous = torch.cat([alpha_bar_table.new_ones(1), alpha_bar_table[:-1]])
    respaced_betas = 1.0 - alpha_bar_table / previous  # float32
    alpha_bar = torch.from_numpy(np.cumprod((1.0 - respaced_betas).numpy()))  # float32, sequential products
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]]).to(torch.float64)
    one_minus_alpha_bar = (1.0 - alpha_bar).to(torch.float64)  # subtraction in float32
    variance = respaced_betas.to(torch.float64) * (1.0 - alpha_bar_prev) / one_minus_alpha_bar
    sqrt_alphas = _sqrt_float32(1.0 - respaced_betas).to(torch.float64)
    terms = {
        "posterior_variance": variance,
        "posterior_log_variance_clipped": torch.log(variance.clamp(min=POSTERIOR_VARIANCE_FLOOR)),
        "posterior_mean_coef1": respaced_betas * alpha_bar_prev.sqrt() / one_minus_alpha_bar,
        "posterior_mean_coef2": (1.0 - alpha_bar_prev) * sqrt_alphas / one_minus_alpha_bar,
    }
    terms = {name: value.to(torch.float32) for name, value in terms.items()}
    return DiffusionSchedule(
        timesteps, alpha_bar, alpha_bar_prev.to(torch.float32), respaced_betas, **terms
    )


def respaced_schedule(betas: Tensor, num_steps: int, *, faithful: bool = False) -> DiffusionSchedule:
    """Respace a T-step beta schedule to `num_steps` steps (float64, or the official float32 buffers).

    Example: respaced_schedule(betas_scaled_linear(), 4).timesteps -> [0, 333, 666, 999];
    its betas[0] -> 0.00085 (float64; the faithful float32 derivation gives 0.00085002).
    """
    if betas.ndim != 1:
        raise ValueError(f"betas must be 1-D, got shape {tuple(betas.shape)}")
    timesteps = torch.tensor(respace_timesteps(len(betas), num_steps), dtype=torch.int64)
    betas = betas.to(device="cpu", dtype=torch.float64)
    return _schedule_faithful(betas, timesteps) if faithful else _schedule_float64(betas, timesteps)


@dataclass(frozen=True)
class DDIMSchedule:
    """One DDIM chain; (S,) tensors indexed by the step index i = 0..S-1, used from S-1 down to 0.

    `timesteps[i]` (ascending, int64) is the original t the network is conditioned on; the update
    x_{prev} = sqrt(alphas_prev[i]) x0_pred + sqrt(1 - alphas_prev[i] - sigmas[i]^2) eps_pred + sigmas[i] z
    uses `alphas[i]` for the current latent.
    """

    timesteps: Tensor
    alphas: Tensor
    alphas_prev: Tensor
    sigmas: Tensor

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def sqrt_one_minus_alphas(self) -> Tensor:
        """sqrt(1 - alphas) in the dtype of `alphas` (1 - a rounded first, then a correctly rounded sqrt)."""
        return torch.sqrt((1.0 - self.alphas).to(torch.float64)).to(self.alphas.dtype)


def _ddim_consistent(alphas_cumprod: Tensor, num_steps: int, eta: float) -> DDIMSchedule:
    timesteps = torch.tensor(respace_timesteps(len(alphas_cumprod), num_steps), dtype=torch.int64)
    alphas = alphas_cumprod.to(torch.float64)[timesteps]
    alphas_prev = torch.cat([alphas.new_ones(1), alphas[:-1]])  # the last step lands on x0_pred
    sigmas = eta * torch.sqrt((1.0 - alphas_prev) / (1.0 - alphas) * (1.0 - alphas / alphas_prev))
    return DDIMSchedule(timesteps, alphas, alphas_prev, sigmas)


def _ddim_official(alphas_cumprod: Tensor, num_steps: int, eta: float) -> DDIMSchedule:
    """The official tables: alphas on range(0, T, T // S) in float32, alphas_prev/sigmas float64.

    The float32 reciprocal of (1 - alphas) reproduces how the official numpy / torch mix evaluates
    (1 - alphas_prev) / (1 - alphas) (torch computes a reflected division as reciprocal * other).
    """
    num_train_timesteps = len(alphas_cumprod)
    grid = torch.arange(0, num_train_timesteps, num_train_timesteps // num_steps)
    if len(grid) != num_steps:
        raise ValueError(f'grid="official" needs num_steps dividing {num_train_timesteps} evenly, got {num_steps}')
    table = alphas_cumprod.to(torch.float32)
    alphas = table[grid]
    alphas_prev = torch.cat([table[:1], alphas[:-1]]).to(torch.float64)
    ratio = torch.reciprocal(1.0 - alphas).to(torch.float64) * (1.0 - alphas_prev)
    sigmas = eta * torch.sqrt(ratio * (1.0 - alphas.to(torch.float64) / alphas_prev))
    timesteps = torch.tensor(respace_timesteps(num_train_timesteps, num_steps), dtype=torch.int64)
    return DDIMSchedule(timesteps, alphas, alphas_prev, sigmas)


def ddim_schedule(
    alphas_cumprod: Tensor,
    num_steps: int,
    *,
    eta: float = 0.0,
    grid: Literal["consistent", "official"] = "consistent",
) -> DDIMSchedule:
    """DDIM tables for `num_steps` steps from the T-step alpha_bar table.

    "consistent" (default): timesteps = respace_timesteps(T, S), alphas = alpha_bar at those same t,
    alphas_prev[0] = 1 so the final step returns x0_pred; with eta = 1 the step variance equals the
    respaced DDPM posterior variance.
    "official": the StableSR scripts' mixed grids for parity: the network gets respace_timesteps(T, S)
    while alphas come from range(0, T, T // S) and alphas_prev[0] = alpha_bar_0 (the last step is an
    identity up to rounding). Example, S = 4: timesteps [0, 333, 666, 999], alphas at t = [0, 250, 500, 750].
    """
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if not 1 <= num_steps <= len(alphas_cumprod):
        raise ValueError(f"num_steps must be in [1, {len(alphas_cumprod)}], got {num_steps}")
    builders = {"consistent": _ddim_consistent, "official": _ddim_official}
    if grid not in builders:
        raise ValueError(f"grid must be one of {sorted(builders)}, got {grid!r}")
    return builders[grid](alphas_cumprod, num_steps, eta)

"""CCSR training losses as pure functions (Sun et al. 2024, https://arxiv.org/abs/2401.00877, Sec. 3).

Stage 1 trains the control module so that the truncated sampler's two big moves are accurate:

    l_eps   = || eps - eps_theta(x_t, t) ||^2,           t ~ U{0, ..., t_max - 1}      (t_max = 667)
    x0_T    = pred_x0(x_T, eps_theta(x_T, T)),           x_T = q(z0, T = 999, eps_2)
    l_T     = || x0_T - z0 ||^2
    x_tau   = q(x0_T, tau = t_max, eps_3)                (gradient flows through x0_T)
    l_tmax  = || pred_x0(x_tau, eps_theta(x_tau, tau)) - z0 ||^2  (+ || eps_theta(x_tau, tau) - eps_3 ||^2 in v1)

Every squared norm is a mean over all elements (the official code averages over C, H, W, then the batch).
Stage 2 (decoder finetuning) reuses `training/discriminator.py`'s PatchGAN hinge losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from stablesr.sampling.samplers import q_sample

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""model(x_t (B, 4, h, w), t (B,) int64) -> eps prediction (B, 4, h, w)."""


def pred_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (Ho et al. 2020, eq. 15)."""
    return (x_t - (1.0 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def sample_truncated_t(batch_size: int, t_max_step: int, *, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> Tensor:
    """t ~ U{0, ..., t_max_step - 1}, (B,) int64: stage 1's eps loss only sees the truncated range."""
    return torch.randint(0, t_max_step, (batch_size,), generator=generator, device=device)


def loss_eps(model: EpsModel, z0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """l_eps = mean (eps - eps_theta(q(z0, t, eps), t))^2; z0, noise (B, 4, h, w), t (B,)."""
    alpha_bar = alphas_cumprod[t].view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
    return F.mse_loss(model(q_sample(z0, alpha_bar, noise), t), noise)


def losses_t_max(model: EpsModel, z0: Tensor, noise_T: Tensor, noise_tau: Tensor, alphas_cumprod: Tensor, *,
                 t_T: int = 999, t_tau: int = 667, version: Literal["v1", "v2"] = "v1") -> dict[str, Tensor]:
    """{"l_T", "l_tmax", "total"}: the two x0 losses at T and tau (and v1's eps term at tau) for z0 (B, 4, h, w).

    noise_T builds x_T = q(z0, T); noise_tau re-noises x0_T to tau with the gradient kept through x0_T.
    """
    batch = z0.shape[0]
    a_T, a_tau = alphas_cumprod[t_T], alphas_cumprod[t_tau]
    x_T = q_sample(z0, a_T, noise_T)
    x0_T = pred_x0(x_T, model(x_T, torch.full((batch,), t_T, device=z0.device)), a_T)
    x_tau = q_sample(x0_T, a_tau, noise_tau)
    eps_tau = model(x_tau, torch.full((batch,), t_tau, device=z0.device))
    l_T = F.mse_loss(x0_T, z0)
    l_tmax = F.mse_loss(pred_x0(x_tau, eps_tau, a_tau), z0)
    if version == "v1":
        l_tmax = l_tmax + F.mse_loss(eps_tau, noise_tau)
    return {"l_T": l_T, "l_tmax": l_tmax, "total": l_T + l_tmax}

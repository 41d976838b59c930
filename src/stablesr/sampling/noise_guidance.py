"""DeeDSR's noise guidance (https://arxiv.org/abs/2404.00661, eq. 10-11) as a denoiser wrapper.

At the guided steps the network is not called: the clean estimate is the LR latent itself and the
noise estimate is the noise that maps it to the current latent,

    x0_pred = z_lr,    eps_pred = (x_t - sqrt(alpha_bar_t) z_lr) / sqrt(1 - alpha_bar_t)     (eq. 11)

and the sampler's DDIM step (eq. 10) then moves x_t towards the LR latent:
x_prev = sqrt(alpha_bar_prev) z_lr + sqrt(1 - alpha_bar_prev - sigma^2) eps_pred + sigma z.
Default: only the first step from pure noise is guided (the released code).
"""

from __future__ import annotations

from collections.abc import Collection

from torch import Tensor

from stablesr.sampling.denoisers import Denoiser, X0Denoiser


def noise_guided(denoiser: Denoiser, lr_latent: Tensor, guided_timesteps: Collection[int]) -> Denoiser:
    """A denoiser returning (z_lr, eq. 11's eps) at the original timesteps in `guided_timesteps`, else `denoiser`'s."""
    guided = {int(t) for t in guided_timesteps}

    def guided_denoiser(x_t: Tensor, t: int, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
        if t in guided:
            return X0Denoiser.split(lr_latent.to(x_t.dtype), x_t, alpha_bar)
        return denoiser(x_t, t, alpha_bar)

    return guided_denoiser


def first_timesteps(timesteps: Tensor, count: int) -> list[int]:
    """The `count` timesteps a sampler visits first (the largest): first_timesteps([0, 333, 666, 999], 1) -> [999]."""
    return sorted((int(t) for t in timesteps), reverse=True)[:count]

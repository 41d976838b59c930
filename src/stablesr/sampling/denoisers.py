"""Parameterisation wrappers (k-diffusion style): a raw network -> a denoiser returning (x0_pred, eps_pred).

Samplers only ever see `Denoiser`s, so they are the same for eps-, v- and x0-prediction models
(Ho et al. 2020, https://arxiv.org/abs/2006.11239; v: Salimans & Ho 2022,
https://arxiv.org/abs/2202.00512). The sampler passes alpha_bar (its schedule's value for the step)
with the original timestep t, as k-diffusion passes sigma.

    eps: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
    v:   x0 = sqrt(a) x_t - sqrt(1 - a) v,   eps = sqrt(a) v + sqrt(1 - a) x_t
    x0:  eps = (x_t - sqrt(a) x0) / sqrt(1 - a)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Model = Callable[[Tensor, int], Tensor]
"""model(x_t (B, C, h, w), t original timestep) -> raw network output (eps, v or x0), same shape."""

Denoiser = Callable[[Tensor, int, "float | Tensor"], tuple[Tensor, Tensor]]
"""denoiser(x_t, t, alpha_bar) -> (x0_pred, eps_pred), both shaped like x_t (B, C, h, w)."""

PredictionType = Literal["epsilon", "v_prediction", "sample"]


def _coefficient(alpha_bar: float | Tensor, x_t: Tensor) -> float | Tensor:
    """A float stays a float (double-precision coefficients); a tensor moves to x_t's device, >= float32."""
    if isinstance(alpha_bar, Tensor):
        return alpha_bar.to(device=x_t.device, dtype=torch.promote_types(x_t.dtype, torch.float32))
    return alpha_bar


class EpsDenoiser:
    """An eps-prediction model as a Denoiser."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def __call__(self, x_t: Tensor, t: int, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.model(x_t, t), x_t, alpha_bar)

    @staticmethod
    def split(eps: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
        a = _coefficient(alpha_bar, x_t)
        return (1.0 / a) ** 0.5 * x_t - (1.0 / a - 1.0) ** 0.5 * eps, eps


class VDenoiser(EpsDenoiser):
    """A v-prediction model (SD 2.x 768-v) as a Denoiser."""

    @staticmethod
    def split(v: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
        a = _coefficient(alpha_bar, x_t)
        sqrt_a, sqrt_one_minus = a**0.5, (1.0 - a) ** 0.5
        return sqrt_a * x_t - sqrt_one_minus * v, sqrt_a * v + sqrt_one_minus * x_t


class X0Denoiser(EpsDenoiser):
    """An x0-prediction model as a Denoiser."""

    @staticmethod
    def split(x0: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
        a = _coefficient(alpha_bar, x_t)
        return x0, (x_t - a**0.5 * x0) / (1.0 - a) ** 0.5


DENOISERS: dict[str, type[EpsDenoiser]] = {"epsilon": EpsDenoiser, "v_prediction": VDenoiser, "sample": X0Denoiser}


def wrap_model(model: Model, prediction_type: PredictionType) -> Denoiser:
    """The Denoiser for a model trained with `prediction_type` (diffusers' names)."""
    if prediction_type not in DENOISERS:
        raise ValueError(f"prediction_type must be one of {sorted(DENOISERS)}, got {prediction_type!r}")
    return DENOISERS[prediction_type](model)


def predict_x0_and_eps(model_out: Tensor, x_t: Tensor, alpha_bar: float | Tensor, *,
                       prediction_type: PredictionType) -> tuple[Tensor, Tensor]:
    """(x0_pred, eps_pred) from a raw output that is already computed (parity checks, training targets)."""
    if prediction_type not in DENOISERS:
        raise ValueError(f"prediction_type must be one of {sorted(DENOISERS)}, got {prediction_type!r}")
    return DENOISERS[prediction_type].split(model_out, x_t, alpha_bar)

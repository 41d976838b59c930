"""Blur kernels of the Real-ESRGAN degradation model: Gaussian, generalized Gaussian, plateau, sinc.

Real-ESRGAN (Wang et al., ICCVW 2021), https://arxiv.org/abs/2107.10833, section 3.1.
Every kernel is built in float64 from a `KernelParams` record, normalised to sum to 1, and
returned as float32; `sample_kernel` draws a record with a `torch.Generator`.

Paper symbols -> code names:
    Sigma = R diag(sigma_1^2, sigma_2^2) R^T   sigma_x, sigma_y, rotation (theta)
    beta (shape of generalized / plateau)      beta
    omega_c (sinc cut-off frequency)           omega
    k (kernel size, odd)                        size
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from stablesr.data.draws import draw_bernoulli, draw_choice, draw_uniform

KernelKind = Literal[
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc", "pulse"
]
MIXED_KINDS: tuple[KernelKind, ...] = (
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"
)
PADDED_SIZE = 21  # Real-ESRGAN pads every kernel to 21 x 21


@dataclass(frozen=True)
class KernelParams:
    """Everything needed to rebuild one kernel exactly (angles in radians)."""

    kind: KernelKind
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    rotation: float = 0.0
    beta: float = 1.0
    omega: float = 0.0
    center_offset: float = 0.0  # sub-pixel shift of the centre (BSRGAN's shifted kernel)


@dataclass(frozen=True)
class BlurSettings:
    """How one blur stage draws its kernel (Real-ESRGAN's `kernel_list`/`kernel_prob`/... options)."""

    kernel_probs: tuple[tuple[KernelKind, float], ...] = (
        ("iso", 0.45), ("aniso", 0.25), ("generalized_iso", 0.12),
        ("generalized_aniso", 0.03), ("plateau_iso", 0.12), ("plateau_aniso", 0.03),
    )
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    sinc_prob: float = 0.1
    sigma_range: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)


def _grid(size: int, center_offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (x, y), each (size, size) float64, centred on the middle pixel."""
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2 - center_offset
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def _mahalanobis(params: KernelParams) -> torch.Tensor:
    """x^T Sigma^-1 x on the kernel grid, (size, size) float64."""
    cos, sin = math.cos(params.rotation), math.sin(params.rotation)
    x, y = _grid(params.size, params.center_offset)
    u = cos * x + sin * y  # coordinates in the rotated (principal) frame
    v = -sin * x + cos * y
    return (u / params.sigma_x) ** 2 + (v / params.sigma_y) ** 2


def _sinc(size: int, omega: float) -> torch.Tensor:
    """Circular low-pass kernel omega J1(omega r) / (2 pi r), (size, size) float64."""
    x, y = _grid(size, 0.0)
    radius = torch.sqrt(x**2 + y**2)
    safe_radius = torch.where(radius == 0, torch.ones_like(radius), radius)
    values = omega * torch.special.bessel_j1(omega * safe_radius) / (2 * math.pi * safe_radius)
    return torch.where(radius == 0, torch.full_like(radius, omega**2 / (4 * math.pi)), values)


def kernel_from_params(params: KernelParams) -> torch.Tensor:
    """Build the kernel described by `params`: (size, size) float32, sums to 1."""
    if params.kind == "pulse":
        kernel = torch.zeros(params.size, params.size, dtype=torch.float64)
        kernel[params.size // 2, params.size // 2] = 1.0
    elif params.kind == "sinc":
        kernel = _sinc(params.size, params.omega)
    elif params.kind.startswith("generalized"):
        kernel = torch.exp(-0.5 * _mahalanobis(params) ** params.beta)
    elif params.kind.startswith("plateau"):
        kernel = 1.0 / (_mahalanobis(params) ** params.beta + 1.0)
    else:
        kernel = torch.exp(-0.5 * _mahalanobis(params))
    return (kernel / kernel.sum()).float()


def pad_kernel(kernel: torch.Tensor, size: int = PADDED_SIZE) -> torch.Tensor:
    """Zero-pad an odd (k, k) kernel to (size, size), keeping it centred."""
    pad = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (pad, pad, pad, pad))


def _sample_beta(generator: torch.Generator, beta_range: tuple[float, float]) -> float:
    """Shape parameter: with probability 1/2 below 1 (from beta_range[0]), else above 1."""
    if draw_bernoulli(generator, 0.5):
        return draw_uniform(generator, beta_range[0], 1.0)
    return draw_uniform(generator, 1.0, beta_range[1])


def _sample_mixed(kind: KernelKind, size: int, settings: BlurSettings, generator) -> KernelParams:
    """Gaussian-family kernel: iso has sigma_x = sigma_y and no rotation; aniso rotates in [-pi, pi]."""
    sigma_x = draw_uniform(generator, *settings.sigma_range)
    sigma_y, rotation = sigma_x, 0.0
    if kind.endswith("aniso"):
        sigma_y = draw_uniform(generator, *settings.sigma_range)
        rotation = draw_uniform(generator, -math.pi, math.pi)
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _sample_beta(generator, settings.betag_range)
    elif kind.startswith("plateau"):
        beta = _sample_beta(generator, settings.betap_range)
    return KernelParams(kind=kind, size=size, sigma_x=sigma_x, sigma_y=sigma_y, rotation=rotation, beta=beta)


def sample_kernel(settings: BlurSettings, *, generator: torch.Generator) -> KernelParams:
    """Draw one blur kernel: odd size from `kernel_sizes`; sinc with `sinc_prob`, else a mixed kernel.

    Sinc cut-off: omega ~ U[pi/3, pi] when size < 13, else U[pi/5, pi] (Real-ESRGAN's rule).
    """
    size = draw_choice(generator, settings.kernel_sizes)
    if draw_bernoulli(generator, settings.sinc_prob):
        low = math.pi / 3 if size < 13 else math.pi / 5
        return KernelParams(kind="sinc", size=size, omega=draw_uniform(generator, low, math.pi))
    kinds, probs = zip(*settings.kernel_probs)
    return _sample_mixed(draw_choice(generator, kinds, probs), size, settings, generator)


def sample_final_sinc(
    *, final_sinc_prob: float, kernel_sizes: tuple[int, ...], generator: torch.Generator
) -> KernelParams:
    """Final-stage kernel: sinc with omega ~ U[pi/3, pi] with `final_sinc_prob`, else the identity (pulse)."""
    if draw_bernoulli(generator, final_sinc_prob):
        size = draw_choice(generator, kernel_sizes)
        return KernelParams(kind="sinc", size=size, omega=draw_uniform(generator, math.pi / 3, math.pi))
    return KernelParams(kind="pulse", size=1)  # identity (Real-ESRGAN pads it to 21 x 21: same result)

"""Pluggable blend weights for overlapping windows (all float64; callers cast where their numerics need it).

- `gaussian_weights`: Mixture of Diffusers' separable Gaussian (Jimenez 2023,
  https://arxiv.org/abs/2302.02412), StableSR's latent aggregation;
- `raised_cosine_ramp`: sin^2 ramps across the overlap, summing to 1 with the neighbour's (tiled VAE);
- `linear_fade`: zero over the outer half pad, then a linear ramp over the pad (Real-ESRGAN tiles).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GAUSSIAN_VARIANCE = 0.01  # relative to the tile size: std = 0.1 * tile side


def _gaussian_profile(length: int, midpoint: float) -> Tensor:
    """exp(-(k - m)^2 / (L^2 * 2 var)) / sqrt(2 pi var) for k = 0..L-1, float64 (L,), libm exp per entry."""
    scale = math.sqrt(2 * math.pi * GAUSSIAN_VARIANCE)
    values = [
        math.exp(-(k - midpoint) * (k - midpoint) / (length * length) / (2 * GAUSSIAN_VARIANCE)) / scale
        for k in range(length)
    ]
    return torch.tensor(values, dtype=torch.float64)


def gaussian_weights(tile_height: int, tile_width: int, *, faithful: bool = False) -> Tensor:
    """Separable Gaussian tile weights, float64 (tile_height, tile_width), variance 0.01 per unit side.

    Columns are centred at (W - 1) / 2. Rows are centred at (H - 1) / 2, or at H / 2 with
    `faithful=True`, which reproduces the official half-pixel asymmetry.
    """
    row_midpoint = tile_height / 2 if faithful else (tile_height - 1) / 2
    rows = _gaussian_profile(tile_height, row_midpoint)
    columns = _gaussian_profile(tile_width, (tile_width - 1) / 2)
    return torch.outer(rows, columns)


def raised_cosine_ramp(length: int, ramp: int, *, fade_in: bool, fade_out: bool) -> Tensor:
    """1-D window weight (length,): raised-cosine rise over `ramp` samples at a faded side, else 1.

    Values are sin^2(pi/2 * (i + 0.5) / ramp) inside the ramp, so a fade-out ramp and the next
    window's fade-in ramp over the same samples sum to exactly 1 (cos^2 + sin^2).
    """
    weight = torch.ones(length, dtype=torch.float64)
    rise = torch.sin(0.5 * math.pi * (torch.arange(min(ramp, length), dtype=torch.float64) + 0.5) / ramp) ** 2
    if fade_in:
        weight[: rise.numel()] = rise
    if fade_out:
        weight[length - rise.numel():] = torch.minimum(weight[length - rise.numel():], rise.flip(0))
    return weight


def linear_fade(size: int, pad: int, *, fade_in: bool, fade_out: bool) -> Tensor:
    """(size,) weights: 1 inside; on a faded side 0 over pad / 2, then a linear ramp over pad.

    linear_fade(4, 2, fade_in=True, fade_out=False) -> [0, 0.25, 0.75, 1]; neighbours' ramps sum to 1.
    """
    position = torch.arange(size, dtype=torch.float64) + 0.5
    weight = torch.ones(size, dtype=torch.float64)
    if pad > 0 and fade_in:
        weight = torch.minimum(weight, ((position - pad / 2) / pad).clamp(min=0))
    if pad > 0 and fade_out:
        weight = torch.minimum(weight, ((size - position - pad / 2) / pad).clamp(min=0))
    return weight


def separable(rows: Tensor, cols: Tensor) -> Tensor:
    """(h,) x (w,) -> (h, w) window weight."""
    return torch.outer(rows, cols)

"""Aggregation sampling: blend the model output of overlapping latent tiles with Gaussian weights.

StableSR (Wang et al. 2024, https://arxiv.org/abs/2305.07015, Sec. 3.4) borrows the weighting of
Mixture of Diffusers (Jimenez 2023, https://arxiv.org/abs/2302.02412). At every step each tile of
x_t and of the LR condition latent is cut with the same window, the network runs per tile, and the
outputs are averaged as sum(w * out) / sum(w) over the whole latent; the sampler then takes one
step on the whole latent. This keeps memory bounded and removes seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

TileFn = Callable[[Tensor, Tensor, int], Tensor]
"""tile_fn(x_tiles (n, C, th, tw), lr_tiles (n, C_lr, th, tw), t) -> out tiles (n, C_out, th, tw)."""

GAUSSIAN_VARIANCE = 0.01  # relative to the tile size: std = 0.1 * tile side


@dataclass(frozen=True)
class Window:
    """A latent crop [y0:y1, x0:x1] (end exclusive)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def _axis_starts(size: int, tile_size: int, tile_overlap: int) -> list[int]:
    """Tile starts k * (T - O) for the smallest count covering `size`; the last snapped to size - T."""
    if size <= tile_size:
        return [0]
    stride = tile_size - tile_overlap
    count = math.ceil((size - tile_size) / stride) + 1
    return [k * stride for k in range(count - 1)] + [size - tile_size]


def tile_windows(height: int, width: int, *, tile_size: int, tile_overlap: int) -> list[Window]:
    """Tile grid in the official order: outer loop over x, inner over y.

    A side smaller than `tile_size` gets one tile of that side's size. Example, 40x72 latent,
    T=32, O=16: x0 in (0, 16, 32, 40), y0 in (0, 8) -> 8 windows, (y0, x0) = (0, 0), (8, 0), (0, 16), ...
    """
    if tile_size < 1 or not 0 <= tile_overlap < tile_size:
        raise ValueError(f"need tile_size >= 1 and 0 <= tile_overlap < tile_size, got {tile_size}, {tile_overlap}")
    if height < 1 or width < 1:
        raise ValueError(f"latent size must be positive, got {height}x{width}")
    tile_height, tile_width = min(tile_size, height), min(tile_size, width)
    return [
        Window(y0, y0 + tile_height, x0, x0 + tile_width)
        for x0 in _axis_starts(width, tile_size, tile_overlap)
        for y0 in _axis_starts(height, tile_size, tile_overlap)
    ]


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


def _crop(latent: Tensor, window: Window) -> Tensor:
    return latent[..., window.y0 : window.y1, window.x0 : window.x1]


def _check_blend_inputs(x_t: Tensor, lr_latent: Tensor, windows: Sequence[Window], weights: Tensor) -> None:
    if x_t.shape[-2:] != lr_latent.shape[-2:] or x_t.shape[0] != lr_latent.shape[0]:
        raise ValueError(f"x_t {tuple(x_t.shape)} and lr_latent {tuple(lr_latent.shape)} differ in batch or size")
    if any((w.height, w.width) != tuple(weights.shape) for w in windows):
        raise ValueError(f"every window must match the weights' shape {tuple(weights.shape)}")
    if len(windows) == 1 and (windows[0].height, windows[0].width) != tuple(x_t.shape[-2:]):
        raise ValueError("a single window must cover the whole latent")


def blend_tiles(
    tile_fn: TileFn,
    x_t: Tensor,
    lr_latent: Tensor,
    t: int,
    *,
    windows: Sequence[Window],
    weights: Tensor,
    batch_size: int = 1,
) -> Tensor:
    """sum_k w * tile_fn(x_t[win_k], lr_latent[win_k], t) / sum_k w over the full latent.

    x_t (B, C, H, W), lr_latent (B, C_lr, H, W); windows all of the weights' shape (th, tw).
    `batch_size` tiles go through one tile_fn call as a (batch_size * B, C, th, tw) batch, tile-major.
    Products w * out are taken in the weights' dtype and added to a float32 (or wider) accumulator,
    as the official code does. A single window returns tile_fn's output unchanged.
    Returns (B, C_out, H, W) in x_t's dtype.
    """
    _check_blend_inputs(x_t, lr_latent, windows, weights)
    if len(windows) == 1:
        return tile_fn(x_t, lr_latent, t)
    batch, height, width = x_t.shape[0], *x_t.shape[-2:]
    accumulator_dtype = torch.promote_types(x_t.dtype, torch.float32)
    weights = weights.to(x_t.device)
    weight_sum = torch.zeros((1, 1, height, width), dtype=accumulator_dtype, device=x_t.device)
    blended = None
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        x_tiles = torch.cat([_crop(x_t, window) for window in group])  # n x (B, C, th, tw) -> (n*B, C, th, tw)
        lr_tiles = torch.cat([_crop(lr_latent, window) for window in group])
        out_tiles = tile_fn(x_tiles, lr_tiles, t)
        if blended is None:
            out_shape = (batch, out_tiles.shape[1], height, width)
            blended = torch.zeros(out_shape, dtype=accumulator_dtype, device=x_t.device)
        for k, window in enumerate(group):
            _crop(blended, window).add_(out_tiles[k * batch : (k + 1) * batch] * weights)
            _crop(weight_sum, window).add_(weights)
    return (blended / weight_sum).to(x_t.dtype)


class TiledDenoiser:
    """A Denoiser(x_t, t) that runs `tile_fn` on overlapping tiles and blends them (aggregation sampling).

    tile_fn(x_tiles (n, C, th, tw), lr_tiles (n, C_lr, th, tw), t) -> (n, C_out, th, tw).
    lr_latent (B or 1, C_lr, H, W) is cropped with the same windows as x_t (B, C, H, W).
    A latent no larger than one tile is passed to tile_fn whole, so the result equals the untiled call.
    """

    def __init__(
        self,
        tile_fn: TileFn,
        lr_latent: Tensor,
        *,
        tile_size: int = 64,
        tile_overlap: int = 32,
        batch_size: int = 1,
        faithful_weights: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if lr_latent.ndim != 4:
            raise ValueError(f"lr_latent must be (B, C, H, W), got shape {tuple(lr_latent.shape)}")
        tile_windows(*lr_latent.shape[-2:], tile_size=tile_size, tile_overlap=tile_overlap)  # validates sizes
        self.tile_fn = tile_fn
        self.lr_latent = lr_latent
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size
        self.faithful_weights = faithful_weights

    def __call__(self, x_t: Tensor, t: int) -> Tensor:
        """x_t (B, C, H, W), t original timestep -> blended model output (B, C_out, H, W)."""
        height, width = x_t.shape[-2:]
        windows = tile_windows(height, width, tile_size=self.tile_size, tile_overlap=self.tile_overlap)
        weights = gaussian_weights(windows[0].height, windows[0].width, faithful=self.faithful_weights)
        if x_t.device.type == "mps":  # no float64 on Apple GPUs
            weights = weights.to(torch.float32)
        lr_latent = self.lr_latent.expand(x_t.shape[0], *self.lr_latent.shape[1:])
        return blend_tiles(
            self.tile_fn, x_t, lr_latent, t, windows=windows, weights=weights, batch_size=self.batch_size
        )

"""Aggregation sampling: blend the model output of overlapping latent tiles with Gaussian weights.

StableSR (Wang et al. 2024, https://arxiv.org/abs/2305.07015, Sec. 3.4) borrows the weighting of
Mixture of Diffusers (Jimenez 2023, https://arxiv.org/abs/2302.02412). At every step each tile of
x_t and of the LR condition latent is cut with the same window, the network runs per tile, and the
outputs are averaged as sum(w * out) / sum(w) over the whole latent; the sampler then takes one
step on the whole latent. This keeps memory bounded and removes seams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stablesr.tiling.canvas import BlendCanvas
from stablesr.tiling.grid import Window, window_grid
from stablesr.tiling.weights import gaussian_weights

TileFn = Callable[[Tensor, Tensor, int], Tensor]
"""tile_fn(x_tiles (n, C, th, tw), lr_tiles (n, C_lr, th, tw), t) -> out tiles (n, C_out, th, tw)."""

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
    batch = x_t.shape[0]
    weights = weights.to(x_t.device)
    canvas = None
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        x_tiles = torch.cat([x_t[..., w.rows, w.cols] for w in group])  # n x (B, C, th, tw) -> (n*B, C, th, tw)
        lr_tiles = torch.cat([lr_latent[..., w.rows, w.cols] for w in group])
        out_tiles = tile_fn(x_tiles, lr_tiles, t)
        if canvas is None:
            canvas = BlendCanvas((batch, out_tiles.shape[1], *x_t.shape[-2:]), device=x_t.device,
                                 dtype=torch.promote_types(x_t.dtype, torch.float32))
        for k, window in enumerate(group):
            canvas.add(window, out_tiles[k * batch : (k + 1) * batch], weights)
    return canvas.result().to(x_t.dtype)


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
        faithful: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if lr_latent.ndim != 4:
            raise ValueError(f"lr_latent must be (B, C, H, W), got shape {tuple(lr_latent.shape)}")
        window_grid(*lr_latent.shape[-2:], tile_size=tile_size, tile_overlap=tile_overlap)  # validates sizes
        self.tile_fn = tile_fn
        self.lr_latent = lr_latent
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size
        self.faithful = faithful

    def __call__(self, x_t: Tensor, t: int) -> Tensor:
        """x_t (B, C, H, W), t original timestep -> blended model output (B, C_out, H, W)."""
        height, width = x_t.shape[-2:]
        windows = window_grid(height, width, tile_size=self.tile_size, tile_overlap=self.tile_overlap,
                              order="columns_outer")  # the official tile order
        weights = gaussian_weights(windows[0].height, windows[0].width, faithful=self.faithful)
        if x_t.device.type == "mps":  # no float64 on Apple GPUs
            weights = weights.to(torch.float32)
        lr_latent = self.lr_latent.expand(x_t.shape[0], *self.lr_latent.shape[1:])
        return blend_tiles(
            self.tile_fn, x_t, lr_latent, t, windows=windows, weights=weights, batch_size=self.batch_size
        )

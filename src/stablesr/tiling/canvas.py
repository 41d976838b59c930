"""The blending canvas shared by every tiler: sum_k w_k * out_k / sum_k w_k over overlapping windows."""

from __future__ import annotations

import torch
from torch import Tensor

from stablesr.tiling.grid import Window


class BlendCanvas:
    """Accumulates weighted window outputs into a (B, C, H, W) canvas of `dtype`.

    `add` multiplies in the weight's dtype (callers pass float64 weights to multiply in float64, or
    cast them first) and adds into the canvas, so each tiler keeps its documented numerics.
    """

    def __init__(self, shape: tuple[int, int, int, int], *, dtype: torch.dtype, device: torch.device) -> None:
        self.total = torch.zeros(shape, dtype=dtype, device=device)
        self.weight_sum = torch.zeros((1, 1, *shape[-2:]), dtype=dtype, device=device)

    def add(self, window: Window, out: Tensor, weight: Tensor) -> None:
        """out (B, C, h, w) for `window`, weight (h, w) or (1, 1, h, w)."""
        self.total[..., window.rows, window.cols].add_(out * weight)
        self.weight_sum[..., window.rows, window.cols].add_(weight)

    def result(self) -> Tensor:
        return self.total / self.weight_sum

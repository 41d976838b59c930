"""The blending canvases shared by every tiler: sum_k w_k * out_k / sum_k w_k over overlapping windows,
either whole (`BlendCanvas`) or streamed a band of rows at a time into a sink (`StreamingCanvas`)."""

from __future__ import annotations

from collections.abc import Callable

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


RowSink = Callable[[int, Tensor], None]
"""sink(y0, rows (B, C, n, W)): receives finished, normalised rows y0 .. y0 + n of the canvas, top to bottom."""


class StreamingCanvas:
    """A BlendCanvas that holds only a band of rows: windows must arrive with non-decreasing y0 (a
    row-major grid), and once a window starts at y0 every row above it is final, so those rows are
    divided by their summed weight and handed to `sink`. Memory: (C + 1) x band_rows x W floats
    instead of (C + 1) x H x W. Each value is the same sum(w * out) / sum(w), in the same order, as
    BlendCanvas computes: the results are bitwise equal.

    band_rows: at least the tallest window. Call `finish()` after the last window.
    """

    def __init__(self, shape: tuple[int, int, int, int], *, band_rows: int, sink: RowSink, dtype: torch.dtype,
                 device: torch.device) -> None:
        batch, channels, self.height, width = shape
        self.band_rows = min(band_rows, self.height)
        self.total = torch.zeros((batch, channels, self.band_rows, width), dtype=dtype, device=device)
        self.weight_sum = torch.zeros((1, 1, self.band_rows, width), dtype=dtype, device=device)
        self.sink, self.top = sink, 0  # canvas row of band row 0

    def add(self, window: Window, out: Tensor, weight: Tensor) -> None:
        """out (B, C, h, w) for `window`, weight (h, w) or (1, 1, h, w)."""
        if window.y0 < self.top:
            raise ValueError(f"windows must come in row order: y0 {window.y0} after rows up to {self.top} were final")
        self._flush(window.y0)
        if window.y1 - self.top > self.band_rows:
            raise ValueError(f"window rows {window.y0}..{window.y1} exceed the band of {self.band_rows} rows")
        rows = slice(window.y0 - self.top, window.y1 - self.top)
        self.total[..., rows, window.cols].add_(out * weight)
        self.weight_sum[..., rows, window.cols].add_(weight)

    def finish(self) -> None:
        """Hand the remaining rows to the sink."""
        self._flush(self.height)

    def _flush(self, y: int) -> None:
        """Rows top .. y are final: normalise them, pass them on, and shift the band up."""
        count = min(y - self.top, self.band_rows)
        if count <= 0:
            return
        self.sink(self.top, self.total[..., :count, :] / self.weight_sum[..., :count, :])
        for band in (self.total, self.weight_sum):
            band[..., : self.band_rows - count, :] = band[..., count:, :].clone()
            band[..., self.band_rows - count :, :] = 0
        self.top += count
        if self.top < y:  # rows no window touched would divide 0 by 0
            raise ValueError(f"rows {self.top}..{y} are not covered by any window")


def tensor_sink(target: Tensor) -> RowSink:
    """A sink that writes rows into `target` (B, C, H, W)."""
    def write(y0: int, rows: Tensor) -> None:
        target[..., y0 : y0 + rows.shape[-2], :] = rows

    return write


def quantized_sink(target, *, levels: int = 255, model_range: bool = False) -> RowSink:
    """A sink that writes rows of batch item 0 as round(clamp(x, 0, 1) * levels) into the integer array
    `target` (H, W, C) (numpy uint8 for levels 255, uint16 for 65535).

    model_range: the rows are in [-1, 1] and go through `to_unit_range` first. The float32 operations
    are those of `tensor_to_pil`, so the integers equal the whole-image path's.
    """
    def write(y0: int, rows: Tensor) -> None:
        unit = ((rows[0] + 1) / 2).clamp(0, 1) if model_range else rows[0]
        values = (unit.float().clamp(0, 1).permute(1, 2, 0) * levels).round()  # (C, n, W) -> (n, W, C)
        target[y0 : y0 + rows.shape[-2]] = values.cpu().numpy().astype(target.dtype)

    return write


def cropped_sink(sink: RowSink, *, rows: tuple[int, int], cols: tuple[int, int]) -> RowSink:
    """A sink that passes on only rows top .. top + height and columns left .. left + width of what it
    receives, renumbered from 0 (e.g. the valid region of a padded image). rows/cols: (start, length)."""
    top, height = rows
    left, width = cols

    def write(y0: int, band: Tensor) -> None:
        start, stop = max(y0, top), min(y0 + band.shape[-2], top + height)
        if start < stop:
            sink(start - top, band[..., start - y0 : stop - y0, left : left + width])

    return write

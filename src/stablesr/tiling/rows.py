"""Local image operators applied a band of rows at a time, so their temporaries are band-sized.

An operator whose output row y depends only on input rows y - margin .. y + margin (a stack of
small convolutions, such as the wavelet colour fix) gives the same rows when it runs on a band
extended by `margin` rows of real context, as long as its own border handling (replicate padding)
falls on the image border: each band is cut with the context, and only its centre is kept.

`RowBandStream` does this on rows as they arrive (a `RowSink`, e.g. fed by a tiled decode), so the
operator's input never exists whole; `map_row_bands` is the same on a whole tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from stablesr.tiling.canvas import RowSink, tensor_sink


class BandedRows:
    """A RowSink that turns rows arriving top to bottom into output rows, a band of output rows at a time,
    and passes them on to `sink`. A subclass says which input rows an output band reads (`_inputs`) and
    computes the band (`_band`); only those input rows are held. Call `finish()` after the last rows.
    """

    def __init__(self, in_height: int, out_height: int, *, band_rows: int, sink: RowSink) -> None:
        if band_rows < 1:
            raise ValueError(f"band_rows must be >= 1, got {band_rows}")
        self.in_height, self.out_height, self.band_rows, self.sink = in_height, out_height, band_rows, sink
        self.held: Tensor | None = None  # input rows held_top .. received
        self.held_top = self.received = self.next_row = 0

    def __call__(self, y0: int, rows: Tensor) -> None:
        if y0 != self.received:
            raise ValueError(f"rows must arrive in order: got row {y0}, expected {self.received}")
        rows = self._prepare(rows)
        self.held = rows if self.held is None else torch.cat([self.held, rows], dim=-2)
        self.received += rows.shape[-2]
        while self.next_row < self.out_height and self.received >= self._inputs(self.next_row, self._band_end())[1]:
            self._emit()

    def finish(self) -> None:
        if self.received != self.in_height:
            raise ValueError(f"the stream ended after {self.received} of {self.in_height} rows")
        while self.next_row < self.out_height:
            self._emit()

    def _band_end(self) -> int:
        return min(self.next_row + self.band_rows, self.out_height)

    def _emit(self) -> None:
        start, stop = self.next_row, self._band_end()
        first, last = self._inputs(start, stop)
        band_in = self.held[..., first - self.held_top : last - self.held_top, :]
        self.sink(start, self._band(start, stop, first, last, band_in))
        self.next_row = stop
        keep_from = self._inputs(stop, stop + 1)[0] if stop < self.out_height else self.received
        if keep_from > self.held_top:  # rows above the next band's inputs are done with
            self.held = self.held[..., keep_from - self.held_top :, :]
            self.held_top = keep_from

    def _prepare(self, rows: Tensor) -> Tensor:
        """What is held of incoming rows (default: the rows)."""
        return rows

    def _inputs(self, start: int, stop: int) -> tuple[int, int]:
        """Input rows first .. last that output rows start .. stop read."""
        raise NotImplementedError

    def _band(self, start: int, stop: int, first: int, last: int, band_in: Tensor) -> Tensor:
        """Output rows start .. stop from input rows first .. last (`band_in`)."""
        raise NotImplementedError


class RowBandStream(BandedRows):
    """A RowSink that applies fn band by band to rows arriving top to bottom and passes the results on.

    fn(rows, *context_rows) -> (B, C', n, W): `rows` are the streamed input's rows top .. bottom and
    `context_rows` the same rows of each whole tensor in `context` (e.g. the image a colour fix
    matches). Bands start at multiples of `band_rows` and run with `margin` rows of context above and
    below (clipped at the image border), like `map_row_bands`, so the rows are the same. Held: one band
    plus 2 x margin rows of input. Call `finish()` after the last rows.
    """

    def __init__(self, fn: Callable[..., Tensor], height: int, *, margin: int, band_rows: int, sink: RowSink,
                 context: tuple[Tensor, ...] = ()) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        super().__init__(height, height, band_rows=band_rows, sink=sink)
        self.fn, self.margin, self.context = fn, margin, context

    def _inputs(self, start: int, stop: int) -> tuple[int, int]:
        return max(start - self.margin, 0), min(stop + self.margin, self.in_height)

    def _band(self, start: int, stop: int, first: int, last: int, band_in: Tensor) -> Tensor:
        band_out = self.fn(band_in, *(image[..., first:last, :] for image in self.context))  # (B, C', last - first, W)
        return band_out[..., start - first : stop - first, :]


def map_row_bands(fn: Callable[..., Tensor], *images: Tensor, margin: int, band_rows: int) -> Tensor:
    """fn(*images) (B, C, H, W), computed band by band: bands of `band_rows` rows, each run with
    `margin` rows of context above and below (clipped at the image border).

    Equal to the whole-image call up to float rounding when fn's reach is at most `margin` rows
    and fn is column-wise whole (bands span the full width). Temporaries: one band plus context.
    """
    first, *context = images
    output: list[Tensor] = []  # the output tensor, made from the first band's shape

    def write(y0: int, rows: Tensor) -> None:
        if not output:
            output.append(torch.empty((*rows.shape[:-2], first.shape[-2], rows.shape[-1]), dtype=rows.dtype,
                                      device=rows.device))
        tensor_sink(output[0])(y0, rows)

    stream = RowBandStream(fn, first.shape[-2], margin=margin, band_rows=band_rows, sink=write, context=tuple(context))
    stream(0, first)
    stream.finish()
    return output[0]


class ResizedRows(BandedRows):
    """A RowSink that resizes the image streamed into it, (B, C, in_h, in_w) -> (out_h, out_w), with
    `F.interpolate(..., mode="bicubic", antialias=True)` and passes the resized rows on, top to bottom.

    Columns are resized band by band (rows are independent of each other there). Rows are resized by
    `band_rows` output rows at a time from the input rows under their filter, with the weights torch
    itself uses (read off by resizing one-hot columns), so the result equals the whole-image call up
    to float rounding (the sums run in another order). Held: the input rows of one output band.
    """

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], *, sink: RowSink,
                 band_rows: int = 64) -> None:
        if min(*in_size, *out_size) < 1:
            raise ValueError(f"sizes must be positive, got {in_size}, {out_size}")
        super().__init__(in_size[0], out_size[0], band_rows=band_rows, sink=sink)
        self.out_w = out_size[1]
        ratio = in_size[0] / out_size[0]
        self._centre, self._reach = ratio, 2 * max(ratio, 1.0) + 2  # filter support plus a row of safety

    def _prepare(self, rows: Tensor) -> Tensor:
        return F.interpolate(rows.float(), size=(rows.shape[-2], self.out_w), mode="bicubic", antialias=True)

    def _inputs(self, start: int, stop: int) -> tuple[int, int]:
        """A superset of the filter's support."""
        first = int(math.floor((start + 0.5) * self._centre - self._reach))
        last = int(math.ceil((stop - 0.5) * self._centre + self._reach)) + 1
        return max(first, 0), min(last, self.in_height)

    def _band(self, start: int, stop: int, first: int, last: int, band_in: Tensor) -> Tensor:
        one_hot = torch.zeros((1, 1, self.in_height, last - first), dtype=torch.float32, device=band_in.device)
        one_hot[0, 0, first:last].fill_diagonal_(1)  # column k: input row first + k
        weights = F.interpolate(one_hot, size=(self.out_height, last - first), mode="bicubic", antialias=True)
        return torch.einsum("ok,bckw->bcow", weights[0, 0, start:stop], band_in)  # (out rows, inputs) x band

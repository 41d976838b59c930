"""Window grids: where the tiles go. One rule for overlapping grids (stride tile - overlap, the last
window snapped to the border), and the cut-plus-context variant for pixel-space networks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Window:
    """A crop [y0:y1, x0:x1] (end exclusive)."""

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

    @property
    def rows(self) -> slice:
        return slice(self.y0, self.y1)

    @property
    def cols(self) -> slice:
        return slice(self.x0, self.x1)

    def scaled(self, scale: int) -> Window:
        """The same window at `scale` x the resolution (latent -> pixels, LR -> SR)."""
        return Window(self.y0 * scale, self.y1 * scale, self.x0 * scale, self.x1 * scale)


def axis_starts(size: int, tile_size: int, tile_overlap: int) -> list[int]:
    """Window starts along one axis: k * (tile - overlap) for the smallest count covering `size`, the
    last one snapped to size - tile; one window of the whole axis when it fits.

    axis_starts(40, 16, 4) -> [0, 12, 24]; axis_starts(41, 16, 4) -> [0, 12, 24, 25]; axis_starts(10, 16, 4) -> [0].
    """
    if size <= tile_size:
        return [0]
    stride = tile_size - tile_overlap
    count = math.ceil((size - tile_size) / stride) + 1
    return [k * stride for k in range(count - 1)] + [size - tile_size]


def window_grid(height: int, width: int, *, tile_size: int, tile_overlap: int,
                order: Literal["columns_outer", "rows_outer"] = "rows_outer") -> list[Window]:
    """Overlapping windows covering (height, width); a side smaller than the tile gets one window of its size.

    `order` 'columns_outer' is the official StableSR loop (outer over x, inner over y). Example,
    40x72, tile 32, overlap 16: x0 in (0, 16, 32, 40), y0 in (0, 8) -> 8 windows.
    """
    if tile_size < 1 or not 0 <= tile_overlap < tile_size:
        raise ValueError(f"need tile_size >= 1 and 0 <= tile_overlap < tile_size, got {tile_size}, {tile_overlap}")
    if height < 1 or width < 1:
        raise ValueError(f"the size to tile must be positive, got {height}x{width}")
    tile_height, tile_width = min(tile_size, height), min(tile_size, width)
    ys, xs = axis_starts(height, tile_size, tile_overlap), axis_starts(width, tile_size, tile_overlap)
    pairs = [(y0, x0) for x0 in xs for y0 in ys] if order == "columns_outer" else [(y0, x0) for y0 in ys for x0 in xs]
    return [Window(y0, y0 + tile_height, x0, x0 + tile_width) for y0, x0 in pairs]


def padded_windows(height: int, width: int, *, tile_size: int, tile_pad: int) -> list[tuple[Window, Window]]:
    """(kept region, padded input window) for each tile: cuts every `tile_size` (0: the whole image),
    each window extended by `tile_pad` of real context on every side, clipped at the border.

    padded_windows(5, 3, tile_size=4, tile_pad=1) ->
    [(Window(0, 4, 0, 3), Window(0, 5, 0, 3)), (Window(4, 5, 0, 3), Window(3, 5, 0, 3))].
    """
    tile_h, tile_w = tile_size or height, tile_size or width
    windows = []
    for y0 in range(0, height, tile_h):
        for x0 in range(0, width, tile_w):
            y1, x1 = min(y0 + tile_h, height), min(x0 + tile_w, width)
            padded = Window(max(y0 - tile_pad, 0), min(y1 + tile_pad, height),
                            max(x0 - tile_pad, 0), min(x1 + tile_pad, width))
            windows.append((Window(y0, y1, x0, x1), padded))
    return windows

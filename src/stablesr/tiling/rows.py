"""Local image operators applied a band of rows at a time, so their temporaries are band-sized.

An operator whose output row y depends only on input rows y - margin .. y + margin (a stack of
small convolutions, such as the wavelet colour fix) gives the same rows when it runs on a band
extended by `margin` rows of real context, as long as its own border handling (replicate padding)
falls on the image border: each band is cut with the context, and only its centre is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def map_row_bands(fn: Callable[..., Tensor], *images: Tensor, margin: int, band_rows: int) -> Tensor:
    """fn(*images) (B, C, H, W), computed band by band: bands of `band_rows` rows, each run with
    `margin` rows of context above and below (clipped at the image border).

    Equal to the whole-image call up to float rounding when fn's reach is at most `margin` rows
    and fn is column-wise whole (bands span the full width). Temporaries: one band plus context.
    """
    height = images[0].shape[-2]
    output = None
    for y0 in range(0, height, band_rows):
        y1 = min(y0 + band_rows, height)
        top, bottom = max(y0 - margin, 0), min(y1 + margin, height)
        band_out = fn(*(image[..., top:bottom, :] for image in images))  # (B, C, bottom - top, W)
        if output is None:
            output = torch.empty((*band_out.shape[:-2], height, band_out.shape[-1]), dtype=band_out.dtype,
                                 device=band_out.device)
        output[..., y0:y1, :] = band_out[..., y0 - top : y1 - top, :]
    return output

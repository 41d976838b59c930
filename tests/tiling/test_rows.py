"""Local operators by bands of rows: the wavelet colour fix gives the whole-image result."""

from __future__ import annotations

import torch

from stablesr.color_fix import apply_color_fix
from stablesr.pipelines.stablesr import WAVELET_REACH
from stablesr.tiling.rows import map_row_bands


def test_banded_wavelet_colour_fix_equals_the_whole_image_call():
    generator = torch.Generator().manual_seed(0)
    sr, lr = (torch.rand(1, 3, 150, 37, generator=generator) * 2 - 1 for _ in range(2))
    whole = apply_color_fix(sr, lr, method="wavelet")
    for band_rows in (1, 16, 64, 149, 400):
        banded = map_row_bands(lambda a, b: apply_color_fix(a, b, method="wavelet"), sr, lr, margin=WAVELET_REACH,
                               band_rows=band_rows)
        assert (banded - whole).abs().max().item() < 1e-5, band_rows
    short = map_row_bands(lambda a, b: apply_color_fix(a, b, method="wavelet"), sr, lr, margin=8, band_rows=16)
    assert (short - whole).abs().max().item() > 1e-3  # too little context is visibly wrong: the reach is real


def test_identity_bands_reassemble_exactly():
    image = torch.arange(2 * 3 * 11 * 5, dtype=torch.float32).reshape(2, 3, 11, 5)
    assert torch.equal(map_row_bands(lambda x: x * 1, image, margin=2, band_rows=4), image)

"""Local operators by bands of rows: the wavelet colour fix gives the whole-image result."""

from __future__ import annotations

import pytest
import torch

from stablesr.color_fix import apply_color_fix
from stablesr.pipelines.stablesr import WAVELET_REACH
from stablesr.tiling.canvas import tensor_sink
from stablesr.tiling.rows import ResizedRows, RowBandStream, map_row_bands


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


def test_streamed_rows_in_any_chunks_give_the_bands_of_the_whole_call():
    generator = torch.Generator().manual_seed(1)
    sr, lr = (torch.rand(1, 3, 97, 23, generator=generator) * 2 - 1 for _ in range(2))
    fix = lambda a, b: apply_color_fix(a, b, method="wavelet")  # noqa: E731
    expected = map_row_bands(fix, sr, lr, margin=WAVELET_REACH, band_rows=20)
    for chunk in (1, 7, 20, 97):
        out = torch.full_like(sr, float("nan"))
        held_rows = []
        stream = RowBandStream(fix, 97, margin=WAVELET_REACH, band_rows=20, sink=tensor_sink(out), context=(lr,))
        for y0 in range(0, 97, chunk):
            stream(y0, sr[..., y0 : y0 + chunk, :])
            held_rows.append(stream.held.shape[-2])
        stream.finish()
        assert torch.equal(out, expected), chunk  # same bands, same context: bitwise equal
        assert max(held_rows) <= 20 + 2 * WAVELET_REACH + chunk  # one band and its context, never the image


def test_row_stream_refuses_rows_out_of_order_and_a_short_stream():
    stream = RowBandStream(lambda x: x, 10, margin=1, band_rows=4, sink=lambda y0, rows: None)
    stream(0, torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match="in order"):
        stream(5, torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match="3 of 10 rows"):
        stream.finish()


@pytest.mark.parametrize("in_size, out_size", [((160, 120), (80, 60)), ((160, 120), (117, 88)),
                                               ((64, 48), (200, 150)), ((97, 41), (13, 7)), ((40, 40), (1, 1))])
def test_resized_rows_stream_equals_the_whole_antialiased_resize(in_size, out_size):
    import torch.nn.functional as F

    image = torch.rand(2, 3, *in_size, generator=torch.Generator().manual_seed(2))
    expected = F.interpolate(image, size=out_size, mode="bicubic", antialias=True)
    out = torch.full_like(expected, float("nan"))
    stream = ResizedRows(in_size, out_size, sink=tensor_sink(out), band_rows=9)
    held = []
    for y0 in range(0, in_size[0], 7):
        stream(y0, image[..., y0 : y0 + 7, :])
        held.append(stream.held.shape[-2])
    stream.finish()
    assert (out - expected).abs().max().item() < 1e-5  # every row written, with torch's own weights
    ratio = in_size[0] / out_size[0]
    assert max(held) <= 9 * ratio + 4 * max(ratio, 1) + 14  # one band of output rows' inputs, never the image

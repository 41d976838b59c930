"""Aggregation tiling: grid order and coverage, Gaussian weights, exact blending identities."""

import math

import pytest
import torch

from stablesr.tiling.aggregation import TiledDenoiser, blend_tiles
from stablesr.tiling.grid import Window, window_grid
from stablesr.tiling.weights import gaussian_weights


def _pointwise_tile_fn(x_tiles, lr_tiles, t):
    """Depends only on the pixel itself, so any correct tiling reproduces the untiled result."""
    return 2.0 * x_tiles - lr_tiles + 0.001 * t


def _tile_mean_fn(x_tiles, lr_tiles, t):
    """Depends on the whole tile, so tiling changes the result (a stand-in for a network)."""
    return x_tiles - x_tiles.mean(dim=(-2, -1), keepdim=True) + lr_tiles.mean()


def tile_windows(height: int, width: int, **sizes) -> list[Window]:
    """The latent aggregation grid, in the official order (outer loop over x)."""
    return window_grid(height, width, order="columns_outer", **sizes)


def _latents(batch=1, height=40, width=72, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, height, width, generator=generator),
            torch.randn(batch, 4, height, width, generator=generator))


def test_tile_windows_official_example():
    windows = tile_windows(40, 72, tile_size=32, tile_overlap=16)
    starts = [(w.y0, w.x0) for w in windows]
    assert starts == [(0, 0), (8, 0), (0, 16), (8, 16), (0, 32), (8, 32), (0, 40), (8, 40)]  # x outer, y inner
    assert all((w.height, w.width) == (32, 32) for w in windows)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(40, 72, 32, 16), (64, 64, 64, 32), (65, 130, 64, 32), (20, 100, 32, 8), (7, 9, 16, 4), (96, 33, 32, 0)],
)
def test_tile_windows_cover_every_pixel_within_bounds(height, width, tile, overlap):
    windows = tile_windows(height, width, tile_size=tile, tile_overlap=overlap)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for window in windows:
        assert 0 <= window.y0 < window.y1 <= height and 0 <= window.x0 < window.x1 <= width
        assert (window.height, window.width) == (min(tile, height), min(tile, width))
        covered[window.y0 : window.y1, window.x0 : window.x1] += 1
    assert covered.min().item() >= 1
    rows = math.ceil(max(height - tile, 0) / (tile - overlap)) + 1  # smallest count covering the side
    cols = math.ceil(max(width - tile, 0) / (tile - overlap)) + 1
    assert len(windows) == rows * cols
    assert max(w.y1 for w in windows) == height and max(w.x1 for w in windows) == width  # last tile snapped


def test_tile_windows_reject_bad_sizes():
    with pytest.raises(ValueError):
        tile_windows(64, 64, tile_size=32, tile_overlap=32)
    with pytest.raises(ValueError):
        tile_windows(0, 64, tile_size=32, tile_overlap=8)


def test_gaussian_weights_default_symmetric_and_known_values():
    weights = gaussian_weights(64, 64)
    assert weights.dtype == torch.float64 and weights.shape == (64, 64)
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))
    assert torch.equal(weights, weights.T)
    # reference: std = 0.1 * T, edge / centre ratio about 5.5e-6 for T = 64
    assert (weights[31, 0] / weights[31, 31]).item() == pytest.approx(math.exp(-(31.5**2 - 0.5**2) / 81.92), rel=1e-12)
    assert (weights[31, 0] / weights[31, 31]).item() == pytest.approx(5.5e-6, rel=0.02)
    assert weights.max().item() == pytest.approx(math.exp(-0.25 / 81.92) ** 2 / (2 * math.pi * 0.01), rel=1e-12)


def test_gaussian_weights_faithful_rows_shifted_half_pixel():
    faithful, default = gaussian_weights(32, 24, faithful=True), gaussian_weights(32, 24)
    assert torch.equal(faithful[16], faithful[16].flip(0))  # columns still centred at (W - 1) / 2
    assert torch.equal(faithful[1:], faithful[1:].flip(0))  # rows centred at H / 2 = 16
    assert faithful[:, 12].argmax().item() == 16 and not torch.equal(faithful, default)


def test_single_tile_equals_untiled_exactly():
    x_t, lr_latent = _latents(batch=2, height=24, width=40)
    denoiser = TiledDenoiser(_tile_mean_fn, lr_latent, tile_size=64, tile_overlap=32)
    assert torch.equal(denoiser(x_t, 500), _tile_mean_fn(x_t, lr_latent, 500))
    exact_fit = TiledDenoiser(_tile_mean_fn, lr_latent[..., :24, :24], tile_size=24, tile_overlap=8)
    assert torch.equal(exact_fit(x_t[..., :24, :24], 7), _tile_mean_fn(x_t[..., :24, :24], lr_latent[..., :24, :24], 7))


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_pointwise_tile_fn_is_reproduced_by_blending(batch_size):
    x_t, lr_latent = _latents(batch=2)
    denoiser = TiledDenoiser(_pointwise_tile_fn, lr_latent, tile_size=32, tile_overlap=16, batch_size=batch_size)
    assert torch.allclose(denoiser(x_t, 999), _pointwise_tile_fn(x_t, lr_latent, 999), atol=1e-5)


def _per_sample_tile_fn(x_tiles, lr_tiles, t):
    """Tile-dependent but computed per sample, so batching must not change the result."""
    return x_tiles - x_tiles.mean(dim=(-2, -1), keepdim=True) + lr_tiles.mean(dim=(1, 2, 3), keepdim=True)


def test_blend_batches_tile_major_and_matches_per_image():
    x_t, lr_latent = _latents(batch=2)
    shapes = []

    def recording_tile_fn(x_tiles, lr_tiles, t):
        shapes.append((tuple(x_tiles.shape), tuple(lr_tiles.shape), t))
        return _per_sample_tile_fn(x_tiles, lr_tiles, t)

    batched = TiledDenoiser(recording_tile_fn, lr_latent, tile_size=32, tile_overlap=16, batch_size=3)(x_t, 42)
    assert shapes == [((6, 4, 32, 32), (6, 4, 32, 32), 42)] * 2 + [((4, 4, 32, 32), (4, 4, 32, 32), 42)]
    for b in range(2):
        single = TiledDenoiser(_per_sample_tile_fn, lr_latent[b : b + 1], tile_size=32, tile_overlap=16)
        assert torch.allclose(batched[b : b + 1], single(x_t[b : b + 1], 42), atol=1e-5)
    untiled = _per_sample_tile_fn(x_t, lr_latent, 42)
    assert not torch.allclose(batched, untiled, atol=1e-2)  # the tile function really is tile-dependent
    shared_lr = TiledDenoiser(_per_sample_tile_fn, lr_latent[:1], tile_size=32, tile_overlap=16)(x_t, 42)
    expanded = TiledDenoiser(_per_sample_tile_fn, lr_latent[:1].expand(2, -1, -1, -1), tile_size=32, tile_overlap=16)
    assert torch.equal(shared_lr, expanded(x_t, 42))  # a batch-1 condition broadcasts over x_t's batch


def test_blend_uses_gaussian_normalised_average():
    x_t, lr_latent = _latents()
    windows = tile_windows(40, 72, tile_size=32, tile_overlap=16)
    weights = gaussian_weights(32, 32)
    outputs = iter(torch.full((1, 4, 32, 32), float(k)) for k in range(len(windows)))
    blended = blend_tiles(lambda x, lr, t: next(outputs), x_t, lr_latent, 0, windows=windows, weights=weights)
    # pixel (0, 0) is covered only by tile 0; pixel (20, 36) by tiles 2, 3 (x0 = 16) and 4, 5 (x0 = 32)
    assert blended[0, 0, 0, 0].item() == 0.0
    covering = [k for k, w in enumerate(windows) if w.y0 <= 20 < w.y1 and w.x0 <= 36 < w.x1]
    assert covering == [2, 3, 4, 5]
    values = torch.tensor([weights[20 - windows[k].y0, 36 - windows[k].x0].item() for k in covering])
    expected = (values * torch.tensor(covering, dtype=torch.float64)).sum() / values.sum()
    assert blended[0, :, 20, 36] == pytest.approx([expected.item()] * 4, rel=1e-5)


def test_blend_rejects_mismatched_inputs():
    x_t, lr_latent = _latents()
    windows = tile_windows(40, 72, tile_size=32, tile_overlap=16)
    with pytest.raises(ValueError):
        blend_tiles(_pointwise_tile_fn, x_t, lr_latent[..., :32], 0, windows=windows, weights=gaussian_weights(32, 32))
    with pytest.raises(ValueError):
        blend_tiles(_pointwise_tile_fn, x_t, lr_latent, 0, windows=windows, weights=gaussian_weights(16, 16))
    with pytest.raises(ValueError):
        blend_tiles(_pointwise_tile_fn, x_t, lr_latent, 0, windows=[Window(0, 32, 0, 32)],
                    weights=gaussian_weights(32, 32))

"""RealESRGANUpscaler: tile geometry, seamless tiling, outscale and StableSR pre-cleaning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stablesr.models.rrdb import ResidualDenseBlock
from stablesr.models.rrdbnet import RRDBNet
from stablesr.pipelines.realesrgan import RealESRGANUpscaler
from stablesr.tiling.grid import padded_windows


def tiny_model(seed: int = 0) -> RRDBNet:
    """Seeded 1-block net whose outputs spread over (0, 1), so clamping hides nothing."""
    torch.manual_seed(seed)
    model = RRDBNet(num_features=8, num_blocks=1, growth_channels=4)
    model.conv_last.weight.data *= 8.0
    model.conv_last.bias.data.fill_(0.9)
    return model


def nearest_x4_model() -> RRDBNet:
    """Weights that make the net exactly a nearest-neighbour x4 upsampler for inputs >= 0."""
    model = RRDBNet(num_features=8, num_blocks=1, growth_channels=4)
    for rdb in (m for m in model.modules() if isinstance(m, ResidualDenseBlock)):
        nn.init.zeros_(rdb.conv5.weight)
        nn.init.zeros_(rdb.conv5.bias)
    for conv in (model.conv_body, model.conv_first, model.conv_up1, model.conv_up2, model.conv_hr, model.conv_last):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        if conv is not model.conv_body:  # conv_body = 0: features = conv_first(x)
            for channel in range(3):
                conv.weight.data[channel, channel, 1, 1] = 1.0
    return model


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def tile_windows(height, width, **sizes):
    """padded_windows as ((y0, y1, x0, x1) kept, (py0, py1, px0, px1) padded) tuples."""
    return [tuple((w.y0, w.y1, w.x0, w.x1) for w in pair) for pair in padded_windows(height, width, **sizes)]


def test_tile_windows_docstring_example_and_cover():
    assert tile_windows(5, 3, tile_size=4, tile_pad=1) == [((0, 4, 0, 3), (0, 5, 0, 3)), ((4, 5, 0, 3), (3, 5, 0, 3))]
    covered = torch.zeros(37, 45, dtype=torch.int64)
    for (y0, y1, x0, x1), (py0, py1, px0, px1) in tile_windows(37, 45, tile_size=16, tile_pad=5):
        covered[y0:y1, x0:x1] += 1
        assert (py0, px0) == (max(y0 - 5, 0), max(x0 - 5, 0)) and (py1, px1) == (min(y1 + 5, 37), min(x1 + 5, 45))
    assert (covered == 1).all()
    assert tile_windows(7, 9, tile_size=0, tile_pad=3) == [((0, 7, 0, 9), (0, 7, 0, 9))]


def test_tiled_equals_untiled_when_half_the_padding_covers_the_receptive_field():
    model = tiny_model()
    image = random_image(37, 45)
    whole = RealESRGANUpscaler(model, tile_size=0).upscale(image)
    radius = model.receptive_radius()
    tiled = RealESRGANUpscaler(model, tile_size=16, tile_pad=2 * radius).upscale(image)  # cross-fade uses pad/2
    assert whole.shape == (1, 3, 148, 180)
    assert ((whole > 0) & (whole < 1)).float().mean().item() > 0.99 and whole.std().item() > 0.05
    assert (tiled - whole).abs().max().item() < 1e-4
    # Without context the tile borders show: the check above is not vacuous.
    seamed = RealESRGANUpscaler(model, tile_size=16, tile_pad=0).upscale(image)
    assert (seamed - whole).abs().max().item() > 1e-3


def test_nearest_model_upscales_exactly_and_outscale_resizes():
    image = random_image(9, 11, seed=1)
    upscaler = RealESRGANUpscaler(nearest_x4_model(), tile_size=4, tile_pad=2)
    expected = F.interpolate(image, scale_factor=4, mode="nearest")
    assert (upscaler.upscale(image) - expected).abs().max().item() < 1e-5  # cross-faded tiles, exact up to rounding
    half = upscaler.upscale(image, outscale=2.0)
    assert half.shape == (1, 3, 18, 22)
    flat = torch.full((1, 3, 9, 11), 0.375)
    assert (upscaler.upscale(flat, outscale=2.5) - 0.375).abs().max().item() < 1e-5
    assert upscaler.upscale(flat, outscale=2.5).shape == (1, 3, 22, 28)  # round(22.5) = 22, round(27.5) = 28


def test_output_is_clamped_to_unit_range():
    model = nearest_x4_model()
    model.conv_last.weight.data *= 3.0
    out = RealESRGANUpscaler(model, tile_size=0).upscale(random_image(6, 6))
    assert out.max().item() == 1.0 and out.min().item() >= 0.0


def test_preclean_returns_input_size_and_is_the_bicubic_downscale_of_the_restoration():
    image = random_image(13, 10, seed=2)
    upscaler = RealESRGANUpscaler(tiny_model(seed=3), tile_size=8, tile_pad=20)
    cleaned = upscaler.preclean(image)
    assert cleaned.shape == image.shape
    expected = F.interpolate(upscaler.upscale(image), size=(13, 10), mode="bicubic", antialias=True).clamp(0, 1)
    assert (cleaned - expected).abs().max().item() < 1e-5
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert (RealESRGANUpscaler(nearest_x4_model()).preclean(flat) - 0.5).abs().max().item() < 1e-5


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.rand(1, 4, 8, 8), torch.rand(1, 1, 8, 8)])
def test_bad_images_are_rejected(bad):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        RealESRGANUpscaler(tiny_model()).upscale(bad)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="tile_size"):
        RealESRGANUpscaler(tiny_model(), tile_size=-1)
    with pytest.raises(ValueError, match="outscale"):
        RealESRGANUpscaler(tiny_model()).upscale(random_image(4, 4), outscale=0)


def test_cross_fade_weights_of_neighbours_sum_to_one_and_skip_the_outer_half_pad():
    from stablesr.tiling.weights import linear_fade

    end = linear_fade(8, 4, fade_in=False, fade_out=True)
    start = linear_fade(8, 4, fade_in=True, fade_out=False)
    assert linear_fade(4, 2, fade_in=True, fade_out=False).tolist() == [0, 0.25, 0.75, 1]  # the docstring example
    assert end[-2:].eq(0).all() and start[:2].eq(0).all()  # the outer pad/2 carries no weight
    assert torch.equal(end + start, torch.ones(8, dtype=torch.float64))


def test_streamed_pictures_equal_the_float_path_and_tiles_follow_the_budget(capsys):
    import numpy as np

    from stablesr.image_processor import tensor_to_pil
    from stablesr.tiling.budget import Budget, MemoryBudgetError

    image_u8 = (random_image(37, 45, seed=4) * 255).round().to(torch.uint8)
    unit = image_u8.float() / 255
    upscaler = RealESRGANUpscaler(tiny_model(), tile_size=16, tile_pad=4)
    for outscale, bit_depth in ((4.0, 8), (4.0, 16), (2.0, 8), (3.3, 16), (1.0, 8), (5.0, 8)):
        expected = np.asarray(tensor_to_pil(upscaler.upscale(unit, outscale=outscale), bit_depth=bit_depth))
        picture = upscaler.upscale_to_array(image_u8, outscale=outscale, bit_depth=bit_depth, progress=True)
        assert picture.dtype == expected.dtype and picture.shape == expected.shape, (outscale, bit_depth)
        difference = np.abs(picture.astype(np.int64) - expected)
        if outscale == 4.0:  # the network's own scale: bitwise
            assert difference.max() == 0, bit_depth
        else:  # streamed resize: the same weights, summed in another order
            assert difference.max() <= 1 and (difference == 0).mean() > 0.99, (outscale, bit_depth)
    assert "Real-ESRGAN tiles" in capsys.readouterr().err  # tile progress
    assert np.array_equal(upscaler.upscale_to_array(unit), upscaler.upscale_to_array(image_u8))  # float input too

    upscaler = RealESRGANUpscaler(tiny_model(), tile_pad=4)  # the default tile (512) caps the choice
    untiled_cost = upscaler.tile_cost(0, 37, 45)
    assert upscaler.choose_tile_size(37, 45, Budget(int(untiled_cost), None, 0)) == 0  # whole image when it fits
    tile = upscaler.choose_tile_size(37, 45, Budget(int(upscaler.tile_cost(32, 37, 45)), None, 0))
    assert tile == 32 and upscaler.tile_cost(tile, 37, 45) < untiled_cost
    with pytest.raises(MemoryBudgetError, match="Real-ESRGAN on 45x37 needs"):
        upscaler.choose_tile_size(37, 45, Budget(1000, None, 0))

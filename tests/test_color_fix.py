"""Colour fixes: exact identities of the wavelet decomposition and AdaIN statistics, any channel count."""

import pytest
import torch

from conftest import FLOAT32_REL
from stablesr.color_fix import (
    apply_color_fix,
    color_fix_adain,
    color_fix_wavelet,
    wavelet_blur,
    wavelet_decompose,
)


def _images(channels=3, height=24, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sr = torch.rand(2, channels, height, width, generator=generator) * 2 - 1
    lr = (0.6 * torch.tanh(torch.randn(2, channels, height, width, generator=generator)) + 0.2).clamp(-1, 1)
    return sr, lr


@pytest.mark.parametrize(("channels", "height", "width"), [(3, 24, 40), (4, 17, 9), (1, 5, 7)])
def test_wavelet_high_plus_low_reconstructs(channels, height, width):
    image, _ = _images(channels, height, width)
    high, low = wavelet_decompose(image)
    assert torch.allclose(high + low, image, atol=1e-6)
    assert low.std() < image.std() and high.shape == image.shape


def test_wavelet_blur_kernel_and_constants():
    constant = torch.full((1, 2, 9, 11), 0.375)
    assert torch.equal(wavelet_blur(constant, 4), constant)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 16.0
    blurred = wavelet_blur(impulse, 2)  # binomial [1 2 1] x [1 2 1] at dilation 2
    expected = torch.zeros(9, 9)
    for dy, wy in ((-2, 1), (0, 2), (2, 1)):
        for dx, wx in ((-2, 1), (0, 2), (2, 1)):
            expected[4 + dy, 4 + dx] = wy * wx
    assert torch.equal(blurred[0, 0], expected)


def test_wavelet_fix_keeps_sr_detail_and_takes_lr_colour():
    sr, _ = _images()
    assert torch.allclose(color_fix_wavelet(sr, sr), sr, atol=1e-6)
    shift = torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)
    assert torch.allclose(color_fix_wavelet(sr, sr + shift), sr + shift, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_adain_matches_lr_statistics(channels):
    sr, lr = _images(channels)
    fixed = color_fix_adain(sr, lr).flatten(2)  # (B, C, H, W) -> (B, C, HW)
    sr_var, lr_var = sr.flatten(2).var(2), lr.flatten(2).var(2)
    assert torch.allclose(fixed.mean(2), lr.flatten(2).mean(2), atol=1e-5)
    # std = sqrt(unbiased var + 1e-5): the output variance is lr_var' * sr_var / sr_var'
    expected_var = (lr_var + 1e-5) * sr_var / (sr_var + 1e-5)
    assert torch.allclose(fixed.var(2), expected_var, rtol=FLOAT32_REL)


def test_adain_is_identity_on_itself_up_to_eps():
    sr, _ = _images()
    assert torch.allclose(color_fix_adain(sr, sr), sr, atol=1e-6)


def test_apply_color_fix_dispatch_and_errors():
    sr, lr = _images()
    assert apply_color_fix(sr, lr, method="none") is sr
    assert torch.equal(apply_color_fix(sr, lr, method="adain"), color_fix_adain(sr, lr))
    assert torch.equal(apply_color_fix(sr, lr, method="wavelet"), color_fix_wavelet(sr, lr))
    with pytest.raises(ValueError):
        apply_color_fix(sr, lr, method="histogram")
    with pytest.raises(ValueError):
        apply_color_fix(sr, lr[..., :20], method="adain")

"""Image operations: convolution orientation, noise statistics, real JPEG, USM, quantisation."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from stablesr.data.ops import (
    filter2d,
    gaussian_noise,
    jpeg_compress,
    poisson_noise,
    quantize_8bit,
    resize,
    to_luma,
    upsample_to,
    usm_sharpen,
)


def _textured(height=64, width=64, seed=0) -> torch.Tensor:
    """(1, 3, H, W): smooth gradients, a square and mild noise, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2])[None] * 0.8 + 0.1
    image[..., height // 4 : height // 2, width // 4 : width // 2] = torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1)
    return torch.clamp(image + 0.03 * torch.randn(image.shape, generator=generator), 0, 1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


def test_filter2d_is_a_true_convolution_with_reflect_borders():
    image = _textured(20, 24)
    kernels = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(3))  # asymmetric on purpose
    out = filter2d(image, kernels)
    for channel in range(3):
        expected = ndimage.convolve(image[0, channel].double().numpy(), kernels[0].double().numpy(), mode="mirror")
        assert np.allclose(out[0, channel].numpy(), expected, atol=1e-4)


def test_filter2d_uses_each_images_own_kernel():
    images = torch.cat([_textured(seed=1), _textured(seed=2)])
    kernels = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0))
    batched = filter2d(images, kernels)
    for i in range(2):
        assert torch.allclose(batched[i : i + 1], filter2d(images[i : i + 1], kernels[i : i + 1]), atol=1e-5)


def test_gaussian_noise_has_requested_std_and_gray_is_shared():
    flat = torch.full((2, 3, 256, 256), 0.5)
    noise = gaussian_noise(flat, sigmas=[10.0, 25.0], gray=[False, True], seeds=[1, 2])
    # sampling error of a std over n = 196608 draws is std / sqrt(2n) ~ 0.16 %
    assert noise[0].std().item() * 255 == pytest.approx(10.0, rel=0.01)
    assert noise[1].std().item() * 255 == pytest.approx(25.0, rel=0.01)
    assert abs(noise[0].mean().item()) < 3 * 10 / 255 / 443
    assert torch.equal(noise[1, 0], noise[1, 1]) and torch.equal(noise[1, 0], noise[1, 2])
    correlation = torch.corrcoef(noise[0].reshape(3, -1))
    assert (correlation - torch.eye(3)).abs().max() < 0.02
    again = gaussian_noise(flat, sigmas=[10.0, 25.0], gray=[False, True], seeds=[1, 2])
    assert torch.equal(noise, again)


def test_poisson_noise_variance_matches_shot_noise():
    # 256 distinct levels -> vals = 256, so Var[noise] = x / 256 * scale^2 at a pixel of value x
    ramp = (torch.arange(256.0) / 255).repeat(3, 256, 1)[None]  # (1, 3, 256, 256)
    scale = 2.0
    noise = poisson_noise(ramp, scales=[scale], gray=[False], seeds=[7])
    expected_var = ramp.mean().item() / 256 * scale**2
    assert noise.var().item() == pytest.approx(expected_var, rel=0.02)
    assert abs(noise.mean().item()) < 4 * (expected_var / noise.numel()) ** 0.5
    gray = poisson_noise(ramp, scales=[scale], gray=[True], seeds=[7])
    assert torch.equal(gray[0, 0], gray[0, 2])


def test_poisson_noise_of_a_flat_image_uses_one_level():
    # one distinct value -> vals = 2^0 = 1: noise = Poisson(x) - x, variance x
    flat = torch.full((1, 3, 128, 128), 100 / 255)
    noise = poisson_noise(flat, scales=[1.0], gray=[False], seeds=[0])
    assert noise.var().item() == pytest.approx(100 / 255, rel=0.03)


def test_jpeg_is_pillows_real_encoder_and_quality_raises_psnr():
    image = _textured()
    pixels = quantize_8bit(image)[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=40, subsampling=2)
    expected = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1).float() / 255
    out = jpeg_compress(image, qualities=[40])
    assert torch.equal(out[0], expected)
    assert torch.equal(out * 255, (out * 255).round())  # 8 bits per channel
    psnrs = [_psnr(jpeg_compress(image, qualities=[q]), image) for q in (10, 30, 50, 70, 90, 100)]
    assert psnrs == sorted(psnrs) and psnrs[0] + 3 < psnrs[-1]  # 4:2:0 chroma caps the top end


def test_jpeg_batch_uses_each_quality():
    images = torch.cat([_textured(), _textured()])
    out = jpeg_compress(images, qualities=[20, 95])
    assert _psnr(out[0], images[0]) < _psnr(out[1], images[1])


def test_usm_keeps_flat_regions_and_sharpens_edges():
    flat = torch.full((1, 3, 64, 64), 0.4)
    assert torch.allclose(usm_sharpen(flat), flat, atol=1e-6)
    step = torch.full((1, 3, 64, 64), 0.3)
    step[..., 32:] = 0.7
    sharp = usm_sharpen(step)
    assert sharp[0, 0, 10, 33] > 0.7 and sharp[0, 0, 10, 30] < 0.3  # overshoot on both sides of the edge
    assert sharp.min() >= 0 and sharp.max() <= 1
    assert torch.allclose(sharp[..., :, :5], step[..., :, :5], atol=1e-6)  # far from the edge: untouched


def test_resize_quantize_luma_and_upsample():
    image = _textured(40, 60)
    for mode in ("area", "bilinear", "bicubic", "nearest"):
        assert resize(image, size=(13, 27), mode=mode).shape == (1, 3, 13, 27)
    assert torch.allclose(resize(image, size=(40, 60), mode="area"), image)
    q = quantize_8bit(torch.tensor([-0.2, 0.5 / 255, 0.3, 1.7]))
    assert torch.equal(q * 255, torch.tensor([0.0, 0.0, 76.0, 255.0]))  # round half to even at 0.5
    assert torch.allclose(to_luma(torch.ones(1, 3, 2, 2)), torch.ones(1, 1, 2, 2))
    up = upsample_to(image[..., ::2, ::2], image)
    assert up.shape == image.shape and up.min() >= 0 and up.max() <= 1

"""Batched image operations of the degradation pipelines: filtering, resize, noise, JPEG, USM.

Real-ESRGAN (Wang et al., ICCVW 2021), https://arxiv.org/abs/2107.10833, section 3.
Images are (B, 3, H, W) float tensors in [0, 1] on any device. Per-image parameters are
sequences of length B; every random draw uses a per-image `torch.Generator` seeded from the
image's record, on the image's device, so an LR image is reproduced exactly from its record
on the same kind of device.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ResizeMode = Literal["area", "bilinear", "bicubic", "nearest"]
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve image b with kernel b, reflect-padded: (B, C, H, W), (B, k, k) -> (B, C, H, W)."""
    batch, channels, height, width = images.shape
    size = kernels.shape[-1]
    padded = F.pad(images, (size // 2,) * 4, mode="reflect")
    flat = padded.reshape(1, batch * channels, *padded.shape[-2:])  # (B, C, H', W') -> (1, BC, H', W')
    weight = kernels.to(images).repeat_interleave(channels, dim=0).unsqueeze(1)  # (B, k, k) -> (BC, 1, k, k)
    out = F.conv2d(flat, weight.flip(-2, -1), groups=batch * channels)
    return out.reshape(batch, channels, height, width)  # (1, BC, H, W) -> (B, C, H, W)


def resize(images: torch.Tensor, *, size: tuple[int, int], mode: ResizeMode, antialias: bool = False) -> torch.Tensor:
    """Resize (B, C, H, W) -> (B, C, size[0], size[1]); `align_corners=False` for the linear modes."""
    if mode in ("area", "nearest"):
        return F.interpolate(images, size=size, mode=mode)
    return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=antialias)


def to_luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma: (B, 3, H, W) -> (B, 1, H, W)."""
    weights = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid and clamp: round(255 x) / 255 in [0, 1]."""
    return torch.clamp((images * 255.0).round(), 0, 255) / 255.0


def _device_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def gaussian_noise(
    images: torch.Tensor, *, sigmas: Sequence[float], gray: Sequence[bool], seeds: Sequence[int]
) -> torch.Tensor:
    """Zero-mean Gaussian noise with std sigma/255 per image; gray noise is shared by the 3 channels.

    Returns the noise only, (B, 3, H, W); the caller adds it.
    """
    _, channels, height, width = images.shape
    noises = []
    for sigma, is_gray, seed in zip(sigmas, gray, seeds):
        generator = _device_generator(seed, images.device)
        shape = (1 if is_gray else channels, height, width)
        noise = torch.randn(shape, generator=generator, device=images.device, dtype=images.dtype)
        noises.append(noise.expand(channels, height, width) * (sigma / 255.0))
    return torch.stack(noises)


def _poisson_one(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shot noise of one (c, H, W) image quantised to 8 bits, with `vals` = 2^ceil(log2(#levels))."""
    codes = torch.clamp((image * 255.0).round(), 0, 255)
    distinct = int(torch.bincount(codes.long().flatten(), minlength=256).count_nonzero())
    levels = 2 ** math.ceil(math.log2(distinct))
    quantised = codes / 255.0
    return torch.poisson(quantised * levels, generator=generator) / levels - quantised


def poisson_noise(
    images: torch.Tensor, *, scales: Sequence[float], gray: Sequence[bool], seeds: Sequence[int]
) -> torch.Tensor:
    """Poisson (shot) noise times `scale` per image; gray noise is computed on the BT.601 luma.

    Returns the noise only, (B, 3, H, W); the caller adds it.
    """
    channels, height, width = images.shape[1:]
    noises = []
    for image, scale, is_gray, seed in zip(images, scales, gray, seeds):
        generator = _device_generator(seed, images.device)
        source = to_luma(image[None])[0] if is_gray else image
        noises.append(_poisson_one(source, generator).expand(channels, height, width) * scale)
    return torch.stack(noises)


def jpeg_compress(images: torch.Tensor, *, qualities: Sequence[int]) -> torch.Tensor:
    """Real JPEG round trip through Pillow's libjpeg encoder (4:2:0 chroma) at an integer quality.

    Like a real JPEG file the result is quantised to 8 bits per channel. Runs on the CPU and
    returns a tensor on the input's device: (B, 3, H, W) -> (B, 3, H, W).
    """
    pixels = quantize_8bit(images).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array, quality in zip(pixels, qualities):  # array: (H, W, 3) uint8
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality), subsampling=2)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    return out.to(device=images.device, dtype=images.dtype) / 255.0


def gaussian_kernel_1d(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd `size`, float64; sigma <= 0 uses OpenCV's rule 0.3((size-1)/2 - 1) + 0.8."""
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(axis**2) / (2 * sigma**2))
    return weights / weights.sum()


def blur_separable(images: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Reflect-padded convolution with the outer product of a symmetric 1-D kernel: (B, C, H, W) -> same."""
    channels, size = images.shape[1], kernel_1d.shape[0]
    weight = kernel_1d.to(images).view(1, 1, 1, size).expand(channels, 1, 1, size)  # (k,) -> (C, 1, 1, k)
    padded = F.pad(images, (size // 2,) * 4, mode="reflect")
    rows = F.conv2d(padded, weight, groups=channels)
    return F.conv2d(rows, weight.transpose(-1, -2), groups=channels)


def usm_sharpen(
    images: torch.Tensor, *, radius: int = 50, sigma: float = 0.0, weight: float = 0.5, threshold: float = 10.0
) -> torch.Tensor:
    """Unsharp masking as Real-ESRGAN sharpens its GT: (B, C, H, W) -> (B, C, H, W).

    blur = G * x (Gaussian of size radius + 1, sigma 8 by default); residual = x - blur;
    sharp = clamp(x + weight * residual); the result blends sharp and x with the blurred mask
    |residual| * 255 > threshold, so flat regions stay untouched.
    """
    size = radius + 1 if radius % 2 == 0 else radius
    kernel_1d = gaussian_kernel_1d(size, sigma)
    residual = images - blur_separable(images, kernel_1d)
    mask = (residual.abs() * 255 > threshold).to(images.dtype)
    soft_mask = blur_separable(mask, kernel_1d)
    sharp = torch.clamp(images + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * images


@dataclass(frozen=True)
class DegradedBatch:
    """Output of every degradation pipeline.

    gt: (B, 3, H, W) target (USM-sharpened when the preset says so), lr: (B, 3, H/s, W/s) on the
    8-bit grid, lr_up: (B, 3, H, W) the LR bicubic-upsampled back to the GT size and clamped.
    """

    gt: torch.Tensor
    lr: torch.Tensor
    lr_up: torch.Tensor


def upsample_to(lr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Bicubic (align_corners=False) resize of the LR to the GT size, clamped to [0, 1]."""
    return torch.clamp(resize(lr, size=tuple(gt.shape[-2:]), mode="bicubic"), 0, 1)

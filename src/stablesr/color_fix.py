"""Colour correction of the SR output against the (upsampled) LR image: AdaIN and wavelet.

StableSR (Wang et al. 2024, https://arxiv.org/abs/2305.07015, Sec. 3.5) fixes colour shifts in pixel
space after decoding. AdaIN (Huang & Belongie 2017, https://arxiv.org/abs/1703.06868) matches
per-channel mean and std; the wavelet fix keeps the SR image's high frequencies and takes the
low-frequency residual from the LR image (a 5-level a-trous decomposition).

Inputs are (B, C, H, W) images in [-1, 1]; `sr` and `lr` have the same shape. Any channel count.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5
_BLUR_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16  # 3x3 binomial


def _mean_std(image: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, per channel mean and sqrt(unbiased var + eps), each (B, C, 1, 1)."""
    flat = image.flatten(2)  # (B, C, H, W) -> (B, C, HW)
    mean = flat.mean(dim=2)[..., None, None]
    std = (flat.var(dim=2) + ADAIN_EPS).sqrt()[..., None, None]
    return mean, std


def color_fix_adain(sr: Tensor, lr: Tensor) -> Tensor:
    """AdaIN: (sr - mean_sr) / std_sr * std_lr + mean_lr, per image and channel. (B, C, H, W) -> same."""
    sr_mean, sr_std = _mean_std(sr)
    lr_mean, lr_std = _mean_std(lr)
    return (sr - sr_mean) / sr_std * lr_std + lr_mean


def wavelet_blur(image: Tensor, radius: int) -> Tensor:
    """Depthwise 3x3 binomial blur with dilation `radius` after replicate padding. (B, C, H, W) -> same."""
    channels = image.shape[1]
    kernel = _BLUR_KERNEL.to(device=image.device, dtype=image.dtype).expand(channels, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_decompose(image: Tensor, *, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """A-trous decomposition with radii 1, 2, 4, ...: returns (high, low), high + low == image."""
    high = torch.zeros_like(image)
    low = image
    for level in range(levels):
        blurred = wavelet_blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def color_fix_wavelet(sr: Tensor, lr: Tensor) -> Tensor:
    """High frequencies of `sr` plus the low-frequency residual of `lr`. (B, C, H, W) -> same."""
    sr_high, _ = wavelet_decompose(sr)
    _, lr_low = wavelet_decompose(lr)
    return sr_high + lr_low


def _no_color_fix(sr: Tensor, lr: Tensor) -> Tensor:
    return sr


_METHODS = {"adain": color_fix_adain, "wavelet": color_fix_wavelet, "none": _no_color_fix}


def apply_color_fix(sr: Tensor, lr: Tensor, *, method: Literal["adain", "wavelet", "none"]) -> Tensor:
    """Colour-correct `sr` (B, C, H, W) against `lr` of the same shape with the named method."""
    if method not in _METHODS:
        raise ValueError(f"color fix method must be one of {sorted(_METHODS)}, got {method!r}")
    if sr.ndim != 4 or sr.shape != lr.shape:
        raise ValueError(f"sr and lr must be (B, C, H, W) of one shape, got {tuple(sr.shape)}, {tuple(lr.shape)}")
    return _METHODS[method](sr, lr)

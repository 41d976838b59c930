"""Real-ESRGAN's second-order degradation: settings, sampled-parameter records and the batched pipeline.

Real-ESRGAN (Wang et al., ICCVW 2021), https://arxiv.org/abs/2107.10833, section 3.1-3.2.
Order of operations, as in the original training code:

    [USM sharpen GT] -> blur(k1) -> resize1 -> noise1 -> JPEG(q1)
    -> [blur(k2) with second_blur_prob] -> resize2 (relative to H/s) -> noise2
    -> 50/50: [resize to H/s -> sinc -> JPEG(q2)] or [JPEG(q2) -> resize to H/s -> sinc]
    -> round to 8 bits; with no_degradation_prob the LR is the GT itself (StableSR).

As in the original, the resize draws, the Gaussian-vs-Poisson choice, whether the second blur
happens and the final order are drawn once per batch; kernels, noise levels, gray flags, noise
seeds and JPEG qualities are drawn per image. Every image's record holds all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from stablesr.data.draws import draw_bernoulli, draw_choice, draw_int, draw_seed, draw_uniform
from stablesr.data.kernels import (
    BlurSettings,
    KernelParams,
    kernel_from_params,
    pad_kernel,
    sample_final_sinc,
    sample_kernel,
)
from stablesr.data.ops import (
    DegradedBatch,
    ResizeMode,
    filter2d,
    gaussian_noise,
    jpeg_compress,
    poisson_noise,
    quantize_8bit,
    resize,
    upsample_to,
    usm_sharpen,
)

MIN_FILTER_SIDE = 11  # reflect padding of a 21 x 21 kernel needs at least 11 pixels


@dataclass(frozen=True)
class ResizeSettings:
    """probs: (up, down, keep); up draws U[1, max], down U[min, 1]; the mode is uniform over `modes`."""

    probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    scale_range: tuple[float, float] = (0.15, 1.5)
    modes: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class NoiseSettings:
    """Gaussian (sigma on the 0-255 scale) with `gaussian_prob`, else Poisson; gray with `gray_prob`."""

    gaussian_prob: float = 0.5
    sigma_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_prob: float = 0.4


@dataclass(frozen=True)
class RealESRGANSettings:
    """All options of the second-order pipeline; defaults are Real-ESRGAN x4plus."""

    scale: int = 4
    usm_gt: bool = True
    no_degradation_prob: float = 0.0
    blur1: BlurSettings = field(default_factory=BlurSettings)
    resize1: ResizeSettings = field(default_factory=ResizeSettings)
    noise1: NoiseSettings = field(default_factory=NoiseSettings)
    jpeg1_range: tuple[int, int] = (30, 95)
    second_blur_prob: float = 0.8
    blur2: BlurSettings = field(default_factory=lambda: BlurSettings(sigma_range=(0.2, 1.5)))
    resize2: ResizeSettings = field(
        default_factory=lambda: ResizeSettings(probs=(0.3, 0.4, 0.3), scale_range=(0.3, 1.2))
    )
    noise2: NoiseSettings = field(
        default_factory=lambda: NoiseSettings(sigma_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5))
    )
    final_sinc_prob: float = 0.8
    jpeg2_range: tuple[int, int] = (30, 95)


@dataclass(frozen=True)
class ResizeParams:
    direction: Literal["up", "down", "keep"]
    scale: float
    mode: ResizeMode


@dataclass(frozen=True)
class NoiseParams:
    """strength: sigma (0-255 scale) for Gaussian, the multiplier for Poisson; seed: the noise generator's."""

    kind: Literal["gaussian", "poisson"]
    strength: float
    gray: bool
    seed: int


@dataclass(frozen=True)
class RealESRGANParams:
    """The record of one degraded image; `apply_realesrgan` rebuilds its LR exactly from it."""

    scale: int
    usm_gt: bool
    degraded: bool
    kernel1: KernelParams
    resize1: ResizeParams
    noise1: NoiseParams
    jpeg1_quality: int
    kernel2: KernelParams | None
    resize2: ResizeParams
    noise2: NoiseParams
    final_order: Literal["resize_first", "jpeg_first"]
    final_resize_mode: ResizeMode
    final_kernel: KernelParams
    jpeg2_quality: int
    pipeline: Literal["realesrgan"] = "realesrgan"


def _sample_resize(settings: ResizeSettings, generator: torch.Generator) -> ResizeParams:
    direction = draw_choice(generator, ("up", "down", "keep"), settings.probs)
    low, high = settings.scale_range
    scale = {"up": lambda: draw_uniform(generator, 1.0, high), "down": lambda: draw_uniform(generator, low, 1.0),
             "keep": lambda: 1.0}[direction]()
    return ResizeParams(direction=direction, scale=scale, mode=draw_choice(generator, settings.modes))


def _sample_noise(settings: NoiseSettings, kind: str, generator: torch.Generator) -> NoiseParams:
    value_range = settings.sigma_range if kind == "gaussian" else settings.poisson_scale_range
    strength = draw_uniform(generator, *value_range)
    gray = draw_bernoulli(generator, settings.gray_prob)
    return NoiseParams(kind=kind, strength=strength, gray=gray, seed=draw_seed(generator))


def _sample_shared(settings: RealESRGANSettings, generator: torch.Generator) -> dict:
    """The draws Real-ESRGAN makes once per batch."""
    return {
        "resize1": _sample_resize(settings.resize1, generator),
        "noise1_kind": "gaussian" if draw_bernoulli(generator, settings.noise1.gaussian_prob) else "poisson",
        "second_blur": draw_bernoulli(generator, settings.second_blur_prob),
        "resize2": _sample_resize(settings.resize2, generator),
        "noise2_kind": "gaussian" if draw_bernoulli(generator, settings.noise2.gaussian_prob) else "poisson",
        "final_order": "resize_first" if draw_bernoulli(generator, 0.5) else "jpeg_first",
        "final_resize_mode": draw_choice(generator, settings.resize2.modes),
    }


def _sample_image(settings: RealESRGANSettings, shared: dict, generator: torch.Generator) -> RealESRGANParams:
    """The per-image draws (kernels as the dataset side draws them, then noise and JPEG)."""
    kernel1 = sample_kernel(settings.blur1, generator=generator)
    kernel2 = sample_kernel(settings.blur2, generator=generator) if shared["second_blur"] else None
    final_kernel = sample_final_sinc(
        final_sinc_prob=settings.final_sinc_prob, kernel_sizes=settings.blur2.kernel_sizes, generator=generator
    )
    return RealESRGANParams(
        scale=settings.scale,
        usm_gt=settings.usm_gt,
        degraded=not draw_bernoulli(generator, settings.no_degradation_prob),
        kernel1=kernel1,
        resize1=shared["resize1"],
        noise1=_sample_noise(settings.noise1, shared["noise1_kind"], generator),
        jpeg1_quality=draw_int(generator, *settings.jpeg1_range),
        kernel2=kernel2,
        resize2=shared["resize2"],
        noise2=_sample_noise(settings.noise2, shared["noise2_kind"], generator),
        final_order=shared["final_order"],
        final_resize_mode=shared["final_resize_mode"],
        final_kernel=final_kernel,
        jpeg2_quality=draw_int(generator, *settings.jpeg2_range),
    )


def sample_realesrgan_params(
    settings: RealESRGANSettings, *, batch_size: int, generator: torch.Generator
) -> list[RealESRGANParams]:
    """Draw the records of one batch: shared draws first, then each image's own."""
    shared = _sample_shared(settings, generator)
    return [_sample_image(settings, shared, generator) for _ in range(batch_size)]


def _batch_key(params: RealESRGANParams) -> tuple:
    return (params.scale, params.usm_gt, params.resize1, params.noise1.kind, params.kernel2 is None,
            params.resize2, params.noise2.kind, params.final_order, params.final_resize_mode)


def _check_batch(gt: torch.Tensor, params: Sequence[RealESRGANParams]) -> None:
    if gt.ndim != 4 or gt.shape[1] != 3 or len(params) != gt.shape[0]:
        raise ValueError(f"expected gt (B, 3, H, W) with one record per image, got {tuple(gt.shape)} and {len(params)}")
    if len({_batch_key(p) for p in params}) != 1:
        raise ValueError("records of one batch must share resize, noise kind, second blur and final order draws")
    first, side = params[0], min(gt.shape[-2:])
    if min(int(side * first.resize1.scale), side // first.scale) < MIN_FILTER_SIDE or side <= 25:
        raise ValueError(f"GT side {side} is too small for scale {first.scale} and resize {first.resize1.scale:.3f}")


def _kernels(kernels: Sequence[KernelParams], device: torch.device) -> torch.Tensor:
    """Records -> (B, k, k) kernels zero-padded to the largest size k in the batch (at most 21)."""
    size = max(k.size for k in kernels)
    return torch.stack([pad_kernel(kernel_from_params(k), size) for k in kernels]).to(device)


def _add_noise(images: torch.Tensor, noises: Sequence[NoiseParams]) -> torch.Tensor:
    make = gaussian_noise if noises[0].kind == "gaussian" else poisson_noise
    strengths = {"sigmas" if noises[0].kind == "gaussian" else "scales": [n.strength for n in noises]}
    noise = make(images, gray=[n.gray for n in noises], seeds=[n.seed for n in noises], **strengths)
    return images + noise


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return int(height * scale), int(width * scale)


def _second_order(source: torch.Tensor, params: Sequence[RealESRGANParams]) -> torch.Tensor:
    """The degradation proper: (B, 3, H, W) -> (B, 3, H/s, W/s), before 8-bit rounding."""
    first, (height, width) = params[0], source.shape[-2:]
    x = filter2d(source, _kernels([p.kernel1 for p in params], source.device))
    x = resize(x, size=_scaled_size(height, width, first.resize1.scale), mode=first.resize1.mode)
    x = _add_noise(x, [p.noise1 for p in params])
    x = jpeg_compress(x, qualities=[p.jpeg1_quality for p in params])
    if first.kernel2 is not None:
        x = filter2d(x, _kernels([p.kernel2 for p in params], source.device))
    lr_size = (height // first.scale, width // first.scale)
    x = resize(x, size=_scaled_size(*lr_size, first.resize2.scale), mode=first.resize2.mode)
    x = _add_noise(x, [p.noise2 for p in params])
    final_kernels = _kernels([p.final_kernel for p in params], source.device)
    qualities = [p.jpeg2_quality for p in params]
    if first.final_order == "resize_first":
        x = filter2d(resize(x, size=lr_size, mode=first.final_resize_mode), final_kernels)
        return jpeg_compress(x, qualities=qualities)
    x = jpeg_compress(x, qualities=qualities)
    return filter2d(resize(x, size=lr_size, mode=first.final_resize_mode), final_kernels)


def apply_realesrgan(gt: torch.Tensor, params: Sequence[RealESRGANParams]) -> DegradedBatch:
    """Degrade a batch with its records: gt (B, 3, H, W) in [0, 1] -> DegradedBatch (LR of H//s x W//s)."""
    _check_batch(gt, params)
    source = usm_sharpen(gt) if params[0].usm_gt else gt
    lr = quantize_8bit(_second_order(source, params))
    lr_up = upsample_to(lr, source)
    kept = torch.tensor([not p.degraded for p in params], device=gt.device).view(-1, 1, 1, 1)
    if kept.any():  # StableSR's no_degradation_prob: the LR is the GT itself
        lr = torch.where(kept, quantize_8bit(resize(source, size=lr.shape[-2:], mode="area")), lr)
        lr_up = torch.where(kept, source, lr_up)
    return DegradedBatch(gt=source, lr=lr, lr_up=lr_up)

"""BSRGAN's random-shuffle degradation model, per image, in torch.

Zhang et al., "Designing a Practical Degradation Model for Deep Blind Image Super-Resolution",
ICCV 2021, https://arxiv.org/abs/2103.14006, section 3.
For scale 4, with `scale2_prob` the image is first halved (and the rest works at scale 2). Then
two blurs, a random downsampling, a final downsampling to H/s, Gaussian noise and a JPEG step
(with `jpeg_prob`) run in a random order in which the random downsampling precedes the final
one; a last JPEG always follows. The camera-sensor (reverse-ISP) noise is left out: the released
model ran without an ISP model as well.

Deviation, on purpose: the channel-correlated noise uses the covariance L^2 U^T D U itself
(positive semi-definite) rather than its element-wise absolute value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from stablesr.data.draws import draw_bernoulli, draw_choice, draw_int, draw_seed, draw_uniform
from stablesr.data.kernels import KernelParams, kernel_from_params
from stablesr.data.ops import DegradedBatch, ResizeMode, filter2d, jpeg_compress, quantize_8bit, resize, upsample_to

RESIZE_MODES: tuple[ResizeMode, ...] = ("bilinear", "bicubic", "area")


@dataclass(frozen=True)
class BSRGANSettings:
    """Options of the BSRGAN model; defaults follow the paper's released degradation."""

    scale: int = 4
    scale2_prob: float = 0.25
    blur_kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21, 23, 25)
    random_resize_prob: float = 0.75  # else: shifted Gaussian blur + nearest subsampling
    noise_level_range: tuple[int, int] = (2, 25)
    jpeg_prob: float = 0.9
    jpeg_range: tuple[int, int] = (30, 95)


@dataclass(frozen=True)
class BlurOp:
    kernel: KernelParams
    op: Literal["blur"] = "blur"


@dataclass(frozen=True)
class ResizeOp:
    height: int
    width: int
    mode: ResizeMode
    op: Literal["resize"] = "resize"


@dataclass(frozen=True)
class StridedBlurOp:
    """Blur with a kernel centred on the middle of each stride x stride block, then keep every stride-th pixel."""

    kernel: KernelParams
    stride: int
    op: Literal["strided_blur"] = "strided_blur"


@dataclass(frozen=True)
class NoiseOp:
    kind: Literal["color", "gray", "correlated"]
    level: int  # sigma on the 0-255 scale
    seed: int
    op: Literal["noise"] = "noise"


@dataclass(frozen=True)
class JpegOp:
    quality: int
    op: Literal["jpeg"] = "jpeg"


@dataclass(frozen=True)
class BSRGANParams:
    """The record of one image: its operations in the order they run."""

    scale: int
    ops: tuple[BlurOp | ResizeOp | StridedBlurOp | NoiseOp | JpegOp, ...]
    pipeline: Literal["bsrgan"] = "bsrgan"


def _sample_blur(scale: int, settings: BSRGANSettings, generator: torch.Generator) -> BlurOp:
    """Anisotropic (eigenvalues U(0, 4+s], angle U[0, pi)) or isotropic (sigma U(0, 2+0.2s]) Gaussian."""
    if draw_bernoulli(generator, 0.5):
        variances = [(4.0 + scale) * (1 - draw_uniform(generator, 0, 1)) for _ in range(2)]
        rotation = draw_uniform(generator, 0, math.pi)
        size = draw_choice(generator, settings.blur_kernel_sizes)
        sigma_x, sigma_y = math.sqrt(variances[0]), math.sqrt(variances[1])
        return BlurOp(KernelParams(kind="aniso", size=size, sigma_x=sigma_x, sigma_y=sigma_y, rotation=rotation))
    size = draw_choice(generator, settings.blur_kernel_sizes)
    sigma = (2.0 + 0.2 * scale) * (1 - draw_uniform(generator, 0, 1))
    return BlurOp(KernelParams(kind="iso", size=size, sigma_x=sigma, sigma_y=sigma))


def _sample_random_downsample(height: int, width: int, scale: int, settings: BSRGANSettings, generator):
    """Resize by 1/U[1, 2s] with a random mode, or a shifted Gaussian blur (sigma U[0.1, 0.6s]) + subsampling by s."""
    if draw_bernoulli(generator, settings.random_resize_prob):
        factor = draw_uniform(generator, 1.0, 2.0 * scale)
        mode = draw_choice(generator, RESIZE_MODES)
        return ResizeOp(height=int(height / factor), width=int(width / factor), mode=mode)
    sigma = draw_uniform(generator, 0.1, 0.6 * scale)
    kernel = KernelParams(kind="iso", size=25, sigma_x=sigma, sigma_y=sigma, center_offset=-(scale - 1) / 2)
    return StridedBlurOp(kernel=kernel, stride=scale)


def _sample_noise(settings: BSRGANSettings, generator: torch.Generator) -> NoiseOp:
    """Colour noise with probability 0.4, gray 0.4, channel-correlated 0.2."""
    level = draw_int(generator, *settings.noise_level_range)
    kind = draw_choice(generator, ("color", "gray", "correlated"), (0.4, 0.4, 0.2))
    return NoiseOp(kind=kind, level=level, seed=draw_seed(generator))


def _shuffled_steps(generator: torch.Generator) -> list[str]:
    """A random permutation of the six steps with the random downsampling before the final one."""
    steps = ["blur", "blur", "random_downsample", "final_downsample", "noise", "jpeg"]
    order = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
    first, second = order.index("random_downsample"), order.index("final_downsample")
    if first > second:
        order[first], order[second] = order[second], order[first]
    return order


def sample_bsrgan_params(
    settings: BSRGANSettings, *, batch_size: int, gt_size: tuple[int, int], generator: torch.Generator
) -> list[BSRGANParams]:
    """Draw one record per image for a GT of `gt_size` (H, W)."""
    return [_sample_one(settings, gt_size, generator) for _ in range(batch_size)]


def _sample_one(settings: BSRGANSettings, gt_size: tuple[int, int], generator: torch.Generator) -> BSRGANParams:
    height, width = gt_size
    scale, ops = settings.scale, []
    if scale == 4 and draw_bernoulli(generator, settings.scale2_prob):
        ops.append(ResizeOp(height=height // 2, width=width // 2, mode=draw_choice(generator, RESIZE_MODES)))
        height, width, scale = height // 2, width // 2, 2
    for step in _shuffled_steps(generator):
        if step == "blur":
            ops.append(_sample_blur(scale, settings, generator))
        elif step == "random_downsample":
            ops.append(_sample_random_downsample(height, width, scale, settings, generator))
        elif step == "final_downsample":
            mode = draw_choice(generator, RESIZE_MODES)
            ops.append(ResizeOp(height=height // scale, width=width // scale, mode=mode))
        elif step == "noise":
            ops.append(_sample_noise(settings, generator))
        elif draw_bernoulli(generator, settings.jpeg_prob):
            ops.append(JpegOp(quality=draw_int(generator, *settings.jpeg_range)))
    ops.append(JpegOp(quality=draw_int(generator, *settings.jpeg_range)))
    return BSRGANParams(scale=settings.scale, ops=tuple(ops))


def _noise(image: torch.Tensor, op: NoiseOp) -> torch.Tensor:
    """Noise for one (1, 3, h, w) image, on the 0-1 scale."""
    generator = torch.Generator(device=image.device).manual_seed(op.seed)
    sigma, (_, channels, height, width) = op.level / 255.0, image.shape
    if op.kind == "correlated":  # covariance sigma^2 U^T D U, D = diag(U[0,1)^3), U orthonormal
        draws = torch.rand(3, 3, generator=generator, device=image.device, dtype=torch.float64)
        basis = torch.linalg.qr(draws).Q
        scales = torch.rand(3, generator=generator, device=image.device, dtype=torch.float64).sqrt()
        white = torch.randn(height * width, 3, generator=generator, device=image.device, dtype=torch.float64)
        colored = white @ (scales[:, None] * basis) * sigma  # (HW, 3): cov = U^T D U sigma^2
        return colored.T.reshape(1, 3, height, width).to(image.dtype)  # (HW, 3) -> (1, 3, H, W)
    shape = (1, 1 if op.kind == "gray" else channels, height, width)
    noise = torch.randn(shape, generator=generator, device=image.device, dtype=image.dtype) * sigma
    return noise.expand(1, channels, height, width)


def _run_op(image: torch.Tensor, op) -> torch.Tensor:
    """One operation on a (1, 3, h, w) image; every result is clamped to [0, 1]."""
    if isinstance(op, BlurOp):
        out = filter2d(image, kernel_from_params(op.kernel)[None].to(image.device))
    elif isinstance(op, ResizeOp):
        out = resize(image, size=(op.height, op.width), mode=op.mode)
    elif isinstance(op, StridedBlurOp):
        blurred = filter2d(image, kernel_from_params(op.kernel)[None].to(image.device))
        out = blurred[..., :: op.stride, :: op.stride]
    elif isinstance(op, NoiseOp):
        out = image + _noise(image, op)
    else:
        out = jpeg_compress(image, qualities=[op.quality])
    return torch.clamp(out, 0, 1)


def apply_bsrgan(gt: torch.Tensor, params: Sequence[BSRGANParams]) -> DegradedBatch:
    """Degrade each image with its record: gt (B, 3, H, W), sides multiples of s and >= 26 s."""
    if gt.ndim != 4 or gt.shape[1] != 3 or len(params) != gt.shape[0]:
        raise ValueError(f"expected gt (B, 3, H, W) with one record per image, got {tuple(gt.shape)} and {len(params)}")
    height, width = gt.shape[-2:]
    scale = params[0].scale
    if min(height, width) < 26 * scale or height % scale or width % scale:  # a 25-tap blur at H/(2s) needs 13 px
        raise ValueError(f"BSRGAN needs a GT of at least {26 * scale} px with sides divisible by {scale}")
    lrs = []
    for image, record in zip(gt, params):
        x = image[None]
        for op in record.ops:
            x = _run_op(x, op)
        lrs.append(x)
    lr = quantize_8bit(torch.cat(lrs))
    return DegradedBatch(gt=gt, lr=lr, lr_up=upsample_to(lr, gt))

"""BSRGAN random-shuffle model: order rules, ranges, shifted-kernel alignment, noise kinds, sizes."""

from collections import Counter

import pytest
import torch

from stablesr.data.bsrgan import (
    BlurOp,
    BSRGANSettings,
    JpegOp,
    NoiseOp,
    ResizeOp,
    StridedBlurOp,
    _noise,
    _run_op,
    apply_bsrgan,
    sample_bsrgan_params,
)
from stablesr.data.kernels import KernelParams


def _records(count: int, scale: int = 4):
    generator = torch.Generator().manual_seed(0)
    return sample_bsrgan_params(BSRGANSettings(scale=scale), batch_size=count, gt_size=(256, 256), generator=generator)


def test_order_rules_and_ranges_over_many_draws():
    records = _records(1000)
    halved = 0
    for record in records:
        ops = record.ops
        assert isinstance(ops[-1], JpegOp) and 30 <= ops[-1].quality <= 95
        halved += isinstance(ops[0], ResizeOp) and (ops[0].height, ops[0].width) == (128, 128)
        final = max(i for i, op in enumerate(ops) if isinstance(op, ResizeOp) and op.height in (64,))
        random_down = [
            i for i, op in enumerate(ops)
            if isinstance(op, StridedBlurOp) or (isinstance(op, ResizeOp) and op.height not in (64, 128))
        ]
        assert all(i < final for i in random_down)
        assert sum(isinstance(op, BlurOp) for op in ops) == 2 and sum(isinstance(op, NoiseOp) for op in ops) == 1
        for op in ops:
            if isinstance(op, NoiseOp):
                assert 2 <= op.level <= 25
            if isinstance(op, BlurOp):
                assert op.kernel.size in range(7, 26, 2) and op.kernel.sigma_x > 0
    assert halved / 1000 == pytest.approx(0.25, abs=0.055)
    noise_kinds = Counter(op.kind for r in records for op in r.ops if isinstance(op, NoiseOp))
    assert noise_kinds["correlated"] / 1000 == pytest.approx(0.2, abs=0.05)
    jpeg_steps = sum(isinstance(op, JpegOp) for r in records for op in r.ops[:-1])
    assert jpeg_steps / 1000 == pytest.approx(0.9, abs=0.04)


def test_shifted_strided_blur_samples_block_centres():
    # on a linear ramp a symmetric blur centred on each s x s block returns the block centre
    scale = 4
    ramp = torch.arange(128.0).repeat(1, 3, 128, 1) / 255  # (1, 3, 128, 128), value = column / 255
    kernel = KernelParams(kind="iso", size=25, sigma_x=1.5, sigma_y=1.5, center_offset=-(scale - 1) / 2)
    op = StridedBlurOp(kernel=kernel, stride=scale)
    out = _run_op(ramp, op)[0, 0, 8, 4:-4] * 255
    expected = torch.arange(4, 28) * scale + (scale - 1) / 2
    assert torch.allclose(out, expected, atol=1e-3)


def test_noise_kinds():
    image = torch.full((1, 3, 128, 128), 0.5)
    gray = _noise(image, NoiseOp(kind="gray", level=20, seed=1))
    assert torch.equal(gray[0, 0], gray[0, 1]) and gray.std().item() * 255 == pytest.approx(20, rel=0.03)
    color = _noise(image, NoiseOp(kind="color", level=20, seed=1))
    assert color.std().item() * 255 == pytest.approx(20, rel=0.03)
    assert torch.corrcoef(color[0].reshape(3, -1)).sub(torch.eye(3)).abs().max() < 0.03
    correlated = _noise(image, NoiseOp(kind="correlated", level=20, seed=3)).double()
    covariance = torch.cov(correlated[0].reshape(3, -1)) * 255**2
    assert torch.linalg.eigvalsh(covariance).max() < 400 * 1.05  # eigenvalues are 20^2 D, D < 1
    assert torch.equal(_noise(image, NoiseOp(kind="correlated", level=20, seed=3)),
                       _noise(image, NoiseOp(kind="correlated", level=20, seed=3)))


@pytest.mark.parametrize("scale", [2, 4])
def test_sizes_and_determinism(scale):
    gt = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    settings = BSRGANSettings(scale=scale)
    params = sample_bsrgan_params(settings, batch_size=2, gt_size=(128, 128),
                                  generator=torch.Generator().manual_seed(4))
    out = apply_bsrgan(gt, params)
    assert out.lr.shape == (2, 3, 128 // scale, 128 // scale)
    assert torch.equal(out.lr, apply_bsrgan(gt, params).lr)
    with pytest.raises(ValueError, match="divisible"):
        apply_bsrgan(gt[..., :127, :127], params)

"""PSNR / SSIM against closed-form values and an independent float64 reference written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from stablesr.metrics.fidelity import psnr, rgb_to_y_bt601, ssim


def reference_y(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b)


def reference_ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    """Direct 11x11 window sums (no separable filtering), float64."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    wa, wb = sliding_window_view(a, (11, 11)), sliding_window_view(b, (11, 11))
    mu_a = np.einsum("ijkl,kl->ij", wa, g)
    mu_b = np.einsum("ijkl,kl->ij", wb, g)
    var_a = np.einsum("ijkl,kl->ij", (wa - mu_a[..., None, None]) ** 2, g)
    var_b = np.einsum("ijkl,kl->ij", (wb - mu_b[..., None, None]) ** 2, g)
    cov = np.einsum("ijkl,kl->ij", (wa - mu_a[..., None, None]) * (wb - mu_b[..., None, None]), g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(m.mean())


@pytest.fixture()
def image_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8)
    noise = rng.normal(0, 12, size=gt.shape)
    pred = np.clip(gt + noise, 0, 255).round().astype(np.uint8)
    return pred, gt


def test_y_conversion_endpoints_and_reference(image_pair):
    assert rgb_to_y_bt601(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16.0, abs=1e-12)
    assert rgb_to_y_bt601(np.full((1, 1, 3), 255.0))[0, 0] == pytest.approx(235.0, abs=1e-9)
    np.testing.assert_allclose(rgb_to_y_bt601(image_pair[1]), reference_y(image_pair[1]), atol=1e-10)


def test_psnr_closed_forms():
    gt = np.full((16, 16, 3), 100, dtype=np.uint8)
    pred = gt + 1
    assert psnr(pred, gt, channel="rgb") == pytest.approx(20 * math.log10(255), abs=1e-10)  # 48.1308 dB
    y_step = 219.0 / 255.0  # a +1 step in R, G and B moves Y by (65.481 + 128.553 + 24.966) / 255
    assert psnr(pred, gt) == pytest.approx(20 * math.log10(255 / y_step), abs=1e-10)
    assert psnr(gt, gt) == math.inf


def test_psnr_matches_reference_with_crop(image_pair):
    pred, gt = image_pair
    for border in (0, 4):
        sl = (slice(border, gt.shape[0] - border), slice(border, gt.shape[1] - border))
        mse_y = np.mean((reference_y(pred)[sl] - reference_y(gt)[sl]) ** 2)
        mse_rgb = np.mean((pred[sl].astype(np.float64) - gt[sl]) ** 2)
        assert psnr(pred, gt, crop_border=border) == pytest.approx(10 * np.log10(255**2 / mse_y), abs=1e-4)
        assert psnr(pred, gt, crop_border=border, channel="rgb") == pytest.approx(
            10 * np.log10(255**2 / mse_rgb), abs=1e-4
        )
    assert psnr(pred, gt, crop_border=4) != psnr(pred, gt)


def test_ssim_matches_direct_window_reference(image_pair):
    pred, gt = image_pair
    cropped = (slice(4, -4), slice(4, -4))
    expected_y = reference_ssim_plane(reference_y(pred)[cropped], reference_y(gt)[cropped])
    assert ssim(pred, gt, crop_border=4) == pytest.approx(expected_y, abs=1e-5)
    expected_rgb = np.mean(
        [reference_ssim_plane(pred[..., c].astype(np.float64), gt[..., c].astype(np.float64)) for c in range(3)]
    )
    assert ssim(pred, gt, channel="rgb") == pytest.approx(expected_rgb, abs=1e-5)


def test_ssim_identities():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    a, b = np.full((20, 20, 3), 60, np.uint8), np.full((20, 20, 3), 90, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b, channel="rgb") == pytest.approx((2 * 60 * 90 + c1) / (60**2 + 90**2 + c1), abs=1e-9)


def test_bad_pairs_raise():
    with pytest.raises(ValueError, match="one size"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), crop_border=4)
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 10, 3)), np.zeros((10, 10, 3)))

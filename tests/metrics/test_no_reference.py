"""NIQE and BRISQUE: NSS building blocks, an independent float64 reference, and the official MATLAB values.

The reference in this file is written from the LIVE MATLAB releases' published steps with different
building blocks (explicit padding + sliding windows, per-pixel imresize loops), so the package code
and the test do not share a line. The MATLAB values at the end are the official releases' scores of
five TID2013 images (pyiqa's `ResultsCalibra/results_official.csv`); that test runs only when
STABLESR_IQA_CALIBRATION_DIR points at a folder holding those images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy.special import gamma
from scipy.stats import gennorm

from stablesr.metrics.brisque import brisque, brisque_from_features, rgb_to_gray_matlab, svr_model
from stablesr.metrics.niqe import aggd_scales, niqe, niqe_from_features, pristine_model
from stablesr.metrics.nss import fit_aggd, fit_ggd, imresize_half, mscn

GRID = np.round(np.arange(200, 10001) / 1000, 3)  # 0.2:0.001:10


# ----------------------------------------------------------------------------- independent reference


def ref_filter(plane: np.ndarray, padding: str) -> np.ndarray:
    """7x7 Gaussian (sigma 7/6) local mean with MATLAB 'replicate' or zero padding, via sliding windows."""
    y, x = np.mgrid[-3:4, -3:4]
    window = np.exp(-(x * x + y * y) / (2 * (7 / 6) ** 2))
    window /= window.sum()
    padded = np.pad(plane, 3, mode="edge" if padding == "replicate" else "constant")
    return np.einsum("ijkl,kl->ij", sliding_window_view(padded, (7, 7)), window)


def ref_mscn(plane: np.ndarray, padding: str) -> np.ndarray:
    mu = ref_filter(plane, padding)
    sigma = np.sqrt(np.abs(ref_filter(plane * plane, padding) - mu * mu))
    padded = np.pad(plane, 3, mode="edge" if padding == "replicate" else "constant")
    windows = sliding_window_view(padded, (7, 7))
    flat = windows.max(axis=(2, 3)) == windows.min(axis=(2, 3))
    return np.where(flat, 0.0, (plane - mu) / (sigma + 1))


def ref_aggd(values: np.ndarray) -> tuple[float, float, float]:
    """(alpha, left std, right std) by the release's moment matching on the 0.2:0.001:10 grid."""
    left = np.sqrt(np.mean(values[values < 0] ** 2))
    right = np.sqrt(np.mean(values[values > 0] ** 2))
    g = left / right
    r = np.mean(np.abs(values)) ** 2 / np.mean(values**2) * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    table = gamma(2 / GRID) ** 2 / (gamma(1 / GRID) * gamma(3 / GRID))
    return float(GRID[np.argmin((table - r) ** 2)]), float(left), float(right)


def ref_imresize_half(plane: np.ndarray) -> np.ndarray:
    """MATLAB imresize(plane, 0.5) bicubic with antialiasing, one output sample at a time."""

    def cubic(t):
        t = abs(t)
        return 1.5 * t**3 - 2.5 * t**2 + 1 if t <= 1 else (-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0.0)

    def resize_axis(data):  # along axis 0
        n = data.shape[0]
        out = []
        for i in range(1, (n + 1) // 2 + 1):
            u = 2 * i - 0.5  # 1-based input coordinate of output i
            taps = range(int(np.floor(u - 4)), int(np.floor(u - 4)) + 10)
            weights = np.array([0.5 * cubic(0.5 * (u - j)) for j in taps])
            rows = [(j - 1) % (2 * n) for j in taps]
            rows = [r if r < n else 2 * n - 1 - r for r in rows]  # symmetric mirror
            out.append((weights / weights.sum()) @ data[rows])
        return np.stack(out)

    return resize_axis(resize_axis(plane).T).T


def ref_niqe(gray: np.ndarray) -> float:
    def features(block):
        row = []
        for k, values in enumerate([block.ravel()] + [(block * np.roll(block, s, axis=(0, 1))).ravel()
                                                     for s in ((0, 1), (1, 0), (1, 1), (1, -1))]):
            alpha, left, right = ref_aggd(values)
            spread = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
            bl, br = left * spread, right * spread
            if k == 0:
                row += [alpha, (bl + br) / 2]
            else:
                row += [alpha, (br - bl) * gamma(2 / alpha) / gamma(1 / alpha), bl, br]
        return row

    gray = gray[: gray.shape[0] // 96 * 96, : gray.shape[1] // 96 * 96]
    per_scale = []
    for plane, size in ((gray, 96), (ref_imresize_half(gray), 48)):
        m = ref_mscn(plane, "replicate")
        per_scale.append([features(m[r:r + size, c:c + size])
                          for r in range(0, m.shape[0], size) for c in range(0, m.shape[1], size)])
    feats = np.concatenate([np.array(per_scale[0]), np.array(per_scale[1])], axis=1)
    mu_p, cov_p = pristine_model()
    d = mu_p - feats.mean(axis=0)
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + np.cov(feats.T)) / 2) @ d))


def ref_brisque(gray: np.ndarray) -> float:
    feats = []
    for plane in (gray, ref_imresize_half(gray)):
        m = ref_mscn(plane, "zero")
        v = m.ravel()
        rho = np.mean(v**2) / np.mean(np.abs(v)) ** 2
        rho_grid = gamma(1 / GRID) * gamma(3 / GRID) / gamma(2 / GRID) ** 2
        feats += [GRID[np.argmin(np.abs(rho - rho_grid))], np.mean(v**2)]
        for s in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            alpha, left, right = ref_aggd((m * np.roll(m, s, axis=(0, 1))).ravel())
            mean = (right - left) * gamma(2 / alpha) / gamma(1 / alpha) * np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
            feats += [alpha, mean, left**2, right**2]
    model = svr_model()
    scaled = -1 + 2 * (np.array(feats) - model["feature_min"]) / (model["feature_max"] - model["feature_min"])
    kernel = [np.exp(-0.05 * np.sum((sv - scaled) ** 2)) for sv in model["support_vectors"]]
    return float(np.dot(model["dual_coefs"], kernel) + 153.591)


def synthetic_image(size: int = 192, seed: int = 3) -> np.ndarray:
    """A natural-looking (1/f spectrum) colour image with a flat sky band, uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    planes = [np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) / radius)) for _ in range(3)]
    image = np.stack([(p - p.min()) / (p.max() - p.min()) * 255 for p in planes], axis=2).round()
    image[:30] = (120, 160, 220)  # flat region: MSCN exactly 0 there
    return image.astype(np.uint8)


# ----------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("alpha", [0.6, 1.0, 2.0, 3.5])
def test_ggd_fit_recovers_shape_and_variance(alpha):
    samples = gennorm.rvs(alpha, size=400_000, random_state=np.random.default_rng(0))
    shape, variance = fit_ggd(samples)
    assert shape == pytest.approx(alpha, abs=0.03)
    assert variance == pytest.approx(np.mean(samples**2), rel=1e-12)


@pytest.mark.parametrize("alpha, scale", [(0.8, 0.5), (2.0, 1.7)])
def test_niqe_aggd_scale_is_the_distribution_scale_not_std_or_variance(alpha, scale):
    samples = gennorm.rvs(alpha, scale=scale, size=400_000, random_state=np.random.default_rng(1))
    shape, beta_left, beta_right = aggd_scales(samples)
    assert shape == pytest.approx(alpha, abs=0.03)
    assert beta_left == pytest.approx(scale, rel=0.02) and beta_right == pytest.approx(scale, rel=0.02)
    std = scale * np.sqrt(gamma(3 / alpha) / gamma(1 / alpha))  # the GGD's standard deviation differs
    assert fit_aggd(samples)[1] == pytest.approx(std, rel=0.02)


def test_aggd_fit_sides():
    samples = gennorm.rvs(0.8, size=400_000, random_state=np.random.default_rng(1))
    skewed = np.where(samples > 0, 2 * samples, samples)  # right side twice as wide
    alpha, left_std, right_std = fit_aggd(np.concatenate([skewed, np.zeros(1000)]))  # zeros in neither side
    assert right_std / left_std == pytest.approx(2.0, rel=0.02)
    assert (alpha, left_std, right_std) == pytest.approx(ref_aggd(np.concatenate([skewed, np.zeros(1000)])), rel=1e-12)


def test_imresize_half_matches_the_matlab_formula_and_pillow_inside():
    rng = np.random.default_rng(2)
    image = rng.random((41, 36)) * 255
    ours = imresize_half(image)
    assert ours.shape == (21, 18)
    np.testing.assert_allclose(ours, ref_imresize_half(image), rtol=0, atol=1e-10)
    pillow = np.asarray(Image.fromarray(image[:40].astype(np.float32), mode="F").resize((18, 20), Image.BICUBIC))
    np.testing.assert_allclose(imresize_half(image[:40])[3:-3, 3:-3], pillow[3:-3, 3:-3], atol=2e-3)


@pytest.mark.parametrize("padding", ["replicate", "zero"])
def test_mscn_matches_reference_and_is_zero_on_flat_windows(padding):
    plane = rgb_to_gray_matlab(synthetic_image(64))
    ours = mscn(plane, padding=padding)
    np.testing.assert_allclose(ours, ref_mscn(plane, padding), rtol=0, atol=1e-12)
    assert np.all(ours[3:27, 3:-3] == 0.0)
    assert np.abs(mscn(np.full((20, 20), 77.0), padding="replicate")).max() == 0.0


# ----------------------------------------------------------------------------- NIQE


def test_niqe_matches_independent_reference():
    image = synthetic_image()
    assert niqe(image) == pytest.approx(ref_niqe(rgb_to_gray_matlab(image)), rel=1e-9)
    y_plane = np.round(16 + image.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255)
    assert niqe(image, luma="y") == pytest.approx(ref_niqe(y_plane), rel=1e-9)


def test_niqe_distance_closed_forms():
    mu, cov = pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    assert mu[0] == pytest.approx(2.6013137, abs=1e-7)  # first entry of the LIVE release modelparameters.mat
    assert niqe_from_features(np.stack([mu, mu])) == pytest.approx(0.0, abs=1e-9)
    step = np.zeros(36)
    step[0] = 0.5
    expected = 0.5 * np.sqrt(np.linalg.pinv(cov / 2)[0, 0])  # one block: no image covariance
    assert niqe_from_features((mu + step)[None]) == pytest.approx(expected, rel=1e-10)
    with_nan = np.stack([mu + step, mu + step, np.full(36, np.nan)])  # MATLAB nanmean / nancov
    assert niqe_from_features(with_nan) == pytest.approx(expected, rel=1e-10)


def test_niqe_rises_with_noise_and_checks_input():
    clean = synthetic_image()
    noisy = np.clip(clean + np.random.default_rng(4).normal(0, 20, clean.shape), 0, 255).round()
    assert niqe(noisy) > niqe(clean) + 1.0
    with pytest.raises(ValueError, match="96x96"):
        niqe(clean[:90])
    with pytest.raises(ValueError, match="luma"):
        niqe(clean, luma="rgb")


# ----------------------------------------------------------------------------- BRISQUE


def test_brisque_model_is_the_matlab_release():
    model = svr_model()
    assert model["support_vectors"].shape == (774, 36)
    assert float(model["gamma"]) == 0.05 and float(model["rho"]) == -153.591
    assert (model["feature_min"][0], model["feature_max"][0]) == (0.338, 10.0)  # allrange, first row
    features = model["feature_min"].copy()  # scales to -1 everywhere
    direct = sum(coef * np.exp(-0.05 * np.sum((sv + 1.0) ** 2))
                 for coef, sv in zip(model["dual_coefs"], model["support_vectors"])) + 153.591
    assert brisque_from_features(features) == pytest.approx(direct, rel=1e-12)


def test_brisque_matches_independent_reference_and_orders_noise():
    image = synthetic_image(128, seed=5)
    assert brisque(image) == pytest.approx(ref_brisque(rgb_to_gray_matlab(image)), rel=1e-9)
    noisy = np.clip(image + np.random.default_rng(6).normal(0, 25, image.shape), 0, 255).round()
    assert brisque(noisy) > brisque(image)


# ----------------------------------------------------------------------------- official MATLAB values

CALIBRATION = os.environ.get("STABLESR_IQA_CALIBRATION_DIR")
# LIVE MATLAB releases on rgb2gray input (pyiqa ResultsCalibra/results_official.csv, TID2013 images)
OFFICIAL = {
    "I03": (15.7536293917814, 94.6421),
    "I04": (3.65492152353770, -0.107618),
    "I06": (3.23547743716998, 0.992889),
    "I08": (3.18403333858339, 5.35827),
    "I19": (8.63519663862637, 72.2617),
}
# Measured agreement; I08 / I19 have large flat areas where the official score depends on the
# rounding noise of MATLAB's filter (see `nss.mscn`).
TOLERANCE = {"I03": (0.01, 0.01), "I04": (0.001, 0.001), "I06": (0.005, 0.005), "I08": (0.03, 0.6), "I19": (0.05, 2.2)}


@pytest.mark.skipif(CALIBRATION is None, reason="set STABLESR_IQA_CALIBRATION_DIR to ResultsCalibra/dist_dir")
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_matlab_values(name):
    image = np.asarray(Image.open(Path(CALIBRATION) / f"{name}.bmp").convert("RGB"))
    (niqe_tol, brisque_tol), (niqe_ref, brisque_ref) = TOLERANCE[name], OFFICIAL[name]
    assert niqe(image) == pytest.approx(niqe_ref, abs=niqe_tol)
    assert brisque(image) == pytest.approx(brisque_ref, abs=brisque_tol)

"""NSS building blocks (GGD/AGGD fits, MATLAB imresize), NIQE and BRISQUE on seeded synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.stats import gennorm

from stablesr.metrics.brisque import brisque, brisque_from_features, svr_model
from stablesr.metrics.niqe import niqe, niqe_from_features, pristine_model
from stablesr.metrics.nss import fit_aggd, fit_ggd, imresize_half, mscn


def pink_noise_image(size: int, seed: int) -> np.ndarray:
    """A natural-looking (1/f amplitude spectrum) RGB image, values 0..255 as uint8."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    spectrum = np.fft.fft2(rng.standard_normal((size, size))) / radius
    plane = np.real(np.fft.ifft2(spectrum))
    plane = (plane - plane.min()) / (plane.max() - plane.min()) * 255
    return np.repeat(plane.round().astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("alpha", [0.6, 1.0, 2.0, 3.5])
def test_ggd_fit_recovers_shape_and_variance(alpha):
    samples = gennorm.rvs(alpha, size=400_000, random_state=np.random.default_rng(0))
    shape, variance = fit_ggd(samples)
    assert shape == pytest.approx(alpha, abs=0.03)
    assert variance == pytest.approx(np.mean(samples**2), rel=1e-12)


def test_aggd_fit_on_symmetric_and_scaled_samples():
    samples = gennorm.rvs(0.8, size=400_000, random_state=np.random.default_rng(1))
    alpha, mean, left_var, right_var = fit_aggd(samples)
    assert alpha == pytest.approx(0.8, abs=0.03)
    assert mean == pytest.approx(0.0, abs=0.02)
    assert left_var == pytest.approx(right_var, rel=0.03)
    skewed = np.where(samples > 0, 2 * samples, samples)  # right side twice as wide
    _, mean, left_var, right_var = fit_aggd(skewed)
    assert right_var / left_var == pytest.approx(4.0, rel=0.05)
    assert mean > 0


def test_imresize_half_matches_pillow_inside_and_keeps_constants():
    rng = np.random.default_rng(2)
    image = rng.random((40, 36)) * 255
    ours = imresize_half(image)
    assert ours.shape == (20, 18)
    # Pillow's antialiased bicubic (a = -0.5) has the same taps away from the borders
    pillow = np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize((18, 20), Image.BICUBIC))
    np.testing.assert_allclose(ours[3:-3, 3:-3], pillow[3:-3, 3:-3], atol=2e-3)
    np.testing.assert_allclose(imresize_half(np.full((9, 7), 42.0)), np.full((5, 4), 42.0), atol=1e-12)


def test_mscn_of_constant_is_zero_for_replicate_padding():
    assert np.abs(mscn(np.full((20, 20), 77.0), padding="replicate")).max() < 1e-12
    assert np.abs(mscn(np.full((20, 20), 77.0), padding="zero"))[10, 10] < 1e-12  # border sees the zeros


def test_niqe_distance_closed_forms():
    mu, cov = pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    assert niqe_from_features(np.stack([mu, mu])) == pytest.approx(0.0, abs=1e-9)
    step = np.zeros(36)
    step[0] = 0.5
    expected = 0.5 * np.sqrt(np.linalg.pinv(cov / 2)[0, 0])  # one block: no image covariance
    assert niqe_from_features((mu + step)[None]) == pytest.approx(expected, rel=1e-10)


def test_niqe_rises_with_noise():
    clean = pink_noise_image(192, seed=3)
    noisy = np.clip(clean + np.random.default_rng(4).normal(0, 20, clean.shape), 0, 255).round()
    score = niqe(clean)
    assert np.isfinite(score)
    assert niqe(noisy) > score + 1.0
    with pytest.raises(ValueError, match="96x96"):
        niqe(clean[:90])


def test_brisque_model_and_ordering():
    model = svr_model()
    assert model["support_vectors"].shape == (770, 36)
    assert float(model["gamma"]) == 0.05 and float(model["rho"]) == -155.845
    # a feature vector on the lower scaling bound maps to -1 everywhere: check against a direct sum
    features = model["feature_min"].copy()
    direct = sum(
        coef * np.exp(-0.05 * np.sum((sv + 1.0) ** 2))
        for coef, sv in zip(model["dual_coefs"], model["support_vectors"])
    ) + 155.845
    assert brisque_from_features(features) == pytest.approx(direct, rel=1e-12)
    clean = pink_noise_image(128, seed=5)
    noisy = np.clip(clean + np.random.default_rng(6).normal(0, 25, clean.shape), 0, 255).round()
    assert brisque(noisy) > brisque(clean)

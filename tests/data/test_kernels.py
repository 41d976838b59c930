"""Blur kernels: normalisation, covariance, shape laws, sinc frequency response, sampling rules."""

import math
from collections import Counter

import pytest
import torch

from stablesr.data.kernels import (
    BlurSettings,
    KernelParams,
    kernel_from_params,
    pad_kernel,
    sample_final_sinc,
    sample_kernel,
)


def _second_moments(kernel: torch.Tensor) -> torch.Tensor:
    """2x2 covariance of a kernel seen as a distribution over (x, y) pixel offsets."""
    size = kernel.shape[-1]
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    k = kernel.double()
    return torch.tensor([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])


@pytest.mark.parametrize(
    "kind", ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc", "pulse"]
)
def test_every_kind_sums_to_one(kind):
    params = KernelParams(kind=kind, size=13, sigma_x=1.3, sigma_y=2.1, rotation=0.7, beta=1.4, omega=1.5)
    kernel = kernel_from_params(params)
    assert kernel.shape == (13, 13) and kernel.dtype == torch.float32
    assert abs(kernel.double().sum().item() - 1.0) < 1e-6


def test_anisotropic_gaussian_has_requested_covariance():
    sigma_x, sigma_y, rotation = 1.5, 3.0, 0.6
    kernel = kernel_from_params(
        KernelParams(kind="aniso", size=41, sigma_x=sigma_x, sigma_y=sigma_y, rotation=rotation))
    rot = torch.tensor([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]],
                       dtype=torch.float64)
    expected = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    assert torch.allclose(_second_moments(kernel), expected, atol=2e-3 * sigma_y**2)


def test_isotropic_gaussian_is_rotation_free_and_symmetric():
    kernel = kernel_from_params(KernelParams(kind="iso", size=31, sigma_x=2.0, sigma_y=2.0, rotation=1.0))
    assert torch.allclose(kernel, kernel.T, atol=1e-9) and torch.allclose(kernel, kernel.flip(0), atol=1e-9)
    assert torch.allclose(_second_moments(kernel), torch.eye(2, dtype=torch.float64) * 4.0, atol=1e-3)


def test_generalized_with_beta_one_is_gaussian_and_plateau_law():
    common = dict(size=15, sigma_x=1.2, sigma_y=2.3, rotation=0.4)
    gaussian = kernel_from_params(KernelParams(kind="aniso", **common))
    generalized = kernel_from_params(KernelParams(kind="generalized_aniso", beta=1.0, **common))
    assert torch.allclose(gaussian, generalized, atol=1e-7)
    # plateau: k(0) / k(x) = d^(2 beta) + 1 where d^2 = x^T Sigma^-1 x; along x with no rotation d = x / sigma_x
    plateau = kernel_from_params(KernelParams(kind="plateau_iso", size=15, sigma_x=2.0, sigma_y=2.0, beta=1.5))
    center = plateau[7, 7]
    for offset in (1, 3, 6):
        d2 = (offset / 2.0) ** 2
        assert center / plateau[7, 7 + offset] == pytest.approx(d2**1.5 + 1, rel=1e-5)


def test_sinc_is_a_circular_low_pass():
    omega = 1.2
    kernel = kernel_from_params(KernelParams(kind="sinc", size=201, omega=omega)).double()
    assert torch.allclose(kernel, kernel.T, atol=1e-12)
    response = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(kernel))).abs()
    freqs = torch.fft.fftshift(torch.fft.fftfreq(201, dtype=torch.float64)) * 2 * math.pi
    fy, fx = torch.meshgrid(freqs, freqs, indexing="ij")
    radius = torch.sqrt(fx**2 + fy**2)
    assert (response[radius < 0.8 * omega] - 1).abs().max() < 0.1  # pass band
    assert response[(radius > 1.2 * omega) & (radius < math.pi)].max() < 0.1  # stop band


def test_pulse_and_padding_keep_the_kernel_centred():
    pulse = kernel_from_params(KernelParams(kind="pulse", size=1))
    padded = pad_kernel(pulse, 21)
    assert padded.shape == (21, 21) and padded[10, 10] == 1 and padded.sum() == 1
    small = kernel_from_params(KernelParams(kind="iso", size=7, sigma_x=1.0, sigma_y=1.0))
    assert torch.equal(pad_kernel(small, 11)[2:9, 2:9], small)


def test_sampling_follows_the_probabilities_and_ranges():
    settings = BlurSettings(sigma_range=(0.2, 1.5), betag_range=(0.5, 2.0), betap_range=(1.0, 1.5))
    generator = torch.Generator().manual_seed(0)
    draws = [sample_kernel(settings, generator=generator) for _ in range(3000)]
    counts = Counter(d.kind for d in draws)
    assert counts["sinc"] / 3000 == pytest.approx(0.1, abs=0.02)
    mixed = 3000 - counts["sinc"]
    for kind, prob in settings.kernel_probs:
        assert counts[kind] / mixed == pytest.approx(prob, abs=0.03), kind
    for d in draws:
        assert d.size in settings.kernel_sizes
        if d.kind == "sinc":
            assert (math.pi / 3 if d.size < 13 else math.pi / 5) <= d.omega <= math.pi
            continue
        assert 0.2 <= d.sigma_x <= 1.5 and 0.2 <= d.sigma_y <= 1.5 and -math.pi <= d.rotation <= math.pi
        if d.kind.endswith("iso") and not d.kind.endswith("aniso"):
            assert d.sigma_x == d.sigma_y and d.rotation == 0.0
        low, high = {"g": (0.5, 2.0), "p": (1.0, 1.5)}.get(d.kind[0], (1.0, 1.0))
        assert low <= d.beta <= high
    assert set(Counter(d.size for d in draws)) == set(settings.kernel_sizes)


def test_final_sinc_probability_and_cutoff():
    generator = torch.Generator().manual_seed(1)
    draws = [sample_final_sinc(final_sinc_prob=0.8, kernel_sizes=(7, 21), generator=generator) for _ in range(2000)]
    sincs = [d for d in draws if d.kind == "sinc"]
    assert len(sincs) / 2000 == pytest.approx(0.8, abs=0.03)
    assert all(math.pi / 3 <= d.omega <= math.pi for d in sincs)
    assert all(d.kind == "pulse" for d in draws if d.kind != "sinc")

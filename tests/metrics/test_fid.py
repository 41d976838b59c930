"""FID: the Fréchet distance against closed forms and an eigen-decomposition, and the Inception plumbing
on random weights (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FLOAT32_REL
from stablesr.errors import CheckpointMismatchError, WeightsNotFoundError
from stablesr.metrics.fid import (
    WEIGHTS_FILE,
    BlockA,
    BlockE,
    FIDInceptionV3,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
)


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T + 0.1 * np.eye(dim)


def eigen_frechet(mu_1, sigma_1, mu_2, sigma_2) -> float:
    """Independent route: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), S1^1/2 from eigh."""
    values, vectors = np.linalg.eigh(sigma_1)
    root_1 = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root_1 @ sigma_2 @ root_1)
    trace_root = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(np.sum((mu_1 - mu_2) ** 2) + np.trace(sigma_1) + np.trace(sigma_2) - 2 * trace_root)


def test_distance_of_a_set_to_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(40, 6))
    assert abs(fid_from_features(features, features)) < 1e-8  # up to sqrtm rounding (CPU-dependent)
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(sigma, np.cov(features.T, ddof=1), rtol=1e-12, atol=1e-14)  # unbiased, in columns
    assert mu.dtype == sigma.dtype == np.float64


def test_closed_form_for_gaussians():
    assert frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(2.0, abs=1e-12)
    # diagonal (commuting) covariances: ||mu_1 - mu_2||^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu_1, mu_2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 1 + 4 + (1 + 1 + 0 + 0.25)
    assert frechet_distance(mu_1, np.diag(a), mu_2, np.diag(b)) == pytest.approx(expected, abs=1e-10)


def test_matrix_square_root_against_eigen_decomposition():
    rng = np.random.default_rng(1)
    mu_1, mu_2 = rng.normal(size=7), rng.normal(size=7)
    sigma_1, sigma_2 = random_spd(rng, 7), random_spd(rng, 7)  # not commuting
    value = frechet_distance(mu_1, sigma_1, mu_2, sigma_2)
    assert value == pytest.approx(eigen_frechet(mu_1, sigma_1, mu_2, sigma_2), rel=1e-10)
    # fewer samples than dimensions: singular covariances, as with small SR test sets and 2048-d features
    few_1, few_2 = rng.normal(size=(5, 8)), rng.normal(size=(6, 8)) + 0.5
    stats_1, stats_2 = feature_statistics(few_1), feature_statistics(few_2)
    assert fid_from_features(few_1, few_2) == pytest.approx(eigen_frechet(*stats_1, *stats_2), rel=1e-6)


def test_statistics_need_two_samples():
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        feature_statistics(np.zeros((1, 2048)))


def test_parameter_count_is_inception_v3_without_heads():
    # torchvision InceptionV3: 27,161,264 parameters, minus fc (2,049,000) and AuxLogits (3,326,696)
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 21_785_568


def identity_bn(block: torch.nn.Module) -> None:
    block.bn.running_var.fill_(1 - block.bn.eps)  # sqrt(var + eps) = 1, mean 0, gamma 1, beta 0


def test_fid_blocks_pool_without_padding_and_last_block_max_pools():
    torch.manual_seed(0)
    block_a = BlockA(4, pool_features=3).eval()
    ones = torch.ones(1, 4, 6, 6)
    with torch.no_grad():
        pooled = block_a(ones)[:, -3:]  # the pool branch is the last `pool_features` channels
    assert torch.allclose(pooled, pooled[:, :, :1, :1].expand_as(pooled), rtol=0, atol=1e-5)  # borders = centre
    spike = torch.zeros(1, 4, 7, 7)
    spike[0, 0, 3, 3] = 1.0
    for pool, expected in (("max", 1.0), ("avg", 1 / 9)):
        block_e = BlockE(4, pool=pool).eval()
        block_e.branch_pool.conv.weight.data.zero_()
        block_e.branch_pool.conv.weight.data[0, 0] = 1.0
        identity_bn(block_e.branch_pool)
        with torch.no_grad():
            branch = block_e(spike)[0, -192]  # first channel of the pool branch
        window = torch.zeros(7, 7)
        window[2:5, 2:5] = expected
        torch.testing.assert_close(branch, window, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A random FID Inception in the release file's layout: with the 1008-class fc, no num_batches_tracked."""
    torch.manual_seed(0)
    donor = FIDInceptionV3().eval()
    for module in donor.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")  # keeps pool3 away from 0
    state = {k: v for k, v in donor.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    path = tmp_path_factory.mktemp("fid") / WEIGHTS_FILE
    torch.save(state, path)
    return path, donor


def test_weights_load_and_features_are_pool3_of_the_resized_input(weights_file):
    path, donor = weights_file
    model = FIDInceptionV3.from_file(path.parent)
    assert "Mixed_7c.branch_pool.conv.weight" in model.state_dict()
    assert model.Mixed_6b.branch7x7_1.conv.weight.shape == (128, 768, 1, 1)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), rng.integers(0, 256, (299, 299, 3), dtype=np.uint8)]
    features = inception_features(model, images)
    assert features.shape == (2, 2048) and features.dtype == np.float64
    assert features.std() > 0.1
    # the 299 x 299 image goes in unresized; scaled to [-1, 1]; pool3 = spatial mean of Mixed_7c
    x = torch.from_numpy(images[1]).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    with torch.no_grad():
        h = x
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            h = getattr(donor, name)(h)
        h = donor.Conv2d_4a_3x3(donor.Conv2d_3b_1x1(torch.nn.functional.max_pool2d(h, 3, 2)))
        h = torch.nn.functional.max_pool2d(h, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            h = getattr(donor, f"Mixed_{name}")(h)
    assert h.shape == (1, 2048, 8, 8)
    np.testing.assert_allclose(features[1], h.mean(dim=(2, 3))[0].double().numpy(), rtol=FLOAT32_REL, atol=1e-5)


def test_missing_and_mismatched_weights(tmp_path, monkeypatch, weights_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth.*hub/checkpoints"):
        FIDInceptionV3.from_file()
    (tmp_path / "hub" / "pyiqa").mkdir(parents=True)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "hub" / "pyiqa" / WEIGHTS_FILE)
    with pytest.raises(CheckpointMismatchError, match="missing"):
        FIDInceptionV3.from_file()  # found in pyiqa's cache folder, but incomplete

"""DISTS plumbing with a randomly initialised VGG16 (no downloads): layout, formula, weights, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from stablesr.errors import WeightsNotFoundError
from stablesr.metrics.dists import _WEIGHTS_FILE, DISTS, L2Pool


def reference_l2_pool(x: torch.Tensor) -> torch.Tensor:
    """sqrt of x^2 blurred by [1 2 1]^T [1 2 1] / 16 over zero-padded 3x3 windows taken every 2 pixels."""
    padded = F.pad(x * x, (1, 1, 1, 1))
    windows = padded.unfold(2, 3, 2).unfold(3, 3, 2)  # (B, C, H', W', 3, 3)
    weights = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype) / 16
    return torch.sqrt((windows * weights).sum(dim=(-2, -1)) + 1e-12)


def reference_dists(model: DISTS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ding et al. (2020), eq. 9-10, one channel statistic at a time."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype).view(1, 3, 1, 1)
    layers = list(model.features)
    feats = []
    for image in (x, y):
        h, taps = (image - mean) / std, [image]
        for start, stop in ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30)):
            if start:
                h = reference_l2_pool(h)
            for layer in layers[start:stop]:
                h = layer(h)
            taps.append(h)
        feats.append(taps)
    alpha, beta = model.alpha.flatten(), model.beta.flatten()
    total = alpha.sum() + beta.sum()
    score = torch.zeros(x.shape[0], dtype=x.dtype)
    offset = 0
    for tx, ty in zip(*feats):
        for c in range(tx.shape[1]):
            a, b = tx[:, c].flatten(1), ty[:, c].flatten(1)
            ma, mb = a.mean(1), b.mean(1)
            va, vb = a.var(1, unbiased=False), b.var(1, unbiased=False)
            cov = ((a - ma[:, None]) * (b - mb[:, None])).mean(1)
            structure = (2 * ma * mb + 1e-6) / (ma**2 + mb**2 + 1e-6)
            texture = (2 * cov + 1e-6) / (va + vb + 1e-6)
            score = score + (alpha[offset + c] * structure + beta[offset + c] * texture) / total
        offset += tx.shape[1]
    return 1 - score


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("torch")
    state = {f"features.{k}": v for k, v in DISTS().features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry a classifier too
    torch.save(state, folder / "vgg16-397923af.pth")
    return DISTS.from_files(backbone_path=folder).double()


def test_l2_pool_matches_reference_and_keeps_constants():
    x = torch.rand(2, 4, 9, 8, dtype=torch.float64)
    pooled = L2Pool(4).double()(x)
    assert pooled.shape == (2, 4, 5, 4)
    torch.testing.assert_close(pooled, reference_l2_pool(x), rtol=1e-12, atol=1e-12)
    inside = L2Pool(1).double()(torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64))[..., 1:, 1:]
    torch.testing.assert_close(inside, torch.full_like(inside, 0.3), rtol=1e-10, atol=1e-10)


def test_dists_formula_identity_symmetry(model):
    bundled = load_file(_WEIGHTS_FILE)
    assert torch.equal(model.alpha.float(), bundled["alpha"]) and torch.equal(model.beta.float(), bundled["beta"])
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64)  # stage 5 is 2x2
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    distances = model(torch.cat([x, x, y]), torch.cat([y, x, x]))  # d(x, y), d(x, x), d(y, x)
    torch.testing.assert_close(distances[:1], reference_dists(model, x, y), rtol=0, atol=1e-10)  # 1 - sum of 1475 terms
    assert distances[0] > 0
    assert abs(float(distances[1])) < 1e-12
    torch.testing.assert_close(distances[2], distances[0], rtol=1e-12, atol=1e-14)


def test_missing_vgg_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"DISTS needs .*vgg16-397923af\.pth.*hub/checkpoints"):
        DISTS.from_files()

"""LPIPS plumbing with randomly initialised backbones (no downloads): layout, formula, weight loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from stablesr.errors import WeightsNotFoundError
from stablesr.metrics.lpips import _HEADS_FILE, LPIPS

SLICES = {"alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)], "vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]}


def reference_lpips(model: LPIPS, x: torch.Tensor, y: torch.Tensor, backbone: str) -> torch.Tensor:
    """The paper's formula with the backbone cut into the published slices."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy, total = (x - shift) / scale, (y - shift) / scale, torch.zeros(x.shape[0], dtype=x.dtype)
    for (start, stop), head in zip(SLICES[backbone], model.heads):
        for layer in model.features[start:stop]:
            hx, hy = layer(hx), layer(hy)
        nx = hx / (torch.sqrt(torch.sum(hx**2, dim=1, keepdim=True)) + 1e-10)
        ny = hy / (torch.sqrt(torch.sum(hy**2, dim=1, keepdim=True)) + 1e-10)
        weighted = torch.einsum("bchw,c->bhw", (nx - ny) ** 2, head.weight.view(-1))
        total = total + weighted.mean(dim=(1, 2))
    return total


@pytest.mark.parametrize("backbone", ["alex", "vgg"])
def test_lpips_formula_and_identity(backbone, tmp_path):
    torch.manual_seed(0)
    donor = LPIPS(backbone)
    state = {f"features.{k}": v for k, v in donor.features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry a classifier too
    torch.save(state, tmp_path / "backbone.pth")
    model = LPIPS.from_files(backbone, backbone_path=tmp_path / "backbone.pth").double()
    heads = load_file(_HEADS_FILE)
    assert torch.equal(model.heads[0].weight.float(), heads[f"{backbone}.lin0.model.1.weight"])
    size = 64 if backbone == "alex" else 32
    x = torch.rand(2, 3, size, size, dtype=torch.float64) * 2 - 1
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    distance = model(x, y)
    torch.testing.assert_close(distance, reference_lpips(model, x, y, backbone), rtol=1e-10, atol=1e-12)
    assert torch.all(distance > 0)
    torch.testing.assert_close(model(x, x), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(model(y, x), distance, rtol=1e-12, atol=1e-14)


def test_missing_backbone_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"alexnet-owt-7be5be79\.pth.*hub/checkpoints"):
        LPIPS.from_files("alex")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in LPIPS("vgg").features.state_dict().items()},
               tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    assert LPIPS.from_files("vgg").backbone_name == "vgg"  # found in $TORCH_HOME/hub/checkpoints

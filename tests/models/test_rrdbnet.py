"""RRDBNet: the x4plus parameter count and key layout, the forward wiring, and its receptive radius."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stablesr.models.rrdb import ResidualDenseBlock
from stablesr.models.rrdbnet import RRDBNet


def conv_params(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + c_out


def test_x4plus_parameter_count_and_keys():
    model = RRDBNet()
    f, g = 64, 32
    per_rdb = sum(conv_params(f + i * g, g) for i in range(4)) + conv_params(f + 4 * g, f)
    expected = 23 * 3 * per_rdb + conv_params(3, f) + 4 * conv_params(f, f) + conv_params(f, 3)
    assert expected == 16_697_987  # Real-ESRGAN x4plus: 16.7 M parameters
    assert sum(p.numel() for p in model.parameters()) == expected

    keys = {"conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"}
    keys |= {f"body.{b}.rdb{r}.conv{c}" for b in range(23) for r in (1, 2, 3) for c in range(1, 6)}
    assert set(model.state_dict()) == {f"{k}.{p}" for k in keys for p in ("weight", "bias")}
    assert [name for name, _, _ in model.conv_layers()][:3] == ["conv_first", "body.0.rdb1.conv1", "body.0.rdb1.conv2"]
    assert len(model.conv_layers()) == 351


def set_identity_(conv: nn.Conv2d, *, gain: float = 1.0) -> None:
    """Centre-tap identity on the first three channels, zero elsewhere."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    for channel in range(3):
        conv.weight.data[channel, channel, 1, 1] = gain


def test_forward_wiring_with_identity_weights():
    """Identity convs and silent RDBs turn the net into nearest x4 with a known gain and slope."""
    model = RRDBNet(num_features=8, num_blocks=2, growth_channels=4).double()
    for rdb in (m for m in model.modules() if isinstance(m, ResidualDenseBlock)):
        nn.init.zeros_(rdb.conv5.weight)
        nn.init.zeros_(rdb.conv5.bias)  # each RDB is the identity, each RRDB multiplies by 1.2
    for conv in (model.conv_first, model.conv_body, model.conv_up1, model.conv_up2, model.conv_hr, model.conv_last):
        set_identity_(conv)
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    gain = 1 + 1.2**2  # skip + conv_body(body(x))
    slope = 0.2**3  # LeakyReLU after conv_up1, conv_up2 and conv_hr
    expected = F.interpolate(torch.where(x > 0, x * gain, x * gain * slope), scale_factor=4, mode="nearest")
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, 20, 28)
    assert (out - expected).abs().max().item() < 1e-12


def test_receptive_radius_bounds_the_influence_of_one_pixel():
    torch.manual_seed(0)
    model = RRDBNet(num_features=8, num_blocks=1, growth_channels=4).double()
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.normal_(conv.weight, std=1.0)  # large weights: no influence rounds away
    radius = model.receptive_radius()
    assert radius == 19  # 17 LR convs + 2 px for the convs at 2x and 4x
    x = torch.rand(1, 3, 48, 48, dtype=torch.float64)
    x_moved = x.clone()
    x_moved[..., 24, 24] += 1.0
    with torch.no_grad():
        changed = (model(x_moved) - model(x)).abs().amax(dim=(0, 1)) > 0  # (4H, 4W)
    rows, cols = torch.nonzero(changed, as_tuple=True)
    reach = max((rows // 4 - 24).abs().max().item(), (cols // 4 - 24).abs().max().item())
    assert radius - 2 <= reach <= radius

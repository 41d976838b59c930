"""SFTLayer: exact identities and the formula GroupNorm(h) * (1 + gamma(c)) + beta(c)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conftest import FLOAT32_REL
from stablesr.models.sft import SFTLayer


def _seeded_layer(channels: int = 32, cond_channels: int = 8, hidden_channels: int = 16) -> SFTLayer:
    torch.manual_seed(0)
    layer = SFTLayer(channels, cond_channels=cond_channels, hidden_channels=hidden_channels)
    with torch.no_grad():  # non-trivial affine GroupNorm, like trained weights
        layer.norm.weight.normal_(1.0, 0.1)
        layer.norm.bias.normal_(0.0, 0.1)
    return layer


def test_zero_gamma_beta_returns_group_norm_exactly():
    layer = _seeded_layer()
    for conv in (layer.to_gamma, layer.to_beta):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    h = torch.randn(2, 32, 6, 10)
    cond = torch.randn(2, 8, 6, 10)
    expected = F.group_norm(h, 32, layer.norm.weight, layer.norm.bias, 1e-5)
    assert torch.equal(layer(h, cond), expected)


def test_matches_formula_written_out():
    layer = _seeded_layer()
    h, cond = torch.randn(2, 32, 5, 7), torch.randn(2, 8, 5, 7)
    hidden = torch.relu(F.conv2d(cond, layer.cond_conv.weight, layer.cond_conv.bias, padding=1))
    gamma = F.conv2d(hidden, layer.to_gamma.weight, layer.to_gamma.bias, padding=1)
    beta = F.conv2d(hidden, layer.to_beta.weight, layer.to_beta.bias, padding=1)
    mean = h.reshape(2, 32, -1).mean(-1)[..., None, None]  # 32 groups of 1 channel
    var = h.reshape(2, 32, -1).var(-1, unbiased=False)[..., None, None]
    normed = (h - mean) / torch.sqrt(var + 1e-5) * layer.norm.weight[:, None, None] + layer.norm.bias[:, None, None]
    torch.testing.assert_close(layer(h, cond), normed * (1 + gamma) + beta, rtol=FLOAT32_REL, atol=FLOAT32_REL)


def test_group_norm_runs_in_float32_and_casts_back():
    layer = _seeded_layer().to(torch.bfloat16)
    for conv in (layer.to_gamma, layer.to_beta):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    h = (torch.randn(1, 32, 4, 4) * 50 + 300).to(torch.bfloat16)  # large mean: bf16 statistics would drift
    out = layer(h, torch.randn(1, 8, 4, 4, dtype=torch.bfloat16))
    weight, bias = layer.norm.weight.float(), layer.norm.bias.float()
    expected = F.group_norm(h.float(), 32, weight, bias, 1e-5).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_gradients_reach_every_parameter():
    layer = _seeded_layer()
    h = torch.randn(1, 32, 4, 4)
    layer(h, torch.randn(1, 8, 4, 4)).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_parameter_count_follows_the_architecture():
    layer = SFTLayer(320)  # official widths: cond 256 -> hidden 128 -> 320
    shared = 256 * 128 * 9 + 128
    gamma_beta = 2 * (128 * 320 * 9 + 320)
    assert sum(p.numel() for p in layer.parameters()) == 2 * 320 + shared + gamma_beta


def test_a_condition_shared_by_groups_of_the_batch_is_broadcast():
    layer = _seeded_layer()
    h, cond = torch.randn(6, 32, 5, 7), torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        shared = layer(h, cond)
        repeated = layer(h, torch.cat([cond] * 3))  # sample i meets condition i mod 2
    torch.testing.assert_close(shared, repeated, rtol=FLOAT32_REL, atol=FLOAT32_REL)

"""TimeAwareEncoder: size of the official config, output keys, batch independence, attention maths."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FLOAT32_REL
from stablesr.models.time_aware_encoder import SelfAttention2d, TimeAwareEncoder

TINY = {"model_channels": 64, "out_channels": 32, "num_res_blocks": 1, "channel_mult": (1, 2), "num_heads": 2}


@pytest.fixture(scope="module")
def tiny_encoder() -> TimeAwareEncoder:
    torch.manual_seed(0)
    return TimeAwareEncoder(**TINY).eval()


def test_official_config_has_52_494_080_parameters():
    with torch.device("meta"):
        encoder = TimeAwareEncoder()
    assert sum(p.numel() for p in encoder.parameters()) == 52_494_080


def test_default_output_keys_are_widths_of_four_levels():
    with torch.device("meta"):
        out = TimeAwareEncoder()(torch.empty(1, 4, 48, 80), torch.zeros(1, dtype=torch.long))
    assert {w: tuple(f.shape) for w, f in out.items()} == {
        80: (1, 256, 48, 80),
        40: (1, 256, 24, 40),
        20: (1, 256, 12, 20),
        10: (1, 256, 6, 10),
    }


def test_odd_sizes_round_up_like_stride_two_convs(tiny_encoder):
    out = tiny_encoder(torch.randn(1, 4, 9, 13), torch.tensor([3]))
    assert {w: tuple(f.shape) for w, f in out.items()} == {13: (1, 32, 9, 13), 7: (1, 32, 5, 7)}


def test_batch_entries_are_independent(tiny_encoder):
    torch.manual_seed(1)
    lr_latent, t = torch.randn(2, 4, 8, 12), torch.tensor([999, 10])
    with torch.no_grad():
        batched = tiny_encoder(lr_latent, t)
        singles = [tiny_encoder(lr_latent[i : i + 1], t[i : i + 1]) for i in range(2)]
    for width, feat in batched.items():
        torch.testing.assert_close(feat, torch.cat([s[width] for s in singles]), rtol=FLOAT32_REL, atol=FLOAT32_REL)


def test_timestep_changes_every_output(tiny_encoder):
    lr_latent = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        early, late = tiny_encoder(lr_latent, torch.tensor([10])), tiny_encoder(lr_latent, torch.tensor([900]))
    for width in early:
        assert (early[width] - late[width]).abs().max() > 1e-3


def test_self_attention_matches_softmax_formula():
    torch.manual_seed(2)
    attention = SelfAttention2d(64, num_heads=4).double()
    x = torch.randn(2, 64, 3, 5, dtype=torch.float64)
    tokens = attention.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    heads = [slice(16 * i, 16 * (i + 1)) for i in range(4)]
    q, k, v = attention.to_q(tokens), attention.to_k(tokens), attention.to_v(tokens)
    per_head = [
        torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(16), dim=-1) @ v[..., s] for s in heads
    ]
    expected = x + attention.to_out(torch.cat(per_head, dim=-1)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(attention(x), expected, rtol=1e-10, atol=1e-10)


def test_save_and_load_round_trip(tmp_path, tiny_encoder):
    tiny_encoder.save_pretrained(tmp_path)
    loaded = TimeAwareEncoder.from_pretrained(tmp_path)
    lr_latent, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        for width, feat in tiny_encoder(lr_latent, t).items():
            torch.testing.assert_close(loaded(lr_latent, t)[width], feat, rtol=1e-6, atol=1e-6)

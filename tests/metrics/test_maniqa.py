"""MANIQA with tiny seeded models (no downloads): ViT, Swin windows and mask, TAB, crops, loading, and
scores against pyiqa's own code (tests/metrics/data/maniqa_tiny_reference.safetensors, see maniqa_README.md)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import FLOAT32_REL
from stablesr.errors import CheckpointMismatchError, WeightsNotFoundError
from stablesr.metrics.maniqa import (
    MANIQA,
    MANIQAConfig,
    TransposedAttention,
    crop_images,
    relative_position_index,
    score_image,
    seeded_random_crop_positions,
    shifted_window_mask,
    uniform_crop_positions,
    window_merge,
    window_partition,
)
from stablesr.metrics.vit import VisionTransformer
from stablesr.weights.io import save_state_dict

REFERENCE_FILE = Path(__file__).parent / "data" / "maniqa_tiny_reference.safetensors"


def pattern_image(height: int, width: int, offset: int) -> np.ndarray:
    """A deterministic busy (H, W, 3) uint8 image (the fixture's inputs, see maniqa_README.md)."""
    rows, cols, channels = np.arange(height)[:, None, None], np.arange(width)[None, :, None], np.arange(3)
    return ((rows * 37 + cols * 11 + channels * 71 + offset) * (rows + 3 * cols + 1) % 256).astype(np.uint8)


def randomised(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Every float parameter redrawn from N(0, std^2), so no layer sits at its zero/identity init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * std)
    return model.eval()


# ---------------------------------------------------------------- ViT


def reference_block_outputs(vit: VisionTransformer, images: torch.Tensor, num_heads: int) -> list[torch.Tensor]:
    """The ViT written out: conv patches, explicit per-head softmax attention, erf GELU."""
    weight = vit.patch_embed.proj.weight
    patches = F.conv2d(images, weight, vit.patch_embed.proj.bias, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    tokens = torch.cat([vit.cls_token.expand(len(images), -1, -1), patches], dim=1) + vit.pos_embed
    dim, outputs = tokens.shape[-1], []
    head_dim = dim // num_heads
    for block in vit.blocks:
        normed = F.layer_norm(tokens, (dim,), block.norm1.weight, block.norm1.bias, eps=1e-6)
        q, k, v = (normed @ block.attn.qkv.weight.T + block.attn.qkv.bias).split(dim, dim=-1)
        heads = []
        for head in range(num_heads):
            part = slice(head * head_dim, (head + 1) * head_dim)
            weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(head_dim), dim=-1)
            heads.append(weights @ v[..., part])
        tokens = tokens + torch.cat(heads, dim=-1) @ block.attn.proj.weight.T + block.attn.proj.bias
        normed = F.layer_norm(tokens, (dim,), block.norm2.weight, block.norm2.bias, eps=1e-6)
        hidden = normed @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
        tokens = tokens + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
        outputs.append(tokens)
    return outputs


def test_vit_matches_written_out_transformer():
    vit = VisionTransformer(image_size=24, patch_size=8, dim=12, depth=3, num_heads=3, mlp_dim=20, num_classes=5)
    vit = randomised(vit, seed=1).double()
    images = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    outputs = vit(images, num_blocks=3)
    expected = reference_block_outputs(vit, images, num_heads=3)
    assert [tuple(output.shape) for output in outputs] == [(2, 10, 12)] * 3
    for output, reference in zip(outputs, expected):
        torch.testing.assert_close(output, reference, rtol=1e-12, atol=1e-12)
    assert len(vit(images, num_blocks=2)) == 2
    assert set(vit.state_dict()) >= {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.2.attn.qkv.bias",
                                     "blocks.0.mlp.fc2.weight", "norm.weight", "head.bias"}


def test_maniqa_taps_blocks_six_to_nine_without_class_token():
    model = randomised(MANIQA(MANIQAConfig.tiny()), seed=3).double()
    crops = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    outputs = model.vit(crops, num_blocks=10)
    expected = torch.cat([outputs[index][:, 1:] for index in (6, 7, 8, 9)], dim=2).transpose(1, 2)
    torch.testing.assert_close(model.vit_features(crops), expected, rtol=0, atol=0)
    assert model.vit_features(crops).shape == (2, 4 * 8, 64)


# ---------------------------------------------------------------- Swin windows, mask, bias index


def test_window_partition_is_row_major_tiles_and_merge_inverts_it():
    x = torch.randn(2, 8, 12, 5, generator=torch.Generator().manual_seed(5))
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5)
    for batch in range(2):
        for row in range(2):
            for col in range(3):
                tile = x[batch, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4].reshape(16, 5)
                assert torch.equal(windows[batch * 6 + row * 3 + col], tile)
    assert torch.equal(window_merge(windows, 4, 8, 12), x)


def test_shifted_window_mask_blocks_tokens_that_wrapped_around_differently():
    height, width, window, shift = 8, 12, 4, 2
    mask = shifted_window_mask(height, width, window, shift)
    expected = torch.zeros(6, 16, 16)
    for index in range(6):
        top, left = (index // 3) * window, (index % 3) * window
        cells = [(top + a // window, left + a % window) for a in range(16)]
        # a token of the rolled map at (r, c) came from (r + shift, c + shift) mod size: wrapped if that overflowed
        wrapped = [(r + shift >= height, c + shift >= width) for r, c in cells]
        for a in range(16):
            for b in range(16):
                expected[index, a, b] = 0.0 if wrapped[a] == wrapped[b] else -100.0
    assert torch.equal(mask, expected)
    assert mask[0].eq(0).all() and mask[-1].eq(-100).any()


def test_relative_position_index_counts_offsets():
    window = 3
    index = relative_position_index(window)
    for a in range(9):
        for b in range(9):
            dy, dx = a // window - b // window, a % window - b % window
            assert index[a, b] == (dy + window - 1) * (2 * window - 1) + dx + window - 1
    assert index.max() == (2 * window - 1) ** 2 - 1 and index.diagonal().eq(index[0, 0]).all()


# ---------------------------------------------------------------- TAB and the patch-weighted score


def test_transposed_attention_matches_formula_with_token_major_reflow():
    tab = randomised(TransposedAttention(6), seed=6).double()
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # (B, C, N)
    expected = torch.empty_like(x)
    for batch in range(2):
        q, k, v = (x[batch] @ layer.weight.T + layer.bias for layer in (tab.c_q, tab.c_k, tab.c_v))
        attention = torch.exp(q @ k.T / math.sqrt(6))
        attention = attention / attention.sum(dim=1, keepdim=True)  # (C, C), rows sum to 1
        product = attention @ v  # (C, N)
        flat = [product[channel, token] for token in range(6) for channel in range(4)]  # token-major read
        expected[batch] = torch.stack(flat).view(4, 6) + x[batch]
    torch.testing.assert_close(tab(x), expected, rtol=1e-12, atol=1e-12)


def test_score_is_weight_averaged_over_all_patches_of_all_crops():
    model = randomised(MANIQA(MANIQAConfig.tiny()), seed=8, std=0.1).double()
    crops = torch.randn(2, 3, 3, 224, 224, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    scores = model(crops)
    for image in range(2):
        features = model.patch_features(crops[image])  # (3, 64, 4)
        patch_scores = torch.relu(model.fc_score[3](torch.relu(model.fc_score[0](features))))
        patch_weights = torch.sigmoid(model.fc_weight[3](torch.relu(model.fc_weight[0](features))))
        expected = (patch_scores * patch_weights).sum() / (patch_weights.sum() + 1e-8)
        torch.testing.assert_close(scores[image], expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- crops


def test_uniform_crop_positions_follow_pyiqa_grid():
    positions = uniform_crop_positions(260, 300, crop_size=224, count=20)  # steps 36 // 4 = 9, 76 // 4 = 19
    assert positions == [(9 * row, 19 * col) for row in range(4) for col in range(5)]
    assert uniform_crop_positions(230, 224, crop_size=224, count=5) == [(0, 0), (0, 0), (0, 0), (3, 0), (3, 0)]


def test_seeded_random_positions_replay_numpy_seed_123():
    saved = np.random.get_state()
    try:
        np.random.seed(123)
        expected = [(np.random.randint(0, 300 - 224 + 1), np.random.randint(0, 250 - 224 + 1)) for _ in range(20)]
    finally:
        np.random.set_state(saved)
    assert seeded_random_crop_positions(300, 250, crop_size=224, count=20) == expected


def bilinear_by_factor(images: torch.Tensor, factor: float, size: tuple[int, int]) -> torch.Tensor:
    """Half-pixel bilinear resampling whose source step is 1 / factor (not in_size / out_size), edges clamped."""

    def taps(out_length: int, in_length: int):
        source = ((torch.arange(out_length, dtype=torch.float64) + 0.5) / factor - 0.5).clamp(min=0)
        low = source.floor().long()
        return low, (low + 1).clamp(max=in_length - 1), source - low

    (top, bottom, fy), (left, right, fx) = taps(size[0], images.shape[-2]), taps(size[1], images.shape[-1])
    x = images.double()
    rows = x[..., top, :] * (1 - fy)[:, None] + x[..., bottom, :] * fy[:, None]
    return rows[..., left] * (1 - fx) + rows[..., right] * fx


def test_crop_images_enlarges_short_images_and_slices_at_the_positions():
    images = torch.rand(2, 3, 60, 90, generator=torch.Generator().manual_seed(10))
    crops = crop_images(images, crop_size=224, count=20)
    enlarged = bilinear_by_factor(images, 225 / 60, (225, 337)).float()  # 90 * 3.75 = 337.5 rounds down
    assert crops.shape == (2, 20, 3, 224, 224)
    for index, (top, left) in enumerate(uniform_crop_positions(225, 337, crop_size=224, count=20)):
        torch.testing.assert_close(crops[:, index], enlarged[..., top : top + 224, left : left + 224],
                                   rtol=0, atol=2e-5)  # float32 coordinates; size-based steps miss by ~0.1
    large = torch.rand(1, 3, 230, 240, generator=torch.Generator().manual_seed(11))
    assert torch.equal(crop_images(large, crop_size=224, count=20)[0, -1], large[0, :, 3:227, 16:240])


# ---------------------------------------------------------------- scores against pyiqa, loading


@pytest.fixture(scope="module")
def reference():
    return load_file(REFERENCE_FILE)


@pytest.fixture(scope="module")
def reference_checkpoint(reference, tmp_path_factory) -> Path:
    """The fixture's fp16 weights as float32, saved as pyiqa would: a bare state dict in a .pt file."""
    state = {key.removeprefix("weights."): value.float() if value.is_floating_point() else value
             for key, value in reference.items() if key.startswith("weights.")}
    path = tmp_path_factory.mktemp("maniqa") / "ckpt_koniq10k.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("crops", ["uniform", "seeded_random"])
def test_scores_match_pyiqa_on_tiny_weights(reference, reference_checkpoint, crops):
    model = MANIQA.from_file(reference_checkpoint, config=MANIQAConfig.tiny())
    for name, image in (("large", pattern_image(236, 250, 5)), ("small", pattern_image(60, 90, 9))):
        expected = reference[f"score.{name}.{crops}"].item()
        assert score_image(model, image, crops=crops) == pytest.approx(expected, rel=FLOAT32_REL)
    # pyiqa's buffers (relative position index, shifted-window masks) equal the ones built here
    fresh = MANIQA(MANIQAConfig.tiny())
    for key, value in fresh.named_buffers():
        assert torch.equal(value, reference[f"weights.{key}"].to(value.dtype)), key


def test_round_trip_through_pt_and_safetensors_is_exact(tmp_path):
    model = randomised(MANIQA(MANIQAConfig.tiny()), seed=12, std=0.1)
    torch.save({f"module.{key}": value for key, value in model.state_dict().items()}, tmp_path / "ckpt_kadid10k.pt")
    save_state_dict(model.state_dict(), tmp_path / "weights.safetensors")
    image = pattern_image(240, 230, 3)
    expected = score_image(model, image)
    for loaded in (MANIQA.from_file(tmp_path, variant="kadid", config=MANIQAConfig.tiny()),  # folder + file name
                   MANIQA.from_file(tmp_path / "weights.safetensors", config=MANIQAConfig.tiny())):
        assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())
        assert score_image(loaded, image) == expected
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_wrong_shapes_are_named(tmp_path):
    save_state_dict(MANIQA(MANIQAConfig.tiny()).state_dict(), tmp_path / "tiny.safetensors")
    wider = dataclasses.replace(MANIQAConfig.tiny(), dim=12)
    with pytest.raises(CheckpointMismatchError, match=r"shape: vit\.cls_token \(1, 1, 8\) \(model \(1, 1, 12\)\)"):
        MANIQA.from_file(tmp_path / "tiny.safetensors", config=wider)


def test_missing_checkpoint_names_file_and_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"ckpt_koniq10k\.pt.*hub/pyiqa"):
        MANIQA.from_file()
    with pytest.raises(WeightsNotFoundError, match=r"MANIQA_PIPAL-ae6d356b\.pth"):
        MANIQA.from_file(tmp_path, variant="pipal")
    cache = tmp_path / "hub" / "pyiqa"
    cache.mkdir(parents=True)
    torch.save(MANIQA(MANIQAConfig.tiny()).state_dict(), cache / "ckpt_koniq10k.pt")
    assert MANIQA.from_file(config=MANIQAConfig.tiny()).config == MANIQAConfig.tiny()  # found in the cache


def test_wrong_keys_are_named(tmp_path):
    state = MANIQA(MANIQAConfig.tiny()).state_dict()
    state.pop("fc_weight.3.bias")
    state["vit.fc_norm.weight"] = torch.ones(8)
    save_state_dict(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing: fc_weight\.3\.bias.*unexpected: vit\.fc_norm\.weight"):
        MANIQA.from_file(tmp_path / "bad.safetensors", config=MANIQAConfig.tiny())


def test_bad_inputs_raise_one_clear_error():
    model = MANIQA(MANIQAConfig.tiny())
    with pytest.raises(ValueError, match="uint8 RGB"):
        score_image(model, np.zeros((240, 240), dtype=np.uint8))
    with pytest.raises(ValueError, match="variant"):
        MANIQA.from_file(variant="spaq")
    with pytest.raises(ValueError, match="window"):
        MANIQAConfig(image_size=224, patch_size=8, window_size=5)

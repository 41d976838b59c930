"""MUSIQ on tiny seeded models (no downloads): multi-scale patches against direct crops and pyiqa's own output,
the network against a second implementation that drops padding instead of masking it, checkpoint loading."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import FLOAT32_REL
from stablesr.errors import CheckpointMismatchError, WeightsNotFoundError
from stablesr.metrics.musiq import (
    MUSIQ,
    TINY_CONFIG,
    MUSIQConfig,
    PatchSequence,
    grid_indices,
    hashed_positions,
    multiscale_patches,
    resize_longer_side,
    score_image,
)

FIXTURE = Path(__file__).parent / "data" / "musiq_tiny_reference.safetensors"
KONIQ_FILE = "musiq_koniq_ckpt-e95806b9.pth"


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def seeded_model(config: MUSIQConfig = TINY_CONFIG, seed: int = 0) -> MUSIQ:
    """Every parameter random (GroupNorm / LayerNorm affines and biases too), so no term is trivially 1 or 0."""
    torch.manual_seed(seed)
    model = MUSIQ(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def batch_of(sequence: PatchSequence) -> list[torch.Tensor]:
    return [tensor[None] for tensor in sequence]  # (N, ...) -> (1, N, ...)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------


def test_grid_indices_follow_the_float32_nearest_rule():
    # rows floor(i * 10 / 2) = 0, 5; columns floor(j * 10 / 3) = 0, 3, 6
    assert hashed_positions(2, 3, grid_size=10).tolist() == [0, 3, 6, 50, 53, 56]
    for grid_size in (4, 10):
        for count in range(1, 260):
            position = np.arange(count, dtype=np.float32)
            step = np.float32(grid_size) / np.float32(count)  # float32 / float32 -> float32
            expected = np.minimum(np.floor(position * step), grid_size - 1)
            assert grid_indices(count, grid_size).tolist() == expected.astype(int).tolist()
    assert all(grid_indices(count, 10).tolist() == [i * 10 // count for i in range(count)] for count in range(1, 205))
    assert grid_indices(205, 10).tolist() != [i * 10 // 205 for i in range(205)]  # float32 rounding, as in pyiqa


def test_resize_keeps_the_aspect_ratio_and_constants():
    assert resize_longer_side(torch.zeros(3, 40, 72), 32).shape == (3, 18, 32)  # 40 * 32 / 72 = 17.8 -> 18
    assert resize_longer_side(torch.zeros(3, 37, 70), 16).shape == (3, 8, 16)  # 8.46 -> 8
    assert resize_longer_side(torch.zeros(3, 10, 5), 384).shape == (3, 384, 192)  # small images are enlarged
    grey = torch.full((3, 37, 70), 0.25)
    torch.testing.assert_close(resize_longer_side(grey, 32), torch.full((3, 17, 32), 0.25), rtol=0, atol=1e-6)


def test_patch_counts_masks_and_padding_rows():
    sequence = multiscale_patches(random_image(37, 70), config=TINY_CONFIG)
    # scale 0: 8 x 16 -> 1 x 2 patches of 4 rows; scale 1: 17 x 32 -> 3 x 4 of 16; original 37 x 70 -> 5 x 9
    real = [(0, 2, 4), (1, 12, 16), (2, 45, 45)]
    start = 0
    for scale_id, count, length in real:
        block = slice(start, start + length)
        assert sequence.mask[block].tolist() == [True] * count + [False] * (length - count)
        assert sequence.scale_ids[block][:count].eq(scale_id).all()
        start += length
    assert len(sequence.mask) == start == 65
    padding = ~sequence.mask
    assert padding.sum() == 2 + 4
    assert sequence.patches[padding].eq(0).all() and sequence.spatial_positions[padding].eq(0).all()
    assert sequence.scale_ids[padding].eq(0).all()
    assert sequence.spatial_positions[4:16].tolist() == hashed_positions(3, 4, grid_size=4).tolist()
    assert sequence.spatial_positions[20:].tolist() == hashed_positions(5, 9, grid_size=4).tolist()


def test_original_scale_patches_are_centred_crops_in_minus_one_to_one():
    image = random_image(37, 70, seed=3)
    x = torch.from_numpy(image).permute(2, 0, 1).double() / 255 * 2 - 1  # (3, H, W) in [-1, 1]
    patches = multiscale_patches(image, config=TINY_CONFIG).patches[20:].double()  # the 5 x 9 original patches
    # 37 -> 40 rows: 1 zero row on top, 2 at the bottom; 70 -> 72 columns: 1 zero column each side
    inner = patches[2 * 9 + 3].view(3, 8, 8)  # row 2, column 3 covers image rows 15..22, columns 23..30
    torch.testing.assert_close(inner, x[:, 15:23, 23:31], rtol=0, atol=1e-7)
    corner = torch.zeros(3, 8, 8, dtype=torch.float64)
    corner[:, 1:, 1:] = x[:, :7, :7]
    torch.testing.assert_close(patches[0].view(3, 8, 8), corner, rtol=0, atol=1e-7)
    last = torch.zeros(3, 8, 8, dtype=torch.float64)
    last[:, :6, :7] = x[:, 31:, 63:]
    torch.testing.assert_close(patches[-1].view(3, 8, 8), last, rtol=0, atol=1e-7)


def test_tokens_and_scores_equal_pyiqa_reference():
    """The fixture holds pyiqa's own musiq_arch.py output on tiny float16-exact weights (see data/musiq_README.md)."""
    fixture = load_file(FIXTURE)
    image = fixture["image"].numpy()
    sequence = multiscale_patches(image, config=TINY_CONFIG)
    tokens = torch.cat([sequence.patches, torch.stack(sequence[1:], dim=1).float()], dim=1)  # pyiqa's packed layout
    assert torch.equal(tokens, fixture["pyiqa.tokens"])
    weights = {key[len("weights."):]: value.float() for key, value in fixture.items() if key.startswith("weights.")}
    model = MUSIQ(TINY_CONFIG).eval()
    model.load_state_dict(weights)
    assert score_image(model, image) == pytest.approx(float(fixture["pyiqa.score"][0]), rel=FLOAT32_REL, abs=1e-5)
    ava = MUSIQ(replace(TINY_CONFIG, num_classes=10)).eval()
    heads = {key[len("ava_head."):]: value.float() for key, value in fixture.items() if key.startswith("ava_head.")}
    ava.load_state_dict({**{k: v for k, v in weights.items() if not k.startswith("head.")}, **heads})
    assert score_image(ava, image) == pytest.approx(float(fixture["pyiqa.ava_score"][0]), rel=FLOAT32_REL)


# ---------------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------------


def standardized(weight: torch.Tensor) -> torch.Tensor:
    variance, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, correction=1)
    return (weight - mean) / (variance.sqrt() + 1e-5)


def reference_stem(model: MUSIQ, pixels: torch.Tensor) -> torch.Tensor:
    """The 8 x 8 tiny-patch stem with hand-computed 'SAME' paddings: (M, 3, 8, 8) -> (M, 2, 2, 256)."""
    block = model.block1

    def group_norm(x, norm):
        return F.group_norm(x, 32, norm.weight, norm.bias, norm.eps)

    h = F.conv2d(F.pad(pixels, (2, 3, 2, 3)), standardized(model.conv_root.weight), stride=2)  # 8 -> 4
    h = F.relu(group_norm(h, model.gn_root))
    h = F.max_pool2d(F.pad(h, (0, 1, 0, 1)), 3, stride=2)  # 4 -> 2
    shortcut = group_norm(F.conv2d(h, standardized(block.conv_proj.weight)), block.gn_proj)
    y = F.relu(group_norm(F.conv2d(h, standardized(block.conv1.weight)), block.gn1))
    y = F.relu(group_norm(F.conv2d(F.pad(y, (1, 1, 1, 1)), standardized(block.conv2.weight)), block.gn2))
    y = F.relu(group_norm(F.conv2d(y, standardized(block.conv3.weight)), block.gn3) + shortcut)
    return y.permute(0, 2, 3, 1)


def reference_score(model: MUSIQ, sequence: PatchSequence) -> torch.Tensor:
    """Real tokens only (padding dropped, no mask), attention by scaled_dot_product_attention."""
    real = sequence.mask
    pixels = sequence.patches[real].view(-1, 3, 8, 8).to(model.embedding.weight)
    encoder = model.transformer_encoder
    x = model.embedding(reference_stem(model, pixels).flatten(1))
    x = x + encoder.posembed_input.position_emb[0, sequence.spatial_positions[real]]
    x = x + encoder.scaleembed_input.scale_emb[sequence.scale_ids[real]]
    x = torch.cat([encoder.cls[0], x])[None]  # (1, 1 + n, D)
    for layer in encoder.transformer.values():
        attention, heads = layer.attention, layer.attention.num_heads
        y = F.layer_norm(x, x.shape[-1:], layer.norm1.weight, layer.norm1.bias, 1e-6)
        q, k, v = (F.linear(y, p.weight, p.bias).unflatten(-1, (heads, -1)).transpose(1, 2)
                   for p in (attention.query, attention.key, attention.value))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + attention.out(y)
        y = F.layer_norm(x, x.shape[-1:], layer.norm2.weight, layer.norm2.bias, 1e-6)
        x = x + layer.mlp.fc2(F.gelu(layer.mlp.fc1(y)))
    cls = F.layer_norm(x[0, 0], x.shape[-1:], encoder.encoder_norm.weight, encoder.encoder_norm.bias, 1e-6)
    head = model.head if isinstance(model.head, torch.nn.Linear) else model.head[0]
    logits = head(cls)
    if logits.numel() == 1:
        return logits[0]
    probabilities = logits.exp() / logits.exp().sum()
    return (probabilities * torch.arange(1.0, 11.0, dtype=logits.dtype)).sum()


@pytest.mark.parametrize("num_classes", [1, 10])
def test_forward_equals_an_unmasked_reimplementation(num_classes):
    model = seeded_model(replace(TINY_CONFIG, num_classes=num_classes)).double()
    sequence = multiscale_patches(random_image(37, 70, seed=1), config=TINY_CONFIG)
    assert (~sequence.mask).sum() == 6  # padding rows present: the mask has to hide them
    with torch.no_grad():
        score = model(sequence.patches[None].double(), *batch_of(sequence)[1:])[0]
        expected = reference_score(model, sequence)
    torch.testing.assert_close(score, expected, rtol=0, atol=1e-10)
    if num_classes == 10:
        assert 1 < float(score) < 10


def test_padding_content_and_token_order_do_not_matter():
    model = seeded_model().double()
    sequence = multiscale_patches(random_image(40, 50, seed=2), config=TINY_CONFIG)
    padding = ~sequence.mask
    with torch.no_grad():
        score = model(sequence.patches[None].double(), *batch_of(sequence)[1:])
        noisy = sequence.patches.double().clone()
        noisy[padding] = torch.randn_like(noisy[padding])
        positions, scales = sequence.spatial_positions.clone(), sequence.scale_ids.clone()
        positions[padding], scales[padding] = 15, 2
        assert torch.equal(model(noisy[None], positions[None], scales[None], sequence.mask[None]), score)
        order = torch.randperm(len(sequence.mask), generator=torch.Generator().manual_seed(0))
        shuffled = [tensor[order][None] for tensor in sequence]
        torch.testing.assert_close(model(shuffled[0].double(), *shuffled[1:]), score, rtol=0, atol=1e-12)


def test_full_size_parameter_layout_is_the_checkpoints():
    koniq = MUSIQ().state_dict()
    assert len(koniq) == 248  # 17 stem / embedding + 3 + 14 x 16 encoder + 2 norm + 2 head
    assert koniq["embedding.weight"].shape == (384, 256 * 8 * 8)
    assert koniq["transformer_encoder.posembed_input.position_emb"].shape == (1, 100, 384)
    assert koniq["transformer_encoder.scaleembed_input.scale_emb"].shape == (3, 384)
    assert koniq["transformer_encoder.transformer.encoderblock_13.mlp.fc1.weight"].shape == (1152, 384)
    assert koniq["head.weight"].shape == (1, 384)
    ava = MUSIQ(MUSIQConfig(num_classes=10)).state_dict()
    assert ava["head.0.weight"].shape == (10, 384) and "head.weight" not in ava


# ---------------------------------------------------------------------------------------------------------------
# Loading and errors
# ---------------------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_from_path_folder_and_cache(tmp_path, monkeypatch):
    model = seeded_model(seed=4)
    state = OrderedDict((key, value.clone()) for key, value in model.state_dict().items())  # pyiqa: a bare state dict
    cache = tmp_path / "hub" / "pyiqa"
    cache.mkdir(parents=True)
    torch.save(state, cache / KONIQ_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    image = random_image(30, 45, seed=5)
    expected = score_image(model, image)
    for path in (None, cache, cache / KONIQ_FILE):
        loaded = MUSIQ.from_file(path, config=TINY_CONFIG)
        assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state.items())
        assert not loaded.training and score_image(loaded, image) == expected


def test_missing_checkpoint_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = str(tmp_path / "hub" / "pyiqa")
    with pytest.raises(WeightsNotFoundError, match=rf"musiq_spaq_ckpt-358bb6af\.pth.*{folder}"):
        MUSIQ.from_file(dataset="spaq")
    with pytest.raises(WeightsNotFoundError, match=r"musiq_ava_ckpt-e8d3f067\.pth"):
        MUSIQ.from_file(tmp_path, dataset="ava")


def test_wrong_keys_or_shapes_raise_mismatch(tmp_path):
    state = seeded_model().state_dict()
    renamed = {key.replace("gn_root", "bn_root"): value for key, value in state.items()}
    torch.save(renamed, tmp_path / KONIQ_FILE)
    with pytest.raises(CheckpointMismatchError, match=r"missing \['gn_root.bias'.*unexpected \['bn_root.bias'"):
        MUSIQ.from_file(tmp_path, config=TINY_CONFIG)
    torch.save(state, tmp_path / KONIQ_FILE)
    with pytest.raises(CheckpointMismatchError, match=r"other shapes \['embedding.bias'"):
        MUSIQ.from_file(tmp_path, config=replace(TINY_CONFIG, hidden_size=32))
    with pytest.raises(CheckpointMismatchError, match=r"missing \['head.0.bias'"):
        MUSIQ.from_file(tmp_path, config=replace(TINY_CONFIG, num_classes=10))


def test_bad_images_are_refused():
    model = seeded_model()
    with pytest.raises(ValueError, match="uint8"):
        score_image(model, random_image(20, 20).astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        score_image(model, random_image(20, 20)[..., 0])
    with pytest.raises(ValueError, match=r"\(3, H, W\) float"):
        multiscale_patches(torch.zeros(20, 20, 3))

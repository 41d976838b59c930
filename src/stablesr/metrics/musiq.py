"""MUSIQ: no-reference image quality from a transformer over multi-scale patches (higher is better).

Ke, Wang, Wang, Milanfar & Yang, "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021,
https://arxiv.org/abs/2108.05997

    x in [0, 1] -> 2x - 1; scales s = 0 .. S-2: x resized (bicubic) to longer side L_s, aspect kept; s = S-1: x
    each scale: zero-padded to a multiple of P (TF 'SAME', centred), cut into P x P patches p_(s,i,j)
    token = Embed(ResNet stem(p)) + E_hash[G * floor(i G / rows) + floor(j G / cols)] + E_scale[s]
    resized scales padded to ceil(L_s / P)^2 tokens with mask 0; [CLS] prepended with mask 1
    14 pre-norm encoder layers (attention logits of masked pairs set to -1e3) -> LayerNorm -> head([CLS])
    score = head output (KonIQ, SPAQ, PaQ-2-PiQ: ~0..100), or sum_k k softmax(head)_k, k = 1..10 (AVA)

This is the PyTorch port that pyiqa's `musiq` / `musiq-ava` / `musiq-spaq` / `musiq-paq2piq` run: same
preprocessing (bicubic `F.interpolate` without antialiasing, where the JAX original resizes with a Gaussian
kernel), same parameter names, so its checkpoints (`musiq_koniq_ckpt-e95806b9.pth`, ...) load as they are.
They are read from a path you give or from pyiqa's cache `torch.hub.get_dir()/pyiqa` ($TORCH_HOME/hub/pyiqa),
through the restricted unpickler, and never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablesr.errors import CheckpointMismatchError
from stablesr.weights.cache import find_weights
from stablesr.weights.io import load_state_dict

Dataset = Literal["koniq", "spaq", "ava", "paq2piq"]

WEIGHTS_FILES = {
    "koniq": "musiq_koniq_ckpt-e95806b9.pth",
    "spaq": "musiq_spaq_ckpt-358bb6af.pth",
    "ava": "musiq_ava_ckpt-e8d3f067.pth",
    "paq2piq": "musiq_paq2piq_ckpt-364c0c84.pth",
}
STEM_CHANNELS = 64  # ResNet root width; the bottleneck widens it to 4x
MASKED_LOGIT = -1e3  # what the port writes into masked attention logits (not -inf)


@dataclass(frozen=True)
class MUSIQConfig:
    """Sizes of the transformer and of its input; the default is the released model (KonIQ head)."""

    patch_size: int = 32
    hidden_size: int = 384
    num_layers: int = 14
    num_heads: int = 6
    mlp_size: int = 1152
    grid_size: int = 10  # G: the hash grid of spatial embeddings is G x G
    longer_side_lengths: tuple[int, ...] = (224, 384)  # the resized scales, ascending
    num_classes: int = 1  # 1: a score; 10: the AVA rating distribution

    @property
    def num_scales(self) -> int:
        """Resized scales plus the original resolution."""
        return len(self.longer_side_lengths) + 1


TINY_CONFIG = MUSIQConfig(patch_size=8, hidden_size=16, num_layers=2, num_heads=2, mlp_size=32, grid_size=4,
                          longer_side_lengths=(16, 32))


# ----------------------------------------------------------------------------------------------------------------
# Multi-scale patches
# ----------------------------------------------------------------------------------------------------------------


class PatchSequence(NamedTuple):
    """Tokens of one image: patches (N, 3 P P) channel-major, spatial_positions (N,) in [0, G^2),
    scale_ids (N,) in [0, S), mask (N,) bool (False on padding rows, which are all zero)."""

    patches: torch.Tensor
    spatial_positions: torch.Tensor
    scale_ids: torch.Tensor
    mask: torch.Tensor


def ceil_div(numerator: int, denominator: int) -> int:
    """ceil(numerator / denominator) for positive integers, exactly."""
    return -(-numerator // denominator)


def to_model_range(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 RGB or (3, H, W) float in [0, 1] -> (3, H, W) float in [-1, 1]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MUSIQ needs an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        image = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(255)  # -> (3, H, W)
    elif image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"MUSIQ needs a (3, H, W) float image in [0, 1], got {image.dtype} {tuple(image.shape)}")
    return (image - 0.5) * 2


def resize_longer_side(image: torch.Tensor, longer_side: int) -> torch.Tensor:
    """(3, H, W) -> (3, round(H r), round(W r)) with r = longer_side / max(H, W), bicubic (a = -0.75)."""
    height, width = image.shape[-2:]
    ratio = longer_side / max(height, width)
    size = (round(height * ratio), round(width * ratio))
    return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0]


def grid_indices(count: int, grid_size: int) -> torch.Tensor:
    """Nearest of G grid cells for each of `count` patches along one axis, (count,) long: floor(i * (G / count))
    in float32, as torch's 'nearest' interpolation (pyiqa's hash) computes it. It equals the exact floor(i G / count)
    except for a few large counts (with G = 10, first at count 205: a 6560-pixel side)."""
    cells = torch.arange(grid_size, dtype=torch.float32).view(1, 1, grid_size)
    return F.interpolate(cells, size=count, mode="nearest").view(count).long()


def hashed_positions(rows: int, cols: int, grid_size: int) -> torch.Tensor:
    """Row-major (rows * cols,) indices into the G x G embedding grid.

    Example: hashed_positions(2, 3, grid_size=10) -> [0, 3, 6, 50, 53, 56].
    """
    row_cells, col_cells = grid_indices(rows, grid_size), grid_indices(cols, grid_size)
    return (row_cells[:, None] * grid_size + col_cells[None, :]).flatten()  # (rows, cols) -> (rows * cols,)


def extract_patches(image: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, int, int]:
    """(3, H, W) -> (rows * cols, 3 P P) row-major patches of the image zero-padded (centred, the extra pixel
    at the bottom / right) to rows = ceil(H / P), cols = ceil(W / P); returns (patches, rows, cols)."""
    channels, height, width = image.shape
    rows, cols = ceil_div(height, patch_size), ceil_div(width, patch_size)
    extra_h, extra_w = rows * patch_size - height, cols * patch_size - width
    image = F.pad(image, (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2))
    grid = image.reshape(channels, rows, patch_size, cols, patch_size)  # (3, rows P, cols P) -> (3, r, P, c, P)
    patches = grid.permute(1, 3, 0, 2, 4).reshape(rows * cols, -1)  # -> (r, c, 3, P, P) -> (r c, 3 P P)
    return patches, rows, cols


def scale_sequence(image: torch.Tensor, *, patch_size: int, grid_size: int, scale_id: int,
                   length: int | None = None) -> PatchSequence:
    """Tokens of one scale, zero-padded to `length` rows with mask False (None: as many as there are patches)."""
    patches, rows, cols = extract_patches(image, patch_size)
    count = rows * cols
    padding = 0 if length is None else length - count
    return PatchSequence(
        patches=F.pad(patches, (0, 0, 0, padding)),
        spatial_positions=F.pad(hashed_positions(rows, cols, grid_size), (0, padding)),
        scale_ids=F.pad(torch.full((count,), scale_id), (0, padding)),
        mask=F.pad(torch.ones(count, dtype=torch.bool), (0, padding)),
    )


def multiscale_patches(image: np.ndarray | torch.Tensor, *, config: MUSIQConfig = MUSIQConfig()) -> PatchSequence:
    """(H, W, 3) uint8 or (3, H, W) float in [0, 1] -> tokens of every scale, concatenated: the resized scales
    (ascending longer side, ceil(L / P)^2 rows each, scale ids 0, 1, ...), then all patches at full size."""
    image = to_model_range(image)
    sequences = []
    for scale_id, longer_side in enumerate(sorted(config.longer_side_lengths)):
        sequences.append(scale_sequence(
            resize_longer_side(image, longer_side), patch_size=config.patch_size, grid_size=config.grid_size,
            scale_id=scale_id, length=ceil_div(longer_side, config.patch_size) ** 2,
        ))
    sequences.append(scale_sequence(image, patch_size=config.patch_size, grid_size=config.grid_size,
                                    scale_id=len(config.longer_side_lengths)))
    return PatchSequence(*(torch.cat(parts) for parts in zip(*sequences)))


# ----------------------------------------------------------------------------------------------------------------
# Network (parameter names as in pyiqa's checkpoints)
# ----------------------------------------------------------------------------------------------------------------


def pad_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding of (B, C, H, W) for a kernel / stride, the odd pixel at the bottom / right."""
    padding = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max((ceil_div(size, stride) - 1) * stride + kernel_size - size, 0)
        padding += [total // 2, total - total // 2]
    return F.pad(x, padding)


class StandardizedConv2d(nn.Conv2d):
    """Weight-standardised convolution (Qiao et al. 2019) with 'SAME' padding, no bias:
    w_hat = (w - mean(w)) / (std(w) + 1e-5) over each output filter, std unbiased."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        weight = weight / (weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(pad_same(x, self.kernel_size[0], self.stride[0]), weight, None, self.stride)


class Bottleneck(nn.Module):
    """ResNet-v1 bottleneck C -> C -> C -> 4C, GroupNorm(32, eps 1e-4), projected shortcut:
    (B, C, h, w) -> (B, 4C, h, w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.gn1 = StandardizedConv2d(channels, channels, 1), nn.GroupNorm(32, channels, eps=1e-4)
        self.conv2, self.gn2 = StandardizedConv2d(channels, channels, 3), nn.GroupNorm(32, channels, eps=1e-4)
        self.conv3, self.gn3 = StandardizedConv2d(channels, 4 * channels, 1), nn.GroupNorm(32, 4 * channels, eps=1e-4)
        self.conv_proj = StandardizedConv2d(channels, 4 * channels, 1)
        self.gn_proj = nn.GroupNorm(32, 4 * channels, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(x))
        h = F.relu(self.gn1(self.conv1(x)))
        h = F.relu(self.gn2(self.conv2(h)))
        return F.relu(self.gn3(self.conv3(h)) + shortcut)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention in which a pair attends only if both tokens are real:
    (B, N, D), mask (B, N) -> (B, N, D)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_size = width // self.num_heads
        # (B, N, D) -> (B, heads, N, D / heads)
        query, key, value = (projection(x).reshape(batch, length, self.num_heads, head_size).transpose(1, 2)
                             for projection in (self.query, self.key, self.value))
        logits = (query @ key.transpose(-2, -1)) * head_size**-0.5  # (B, heads, N, N)
        pair_mask = mask[:, None, :, None] & mask[:, None, None, :]
        weights = logits.masked_fill(~pair_mask, MASKED_LOGIT).softmax(dim=-1)
        attended = (weights @ value).transpose(1, 2).reshape(batch, length, width)  # -> (B, N, heads, d) -> (B, N, D)
        return self.out(attended)


class FeedForward(nn.Module):
    """Linear -> GELU (erf) -> Linear: (B, N, D) -> (B, N, D)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (LayerNorm eps 1e-6): (B, N, D), mask (B, N) -> (B, N, D)."""

    def __init__(self, config: MUSIQConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.attention = MaskedSelfAttention(config.hidden_size, config.num_heads)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.mlp = FeedForward(config.hidden_size, config.mlp_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class HashPositionEmbedding(nn.Module):
    """The G x G learned spatial embeddings, looked up by hashed position."""

    def __init__(self, grid_size: int, width: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.randn(1, grid_size * grid_size, width) * 0.02)


class ScaleEmbedding(nn.Module):
    """One learned embedding per scale."""

    def __init__(self, num_scales: int, width: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.randn(num_scales, width) * 0.02)


class Encoder(nn.Module):
    """Adds position and scale embeddings, prepends [CLS], runs the layers, normalises:
    tokens (B, N, D) -> (B, 1 + N, D)."""

    def __init__(self, config: MUSIQConfig) -> None:
        super().__init__()
        self.posembed_input = HashPositionEmbedding(config.grid_size, config.hidden_size)
        self.scaleembed_input = ScaleEmbedding(config.num_scales, config.hidden_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.transformer = nn.ModuleDict({f"encoderblock_{index}": EncoderLayer(config)
                                          for index in range(config.num_layers)})
        self.encoder_norm = nn.LayerNorm(config.hidden_size, eps=1e-6)

    def forward(self, tokens: torch.Tensor, spatial_positions: torch.Tensor, scale_ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.posembed_input.position_emb[0][spatial_positions]
        tokens = tokens + self.scaleembed_input.scale_emb[scale_ids]
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # -> (B, 1 + N, D)
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for layer in self.transformer.values():
            x = layer(x, mask)
        return self.encoder_norm(x)


class MUSIQ(nn.Module):
    """MUSIQ. forward(patches (B, N, 3 P P), spatial_positions (B, N), scale_ids (B, N), mask (B, N) bool)
    -> (B,) scores; the inputs are `multiscale_patches` of B images of one size, stacked."""

    def __init__(self, config: MUSIQConfig = MUSIQConfig()) -> None:
        super().__init__()
        self.config = config
        self.conv_root = StandardizedConv2d(3, STEM_CHANNELS, 7, stride=2)
        self.gn_root = nn.GroupNorm(32, STEM_CHANNELS, eps=1e-6)
        self.block1 = Bottleneck(STEM_CHANNELS)
        token_cells = (config.patch_size // 4) ** 2  # the stem downsamples each patch by 4
        self.embedding = nn.Linear(4 * STEM_CHANNELS * token_cells, config.hidden_size)
        self.transformer_encoder = Encoder(config)
        head = nn.Linear(config.hidden_size, config.num_classes)
        # checkpoint layout: 'head.*' for one score, 'head.0.*' for the AVA distribution (a Linear + Softmax there)
        self.head = head if config.num_classes == 1 else nn.Sequential(head)

    @classmethod
    def from_file(cls, path: str | Path | None = None, *, dataset: Dataset = "koniq",
                  config: MUSIQConfig | None = None) -> MUSIQ:
        """pyiqa's checkpoint for `dataset`: `path` (the file, or a folder holding it), else its pyiqa cache.
        `config` defaults to the released size, with the 10-bin head for AVA."""
        if dataset not in WEIGHTS_FILES:
            raise ValueError(f"MUSIQ dataset must be one of {', '.join(WEIGHTS_FILES)}, got {dataset!r}")
        model = cls(config or MUSIQConfig(num_classes=10 if dataset == "ava" else 1))
        file = find_weights_file(path, dataset=dataset)
        state = load_state_dict(file, what=f"MUSIQ ({dataset}) checkpoint")
        expected = model.state_dict()
        missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
        resized = sorted(key for key in expected.keys() & state.keys() if expected[key].shape != state[key].shape)
        if missing or unexpected or resized:
            raise CheckpointMismatchError(f"{file} does not match MUSIQ ({dataset}): missing {missing[:3]}, "
                                          f"unexpected {unexpected[:3]}, other shapes {resized[:3]}")
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """ResNet stem per patch, flattened channels-last (as the TF original), then linear:
        (B, N, 3 P P) -> (B, N, D)."""
        batch, length, _ = patches.shape
        size = self.config.patch_size
        h = patches.reshape(batch * length, 3, size, size)  # (B, N, 3 P P) -> (B N, 3, P, P)
        h = F.relu(self.gn_root(self.conv_root(h)))  # (B N, 64, P / 2, P / 2)
        h = F.max_pool2d(pad_same(h, 3, 2), 3, stride=2)  # (B N, 64, P / 4, P / 4); zero pad is safe after ReLU
        h = self.block1(h)  # (B N, 256, P / 4, P / 4)
        h = h.permute(0, 2, 3, 1).reshape(batch, length, -1)  # -> (B N, P/4, P/4, 256) -> (B, N, 256 (P/4)^2)
        return self.embedding(h)

    def forward(self, patches: torch.Tensor, spatial_positions: torch.Tensor, scale_ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_patches(patches)
        cls_features = self.transformer_encoder(tokens, spatial_positions.long(), scale_ids.long(), mask.bool())[:, 0]
        logits = self.head(cls_features)  # (B, classes)
        if self.config.num_classes == 1:
            return logits[:, 0]
        ratings = torch.arange(1, self.config.num_classes + 1, dtype=logits.dtype, device=logits.device)
        return (logits.softmax(dim=-1) * ratings).sum(dim=-1)  # mean rating of the predicted distribution


def find_weights_file(path: str | Path | None = None, *, dataset: Dataset = "koniq") -> Path:
    """`path` (the file, or a folder holding it), else pyiqa's hub cache (weights/cache.py)."""
    return find_weights(WEIGHTS_FILES[dataset], path, cache="pyiqa",
                        needed_by=f"MUSIQ ({dataset}) needs pyiqa's checkpoint (Hugging Face repo "
                                  "chaofengc/IQA-PyTorch-Weights)")


@torch.no_grad()
def score_image(model: MUSIQ, image: np.ndarray) -> float:
    """MUSIQ score of one (H, W, 3) uint8 RGB image of any size (pyiqa's `musiq` value for the KonIQ model)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"MUSIQ needs an (H, W, 3) uint8 numpy image, got {type(image).__name__}")
    sequence = multiscale_patches(image, config=model.config)
    parameter = next(model.parameters())
    patches = sequence.patches.to(parameter)[None]  # (N, 3 P P) -> (1, N, 3 P P)
    rest = (tensor.to(parameter.device)[None] for tensor in sequence[1:])
    return float(model(patches, *rest)[0])

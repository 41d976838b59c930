"""MANIQA: no-reference image quality from ViT features refined by channel attention and Swin blocks
(higher is better, about 0..1), computed as pyiqa's `maniqa` computes it.

Yang et al., "MANIQA: Multi-dimension Attention Network for No-Reference Image Quality Assessment",
CVPRW 2022, https://arxiv.org/abs/2204.08958

    x = (image - 0.5) / 0.5, K = 20 crops c_k of 224 x 224 (an image with min side <= 224 is first
    enlarged bilinearly by 225 / min side)
    F = [z_6, z_7, z_8, z_9] of ViT-B/8 without the class token     (K, 784, 4 * 768)
    stage 1: 2 x TAB (attention across channels) -> 1x1 conv 3072 -> 768 -> SSTB
    stage 2: 2 x TAB -> 1x1 conv 768 -> 384 -> SSTB                   (K, 784, 384) per-patch features
    s_i = ReLU(MLP_s(f_i)), w_i = sigmoid(MLP_w(f_i))                 over all K * 784 patches at once
    score = sum_i w_i s_i / (sum_i w_i + 1e-8)

TAB: A = softmax(Q K^T / sqrt(N)) over channels, out = reflow(A V) + x (see `TransposedAttention`).
SSTB (scale Swin transformer block): per layer, x <- scale * (Swin blocks -> 3x3 conv -> ReLU)(x) + x,
windows of 4 x 4 tokens, every second block shifted by 2 with the usual -100 cross-region mask.

Checkpoints (state dicts whose keys are this module's, `vit.*` included, so no timm file is needed) are
read from a path or pyiqa's cache `$TORCH_HOME/hub/pyiqa/` and never downloaded. pyiqa >= 0.1.12 takes the
20 crops on a uniform grid (`crops="uniform"`); 0.1.11 took them with `np.random.seed(123)` before every
image (`crops="seeded_random"`); earlier versions were not reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablesr.errors import CheckpointMismatchError
from stablesr.metrics.vit import FeedForward, VisionTransformer
from stablesr.weights.cache import find_weights
from stablesr.weights.io import load_state_dict

Variant = Literal["koniq", "kadid", "pipal"]
CropMode = Literal["uniform", "seeded_random"]

# variant -> (file name in pyiqa's cache, SSTB residual scale pyiqa uses with it)
CHECKPOINTS: dict[str, tuple[str, float]] = {
    "koniq": ("ckpt_koniq10k.pt", 0.8),  # pyiqa `maniqa`
    "kadid": ("ckpt_kadid10k.pt", 0.8),  # pyiqa `maniqa-kadid`
    "pipal": ("MANIQA_PIPAL-ae6d356b.pth", 0.13),  # pyiqa `maniqa-pipal`
}
MASKED_LOGIT = -100.0
LEGACY_CROP_SEED = 123


@dataclass(frozen=True)
class MANIQAConfig:
    """Sizes of MANIQA; the defaults are the published model (ViT-B/8 at 224, scale 0.8)."""

    image_size: int = 224  # crop side, also the ViT's input size
    patch_size: int = 8
    dim: int = 768  # ViT width; stage 1 runs at dim, stage 2 at dim // 2
    vit_depth: int = 12
    vit_heads: int = 12
    vit_mlp_dim: int = 3072
    vit_classes: int = 1000  # unused classifier kept for the checkpoint layout
    tapped_blocks: tuple[int, ...] = (6, 7, 8, 9)
    num_tab: int = 2
    swin_depths: tuple[int, ...] = (2, 2)
    swin_heads: tuple[int, ...] = (4, 4)
    window_size: int = 4
    swin_mlp_dim: int = 768
    scale: float = 0.8
    crop_count: int = 20

    def __post_init__(self) -> None:
        grid = self.image_size // self.patch_size
        if self.image_size % self.patch_size or grid % self.window_size or grid <= self.window_size:
            raise ValueError(f"MANIQA needs image_size / patch_size = a multiple of window_size above it, got "
                             f"{self.image_size} / {self.patch_size} and window {self.window_size}")
        if max(self.tapped_blocks) >= self.vit_depth:
            raise ValueError(f"tapped_blocks {self.tapped_blocks} exceed the ViT depth {self.vit_depth}")

    @property
    def grid(self) -> int:
        """Tokens per side of a crop."""
        return self.image_size // self.patch_size

    @classmethod
    def tiny(cls) -> MANIQAConfig:
        """A ~45k-parameter model for tests: 224 px crops as pyiqa's, 28 px patches (8 x 8 tokens), width 8."""
        return cls(patch_size=28, dim=8, vit_depth=10, vit_heads=2, vit_mlp_dim=16, vit_classes=4,
                   swin_heads=(2, 2), swin_mlp_dim=8)


# ---------------------------------------------------------------- Swin windows


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C), windows in row-major order within each image."""
    batch, height, width, channels = x.shape
    # (B, H, W, C) -> (B, H/ws, ws, W/ws, ws, C) -> (B, H/ws, W/ws, ws, ws, C)
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_merge(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, ws * ws, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    # (B * nW, ws * ws, C) -> (B, H/ws, W/ws, ws, ws, C) -> (B, H/ws, ws, W/ws, ws, C)
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws^2, ws^2) index into the (2 ws - 1)^2 bias table: (dy + ws - 1) * (2 ws - 1) + dx + ws - 1."""
    rows, cols = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, ws^2)
    offsets = coords[:, :, None] - coords[:, None, :] + window_size - 1  # (2, ws^2, ws^2), each in [0, 2 ws - 2]
    return offsets[0] * (2 * window_size - 1) + offsets[1]


def shifted_window_mask(height: int, width: int, window_size: int, shift: int) -> torch.Tensor:
    """(nW, ws^2, ws^2) additive mask for a map rolled by -shift: -100 between tokens of different regions."""
    region = torch.zeros(1, height, width, 1)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    for row_index, rows in enumerate(bounds):
        for col_index, cols in enumerate(bounds):
            region[:, rows, cols, :] = 3 * row_index + col_index
    labels = window_partition(region, window_size).squeeze(-1)  # (nW, ws^2)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, MASKED_LOGIT)


class WindowAttention(nn.Module):
    """Multi-head attention inside windows with a learned relative position bias.

    forward(windows, mask): (B * nW, L, C) with L = ws^2, mask (nW, L, L) or None -> (B * nW, L, C).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        count, length, dim = windows.shape
        head_dim = dim // self.num_heads
        # (n, L, 3C) -> (3, n, heads, L, C / heads)
        qkv = self.qkv(windows).reshape(count, length, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        logits = (qkv[0] * head_dim**-0.5) @ qkv[1].transpose(-2, -1)  # (n, heads, L, L)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (L * L, heads)
        logits = logits + bias.view(length, length, -1).permute(2, 0, 1)  # (L, L, heads) -> (heads, L, L)
        if mask is not None:
            # (n, heads, L, L) -> (B, nW, heads, L, L): each window gets its own mask
            logits = logits.view(-1, mask.shape[0], self.num_heads, length, length) + mask[None, :, None]
            logits = logits.view(count, self.num_heads, length, length)
        attended = logits.softmax(dim=-1) @ qkv[2]
        # (n, heads, L, C / heads) -> (n, L, C)
        return self.proj(attended.transpose(1, 2).reshape(count, length, dim))


class SwinBlock(nn.Module):
    """(Shifted-)window transformer block on a fixed H x W token grid. forward: (B, HW, C) -> (B, HW, C)."""

    def __init__(self, dim: int, grid: int, num_heads: int, window_size: int, shift: int, mlp_dim: int) -> None:
        super().__init__()
        self.grid, self.window_size, self.shift = grid, window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim)
        mask = shifted_window_mask(grid, grid, window_size, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        x = self.norm1(tokens).view(batch, self.grid, self.grid, dim)  # (B, HW, C) -> (B, H, W, C)
        x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window_size), self.attn_mask)
        x = window_merge(windows, self.window_size, self.grid, self.grid)
        x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        tokens = tokens + x.reshape(batch, length, dim)  # (B, H, W, C) -> (B, HW, C)
        return tokens + self.mlp(self.norm2(tokens))


class SwinLayer(nn.Module):
    """Swin blocks (shift 0, ws/2, 0, ...) then a 3x3 conv and ReLU. forward: (B, HW, C) -> (B, HW, C)."""

    def __init__(self, dim: int, grid: int, depth: int, num_heads: int, window_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.blocks = nn.ModuleList(
            SwinBlock(dim, grid, num_heads, window_size, (index % 2) * (window_size // 2), mlp_dim)
            for index in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        x = tokens.transpose(1, 2).unflatten(2, (self.grid, self.grid))  # (B, HW, C) -> (B, C, H, W)
        return F.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


class ScaledSwin(nn.Module):
    """SSTB: x <- scale * layer(x) + x for each Swin layer. forward: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, config: MANIQAConfig) -> None:
        super().__init__()
        self.scale = config.scale
        self.downsample = nn.Conv2d(dim, dim, 3, stride=2, padding=1)  # in the checkpoint, never applied
        self.layers = nn.ModuleList(
            SwinLayer(dim, config.grid, depth, heads, config.window_size, config.swin_mlp_dim)
            for depth, heads in zip(config.swin_depths, config.swin_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        for layer in self.layers:
            tokens = self.scale * layer(tokens) + tokens
        return tokens.transpose(1, 2).unflatten(2, (height, width))  # (B, HW, C) -> (B, C, H, W)


class TransposedAttention(nn.Module):
    """TAB: attention between channels, the N tokens of a channel being its feature vector.

    forward: (B, C, N) -> (B, C, N). A = softmax(Q K^T / sqrt(N)) is (B, C, C); the (B, C, N) product A V is
    then read back in token-major order, `(A V).transpose(1, 2).reshape(B, C, N)`, as the trained model does
    (a reflow of memory, not a transpose), before the residual.
    """

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.c_q = nn.Linear(num_tokens, num_tokens)
        self.c_k = nn.Linear(num_tokens, num_tokens)
        self.c_v = nn.Linear(num_tokens, num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, num_tokens = x.shape
        attention = (self.c_q(x) @ self.c_k(x).transpose(-2, -1) * num_tokens**-0.5).softmax(dim=-1)
        return (attention @ self.c_v(x)).transpose(1, 2).reshape(batch, channels, num_tokens) + x


def patch_head(dim: int, activation: nn.Module) -> nn.Sequential:
    """Per-patch MLP: Linear -> ReLU -> (dropout slot) -> Linear -> activation, indices as in the checkpoint."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Identity(), nn.Linear(dim, 1), activation)


class MANIQA(nn.Module):
    """MANIQA score. forward(crops): (B, K, 3, S, S) crops normalised to [-1, 1] -> (B,) scores.

    The attribute names (`vit`, `tablock1`, `conv1`, `swintransformer1`, ..., `fc_weight`) are the checkpoint's.
    """

    def __init__(self, config: MANIQAConfig = MANIQAConfig()) -> None:
        super().__init__()
        self.config = config
        dim, num_tokens = config.dim, config.grid**2
        self.vit = VisionTransformer(image_size=config.image_size, patch_size=config.patch_size, dim=dim,
                                     depth=config.vit_depth, num_heads=config.vit_heads,
                                     mlp_dim=config.vit_mlp_dim, num_classes=config.vit_classes)
        self.tablock1 = nn.ModuleList(TransposedAttention(num_tokens) for _ in range(config.num_tab))
        self.conv1 = nn.Conv2d(len(config.tapped_blocks) * dim, dim, 1)
        self.swintransformer1 = ScaledSwin(dim, config)
        self.tablock2 = nn.ModuleList(TransposedAttention(num_tokens) for _ in range(config.num_tab))
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        self.swintransformer2 = ScaledSwin(dim // 2, config)
        self.fc_score = patch_head(dim // 2, nn.ReLU())
        self.fc_weight = patch_head(dim // 2, nn.Sigmoid())

    @classmethod
    def from_file(cls, path: str | Path | None = None, *, variant: Variant = "koniq",
                  config: MANIQAConfig | None = None, wrapper_key: str | None = None) -> MANIQA:
        """Load `variant`'s checkpoint from `path` (the file, or a folder holding it) or pyiqa's cache.

        `config` defaults to the published sizes with the variant's scale; `wrapper_key` unwraps a
        checkpoint saved as {'params': state_dict} by pyiqa's training code. Nothing is downloaded.
        """
        file = find_checkpoint(variant, path)
        state = load_state_dict(file, wrapper_key=wrapper_key, what=f"MANIQA-{variant} checkpoint")
        state = {key.removeprefix("module."): value for key, value in state.items()}
        model = cls(config or MANIQAConfig(scale=CHECKPOINTS[variant][1]))
        check_keys(model, state, file)
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def vit_features(self, crops: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, C_tap, N): the tapped blocks' patch tokens, class token dropped."""
        outputs = self.vit(crops, num_blocks=max(self.config.tapped_blocks) + 1)
        taps = torch.cat([outputs[index][:, 1:] for index in self.config.tapped_blocks], dim=2)  # (M, N, C_tap)
        return taps.transpose(1, 2)  # (M, N, C_tap) -> (M, C_tap, N)

    def patch_features(self, crops: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, N, dim / 2): per-patch features after both stages."""
        grid = self.config.grid
        x = self.vit_features(crops)
        stages = ((self.tablock1, self.conv1, self.swintransformer1),
                  (self.tablock2, self.conv2, self.swintransformer2))
        for tabs, conv, swin in stages:
            for tab in tabs:
                x = tab(x)
            # (M, C, N) -> (M, C, h, w) -> conv, SSTB -> (M, C', N)
            x = swin(conv(x.unflatten(2, (grid, grid)))).flatten(2)
        return x.transpose(1, 2)  # (M, C', N) -> (M, N, C')

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        batch = crops.shape[0]
        features = self.patch_features(crops.flatten(0, 1))  # (B, K, 3, S, S) -> (B * K, 3, S, S)
        scores = self.fc_score(features).reshape(batch, -1)  # (B * K, N, 1) -> (B, K * N)
        weights = self.fc_weight(features).reshape(batch, -1)
        return (weights * scores).sum(dim=-1) / (weights.sum(dim=-1) + 1e-8)


def find_checkpoint(variant: Variant, path: str | Path | None) -> Path:
    """The checkpoint file: `path` itself, `path/<file name>`, or pyiqa's hub cache (weights/cache.py)."""
    if variant not in CHECKPOINTS:
        raise ValueError(f"unknown MANIQA variant {variant!r}; use one of {', '.join(CHECKPOINTS)}")
    return find_weights(CHECKPOINTS[variant][0], path, cache="pyiqa",
                        needed_by=f"MANIQA-{variant} needs its checkpoint")


def check_keys(model: nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    """Raise CheckpointMismatchError unless `state` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [f"{key} {tuple(state[key].shape)} (model {tuple(expected[key].shape)})"
                for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        problems = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped))
                    if keys]
        raise CheckpointMismatchError(f"{file} is not a MANIQA checkpoint of this size; " + "; ".join(problems))


# ---------------------------------------------------------------- crops


def uniform_crop_positions(height: int, width: int, *, crop_size: int, count: int) -> list[tuple[int, int]]:
    """pyiqa's uniform grid: steps (H - S) // floor(sqrt K), a ceil(sqrt K)^2 grid read row by row, first K.

    uniform_crop_positions(260, 300, crop_size=224, count=20) -> [(0, 0), (0, 19), ..., (27, 76)]
    """
    step_h = (height - crop_size) // math.isqrt(count)
    step_w = (width - crop_size) // math.isqrt(count)
    side = math.ceil(math.sqrt(count))
    return [(row * step_h, col * step_w) for row in range(side) for col in range(side)][:count]


def seeded_random_crop_positions(height: int, width: int, *, crop_size: int, count: int) -> list[tuple[int, int]]:
    """pyiqa 0.1.11: numpy's legacy generator seeded with 123, (top, left) drawn in turn for each crop."""
    generator = np.random.RandomState(LEGACY_CROP_SEED)
    return [(int(generator.randint(0, height - crop_size + 1)), int(generator.randint(0, width - crop_size + 1)))
            for _ in range(count)]


def crop_images(images: torch.Tensor, *, crop_size: int, count: int, mode: CropMode = "uniform") -> torch.Tensor:
    """(B, 3, H, W) -> (B, K, 3, S, S). An image whose short side is <= S is first enlarged bilinearly by the
    factor (S + 1) / short side (the size rounds down), as pyiqa does."""
    height, width = images.shape[-2:]
    if min(height, width) <= crop_size:
        images = F.interpolate(images, scale_factor=(crop_size + 1) / min(height, width), mode="bilinear")
        height, width = images.shape[-2:]
    positions = {"uniform": uniform_crop_positions, "seeded_random": seeded_random_crop_positions}[mode]
    crops = [images[..., top : top + crop_size, left : left + crop_size]
             for top, left in positions(height, width, crop_size=crop_size, count=count)]
    return torch.stack(crops, dim=1)  # K x (B, 3, S, S) -> (B, K, 3, S, S)


@torch.no_grad()
def score_image(model: MANIQA, image: np.ndarray, *, crops: CropMode = "uniform") -> float:
    """MANIQA of one (H, W, 3) uint8 RGB image of any size, with pyiqa's normalisation and crops."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"MANIQA needs an (H, W, 3) uint8 RGB image, got {image.dtype} of shape {image.shape}")
    parameter = next(model.parameters())
    # (H, W, 3) uint8 -> (1, 3, H, W) in [0, 1], then [-1, 1]
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255  # a copy: may be read-only
    normalised = (pixels.to(parameter.device, parameter.dtype) - 0.5) / 0.5
    config = model.config
    return float(model(crop_images(normalised, crop_size=config.image_size, count=config.crop_count, mode=crops))[0])

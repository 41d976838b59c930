"""A plain Vision Transformer in timm's `VisionTransformer` key layout, returning the token sequence after
each block (MANIQA taps four of them; see `maniqa.py`).

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
ICLR 2021, https://arxiv.org/abs/2010.11929

    z_0 = [x_cls; E x_1; ...; E x_N] + E_pos              E: patch_embed.proj (P x P conv, stride P)
    z'_l = z_{l-1} + MSA(LN(z_{l-1}))                      attn.qkv -> softmax(q k^T / sqrt(d)) v -> attn.proj
    z_l = z'_l + MLP(LN(z'_l))                             mlp.fc1 -> GELU (erf) -> mlp.fc2

The final `norm` and the classifier `head` belong to the checkpoint layout (`vit_base_patch8_224` files
carry them) but no tapped output passes through them. LayerNorm eps is 1e-6 as in timm's ViTs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (bias on). forward: (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        # (B, L, 3D) -> (3, B, heads, L, D / heads)
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        # (B, heads, L, D / heads) -> (B, L, D)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """Linear -> exact (erf) GELU -> Linear. forward: (..., D) -> (..., D)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block. forward: (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class PatchEmbedding(nn.Module):
    """Non-overlapping P x P patches -> D-dim tokens. forward: (B, 3, H, W) -> (B, HW / P^2, D)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, hw, D)


class VisionTransformer(nn.Module):
    """ViT with a class token and learned position embeddings for `image_size` inputs.

    forward(images, num_blocks): (B, 3, S, S) normalised images -> list of the (B, 1 + N, D) token
    sequences after blocks 0 .. num_blocks-1 (class token first), N = (S / patch_size)^2.
    """

    def __init__(self, *, image_size: int, patch_size: int, dim: int, depth: int, num_heads: int,
                 mlp_dim: int, num_classes: int) -> None:
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))
        self.patch_embed = PatchEmbedding(patch_size, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # checkpoint layout only (see module docstring)
        self.head = nn.Linear(dim, num_classes)  # checkpoint layout only

    def forward(self, images: torch.Tensor, num_blocks: int) -> list[torch.Tensor]:
        patches = self.patch_embed(images)
        cls_tokens = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls_tokens, patches], dim=1) + self.pos_embed  # (B, 1 + N, D)
        outputs = []
        for block in self.blocks[:num_blocks]:
            tokens = block(tokens)
            outputs.append(tokens)
        return outputs

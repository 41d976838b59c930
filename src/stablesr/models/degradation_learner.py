"""DeeDSR's degradation learner: a ResNet encoder giving a global degradation vector, trained with MoCo.

Bi et al., "DeeDSR: Towards Real-World Image Super-Resolution via Degradation-Aware Stable
Diffusion", ECCV 2024 (https://arxiv.org/abs/2404.00661), stage 1; MoCo: He et al. 2020
(https://arxiv.org/abs/1911.05722), the DASR recipe for degradation representations (Wang et al.
2021, https://arxiv.org/abs/2104.00416): query and positive are two patches of the SAME degraded
image, negatives are keys of earlier batches kept in a queue.

    d = GAP(ResNet(lr))                        # (B, C_d), the global degradation representation
    q = normalize(head(d_q)),  k = normalize(head_m(d_k)),  queue (C_h, K)
    loss = CE([q.k, q.queue] / tau, label 0)   # InfoNCE, tau = 0.07

Default encoder: the wide BasicBlock ResNet [3, 4, 6, 3] with widths 128/256/512/1024 that the
released diffusion config builds (a 1024-d vector); "bottleneck" gives the torchvision-style
ResNet-50 layout of the released MoCo script (2048-d). See docs/deedsr.md.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN + shortcut, ReLU. (B, C_in, H, W) -> (B, width, H/s, W/s)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.shortcut = _shortcut(in_channels, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """conv1-conv3(stride)-conv1 with 4x expansion (ResNet-50). (B, C_in, H, W) -> (B, 4 width, H/s, W/s)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class DegradationLearner(ModelMixin, ConfigMixin):
    """ResNet encoder: LR image in [0, 1] (B, 3, H, W) -> global degradation vector (B, vector_dim).

    Stem conv7x7/2 + BN + ReLU + maxpool, then len(layers) stages (stride 1 then 2), no fc; the
    vector is the global average of the last stage. Default (wide BasicBlock [3, 4, 6, 3]):
    85.0 M parameters, vector_dim 1024.
    """

    @register_to_config
    def __init__(self, *, block: Literal["basic", "bottleneck"] = "basic", layers: tuple[int, ...] = (3, 4, 6, 3),
                 widths: tuple[int, ...] = (128, 256, 512, 1024), stem_channels: int = 64) -> None:
        super().__init__()
        if block not in BLOCKS or len(layers) != len(widths):
            raise ValueError(f"block must be one of {sorted(BLOCKS)} and layers/widths equally long")
        block_class = BLOCKS[block]
        self.stem = nn.Sequential(nn.Conv2d(3, stem_channels, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_channels),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, channels = [], stem_channels
        for index, (depth, width) in enumerate(zip(layers, widths)):
            blocks = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block_class(channels, width, stride))
                channels = width * block_class.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.vector_dim = channels

    def forward(self, lr_image: torch.Tensor) -> torch.Tensor:
        """lr_image (B, 3, H, W) in [0, 1] (not normalised, as the original) -> d (B, vector_dim)."""
        return self.stages(self.stem(lr_image)).mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)


def projection_head(in_dim: int, out_dim: int) -> nn.Module:
    """MoCo v2's MLP head: Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


def info_nce_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """q, k (B, D) unit vectors, queue (D, K) -> logits (B, 1 + K) / tau; the positive is column 0."""
    positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    negatives = q @ queue  # (B, D) @ (D, K) -> (B, K)
    return torch.cat([positive, negatives], dim=1) / temperature


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: cross-entropy of `info_nce_logits` with label 0 (He et al. 2020, eq. 1)."""
    logits = info_nce_logits(q, k, queue, temperature)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class MoCo(nn.Module):
    """Query encoder + head (trained), momentum copies for the keys, and a queue of negative keys.

    forward(query_patch, key_patch) -> loss; it also updates the momentum encoder (before the keys,
    as MoCo) and enqueues the new keys. The queue starts as random unit vectors (MoCo's init).
    """

    def __init__(self, encoder: DegradationLearner, *, head_dim: int = 1024, queue_size: int = 24576,
                 momentum: float = 0.999, temperature: float = 0.07, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.encoder, self.head = encoder, projection_head(encoder.vector_dim, head_dim)
        self.momentum_encoder, self.momentum_head = copy.deepcopy(encoder), copy.deepcopy(self.head)
        for module in (self.momentum_encoder, self.momentum_head):
            module.requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        queue = torch.randn(head_dim, queue_size, generator=generator)
        self.register_buffer("queue", F.normalize(queue, dim=0))  # (D, K)
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def forward(self, query_patch: torch.Tensor, key_patch: torch.Tensor) -> torch.Tensor:
        """query_patch, key_patch (B, 3, h, w) in [0, 1], two patches of the same degraded images -> loss."""
        q = F.normalize(self.head(self.encoder(query_patch)), dim=1)  # (B, D)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self.momentum_head(self.momentum_encoder(key_patch)), dim=1)  # (B, D)
        loss = contrastive_loss(q, k, self.queue.clone().detach(), self.temperature)
        self._enqueue(k)
        return loss

    @torch.no_grad()
    def _momentum_update(self) -> None:
        pairs = [(self.encoder, self.momentum_encoder), (self.head, self.momentum_head)]
        for online, target in pairs:
            for p, p_m in zip(online.parameters(), target.parameters()):
                p_m.mul_(self.momentum).add_(p.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        size, start = self.queue.shape[1], int(self.queue_pointer)
        index = (start + torch.arange(len(k), device=k.device)) % size  # wraps when K is not a multiple of B
        self.queue[:, index] = k.T
        self.queue_pointer.fill_((start + len(k)) % size)


def two_patches(lr_image: torch.Tensor, *, patch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Two different random patch_size crops of each image: (B, 3, H, W) -> 2 x (B, 3, p, p) (DASR pairs)."""
    batch, _, height, width = lr_image.shape
    crops = []
    for _ in range(2):
        top = torch.randint(0, height - patch_size + 1, (batch,), generator=generator, device=generator.device)
        left = torch.randint(0, width - patch_size + 1, (batch,), generator=generator, device=generator.device)
        crops.append(torch.stack([lr_image[b, :, top[b]:top[b] + patch_size, left[b]:left[b] + patch_size]
                                  for b in range(batch)]))
    return crops[0], crops[1]

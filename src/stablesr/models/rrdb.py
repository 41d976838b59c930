"""Residual-in-residual dense blocks (ESRGAN, Wang et al. 2018, https://arxiv.org/abs/1809.00219).

Shared by the CFW fusion blocks and the Real-ESRGAN baseline. Attribute names (`rdb1..3`,
`conv1..5`) follow the published checkpoints so their keys load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn


def init_scaled_kaiming_(module: nn.Module, *, scale: float = 0.1) -> None:
    """ESRGAN init: Kaiming-normal convs scaled by `scale`, zero biases (stabilises deep residual stacks)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight)
            layer.weight.data.mul_(scale)
            if layer.bias is not None:
                layer.bias.data.zero_()


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; out = x + 0.2 * conv5([x, x1, x2, x3, x4]).

    Shapes: (B, channels, H, W) -> (B, channels, H, W).
    """

    def __init__(self, channels: int = 64, growth_channels: int = 32) -> None:
        super().__init__()
        c, g = channels, growth_channels
        self.conv1 = nn.Conv2d(c, g, 3, padding=1)
        self.conv2 = nn.Conv2d(c + g, g, 3, padding=1)
        self.conv3 = nn.Conv2d(c + 2 * g, g, 3, padding=1)
        self.conv4 = nn.Conv2d(c + 3 * g, g, 3, padding=1)
        self.conv5 = nn.Conv2d(c + 4 * g, c, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        init_scaled_kaiming_(self, scale=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd the dense concatenations [x, x1, .., xk] are channel prefixes of one buffer
        (contiguous views for a batch of one) instead of four growing copies: bitwise the same result."""
        if torch.is_grad_enabled():  # autograd keeps each conv's input: no writes into a shared buffer
            features = [x]
            for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
                features.append(self.lrelu(conv(torch.cat(features, dim=1))))
            return x + 0.2 * self.conv5(torch.cat(features, dim=1))
        batch, channels, height, width = x.shape
        growth = self.conv1.out_channels
        dense = torch.empty((batch, channels + 4 * growth, height, width), dtype=x.dtype, device=x.device)
        dense[:, :channels] = x
        for k, conv in enumerate((self.conv1, self.conv2, self.conv3, self.conv4)):
            start = channels + k * growth
            dense[:, start : start + growth] = self.lrelu(conv(dense[:, :start]))  # (B, C + k*G, H, W) -> (B, G, H, W)
        return x + 0.2 * self.conv5(dense)


class RRDB(nn.Module):
    """Three residual dense blocks inside an outer residual: out = x + 0.2 * rdb3(rdb2(rdb1(x)))."""

    def __init__(self, channels: int = 64, growth_channels: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, growth_channels)
        self.rdb2 = ResidualDenseBlock(channels, growth_channels)
        self.rdb3 = ResidualDenseBlock(channels, growth_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))

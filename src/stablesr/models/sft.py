"""Spatial feature transform (SFT) layer of StableSR (Wang et al., https://arxiv.org/abs/2305.07015).

One SFT layer modulates the residual branch of one UNet resnet with a feature map of the
time-aware encoder. The paper writes F' = (1 + alpha) * F + beta; the released weights also
normalise F first (an affine GroupNorm, the "param_free_norm" of the official SPADE module), so:

    h'    = GroupNorm(h) * (1 + gamma(c)) + beta(c)
    a     = ReLU(conv3x3(c))            # (B, cond_channels, H, W) -> (B, hidden_channels, H, W)
    gamma = conv3x3(a), beta = conv3x3(a)   # (B, hidden_channels, H, W) -> (B, channels, H, W)

Paper symbols: F = h (resnet branch output), alpha = gamma, beta = beta, c = cond (encoder feature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SFTLayer(nn.Module):
    """GroupNorm(h) * (1 + gamma(cond)) + beta(cond), with gamma/beta from a small conv head.

    Shapes: h (B, channels, H, W), cond (B, cond_channels, H, W) -> (B, channels, H, W).
    The GroupNorm runs in float32 and is cast back to h's dtype (as the official GroupNorm32).
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_channels: int = 256,
        hidden_channels: int = 128,
        num_groups: int = 32,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps, affine=True)
        self.cond_conv = nn.Conv2d(cond_channels, hidden_channels, kernel_size=3, padding=1)
        self.to_gamma = nn.Conv2d(hidden_channels, channels, kernel_size=3, padding=1)
        self.to_beta = nn.Conv2d(hidden_channels, channels, kernel_size=3, padding=1)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """h (B, C, H, W), cond (B', cond_channels, H, W) -> modulated h (B, C, H, W).

        B may be k * B' (the classifier-free-guidance batch): sample i of h is modulated by the
        condition i mod B', so a condition shared by k groups of h is computed once.
        """
        normed = self._group_norm_fp32(h)
        hidden = F.relu(self.cond_conv(cond))
        gamma, beta = self.to_gamma(hidden), self.to_beta(hidden)
        groups = h.shape[0] // cond.shape[0]
        if groups > 1:  # (k * B', C, H, W) -> (k, B', C, H, W), broadcast against (B', C, H, W)
            normed = normed.unflatten(0, (groups, cond.shape[0]))
        return torch.addcmul(beta, normed, 1 + gamma).reshape(h.shape)  # beta + normed * (1 + gamma)

    def _group_norm_fp32(self, h: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        weight, bias = norm.weight.float(), norm.bias.float()
        return F.group_norm(h.float(), norm.num_groups, weight, bias, norm.eps).to(h.dtype)

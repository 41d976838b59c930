"""Time-aware encoder of StableSR (Wang et al., https://arxiv.org/abs/2305.07015, Sec. 3.1).

A half UNet (OpenAI/LDM style: resnets with a time embedding, multi-head self-attention at the
finer levels, stride-2 conv downsampling) reads the clean LR latent and the diffusion timestep and
returns one feature map per resolution, which the SFT layers use to modulate the frozen UNet.

    cond_feats = E(z_lr, t) = {w_k: F_k}    # F_k: (B, out_channels, h_k, w_k), keyed by width w_k

Features are taken just before every downsample and after the middle block, each passed through
its own time-conditioned resnet ("feature head") that maps it to `out_channels`. Keys are the
spatial widths (64, 32, 16, 8 for a 64x64 latent), so the UNet can pick the map matching its own
resolution, like the original's str(width) keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

NORM_GROUPS = 32
NORM_EPS = 1e-5


class SelfAttention2d(nn.Module):
    """GroupNorm, multi-head self-attention over the H*W positions, output projection, residual.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, *, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        q, k, v = (self._split_heads(proj(tokens)) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.transpose(1, 2).reshape(batch, height * width, channels)  # -> (B, HW, C)
        out = self.to_out(out).transpose(1, 2).reshape(batch, channels, height, width)  # -> (B, C, H, W)
        return x + out

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, channels = tokens.shape
        # (B, HW, C) -> (B, heads, HW, C/heads)
        return tokens.reshape(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)


def _resnet(in_channels: int, out_channels: int, temb_channels: int) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_channels,
        out_channels=out_channels,
        temb_channels=temb_channels,
        groups=NORM_GROUPS,
        eps=NORM_EPS,
        non_linearity="silu",
    )


class TimeAwareEncoder(ModelMixin, ConfigMixin):
    """(lr_latent, t) -> {spatial width: feature map} for the SFT layers.

    Inputs: lr_latent (B, in_channels, h, w), the clean scaled LR latent; t (B,) int64, the
    original diffusion timestep (0..999), the same one the UNet receives.
    Output: dict with one entry per level, key = width w_k = ceil(w / 2^k), value
    (B, out_channels, h_k, w_k). Default config (the official one): 52,494,080 parameters.
    """

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int = 4,
        model_channels: int = 256,
        out_channels: int = 256,
        num_res_blocks: int = 2,
        channel_mult: tuple[int, ...] = (1, 1, 2, 2),
        attention_resolutions: tuple[int, ...] = (4, 2, 1),
        num_heads: int = 4,
        num_head_channels: int = -1,
    ) -> None:
        super().__init__()
        temb_channels = 4 * model_channels
        level_channels = [model_channels * mult for mult in channel_mult]
        self.time_proj = Timesteps(model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(model_channels, temb_channels)
        self.conv_in = nn.Conv2d(in_channels, model_channels, kernel_size=3, padding=1)

        self.down_resnets = nn.ModuleList()
        self.down_attentions = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        channels = model_channels
        for level, out_level in enumerate(level_channels):
            resnets, attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                resnets.append(_resnet(channels, out_level, temb_channels))
                channels = out_level
                if 2**level in attention_resolutions:
                    heads = num_heads if num_head_channels == -1 else channels // num_head_channels
                    attentions.append(SelfAttention2d(channels, num_heads=heads))
            self.down_resnets.append(resnets)
            self.down_attentions.append(attentions)
            if level < len(level_channels) - 1:
                self.downsamplers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1))

        mid_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.mid_resnets = nn.ModuleList([_resnet(channels, channels, temb_channels) for _ in range(2)])
        self.mid_attention = SelfAttention2d(channels, num_heads=mid_heads)
        feature_channels = level_channels[:-1] + [channels]
        self.feature_heads = nn.ModuleList(_resnet(c, out_channels, temb_channels) for c in feature_channels)

    def forward(self, lr_latent: torch.Tensor, t: torch.Tensor) -> dict[int, torch.Tensor]:
        """lr_latent (B, C_in, h, w), t (B,) int64 -> {w_k: (B, out_channels, h_k, w_k)}."""
        temb = self.time_embedding(self.time_proj(t).to(lr_latent.dtype))  # (B, 4 * model_channels)
        level_feats = self._trunk(self.conv_in(lr_latent), temb)
        return {feat.shape[-1]: head(feat, temb) for head, feat in zip(self.feature_heads, level_feats)}

    def _trunk(self, h: torch.Tensor, temb: torch.Tensor) -> list[torch.Tensor]:
        """Half-UNet pass; returns the activations before each downsample and the middle output."""
        level_feats = []
        for level, (resnets, attentions) in enumerate(zip(self.down_resnets, self.down_attentions)):
            for index, resnet in enumerate(resnets):
                h = resnet(h, temb)
                if len(attentions) > 0:
                    h = attentions[index](h)
            if level < len(self.downsamplers):
                level_feats.append(h)
                h = self.downsamplers[level](h)
        h = self.mid_resnets[1](self.mid_attention(self.mid_resnets[0](h, temb)), temb)
        return level_feats + [h]

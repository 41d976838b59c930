"""DeeDSR's degradation-aware adapter and the modulated UNet (https://arxiv.org/abs/2404.00661, section 3.3).

A time-aware encoder reads the LR latent; after every resnet a degradation-aware (DA) block adapts
its features to the degradation vector d (dynamic depthwise kernels and channel attention predicted
from d, DASR: https://arxiv.org/abs/2104.00416). Two outputs steer a frozen diffusers UNet:

    local:  F_w = head_w(features at width w)          -> every UNet resnet: h <- (1 + gamma(F_w)) h + beta(F_w)
    global: tokens = proj(middle features)  (B, hw, D)  -> the context of every cross-attention (no text)

As in `sft_unet.py`, no UNet code is copied: forward hooks on each `ResnetBlock2D.conv2` modulate the
residual branch before the skip add. The gamma/beta output convolutions start at zero, so at step 0
the modulated UNet equals the plain UNet (given the same context).

Paper -> code: degradation representation -> `degradation_vector`; DA block -> `DABlock`;
modulation -> `ModulationLayer`; global representation -> `tokens`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stablesr.models.sft_unet import resnets_in_order
from stablesr.models.time_aware_encoder import TimeAwareEncoder


class DAConv(nn.Module):
    """DASR's DA convolution: x (B, C, H, W), d_c (B, C) -> (B, C, H, W).

    Branch 1: a per-sample depthwise 3x3 kernel predicted from d_c, SiLU, 1x1 conv.
    Branch 2: channel attention x * 2 sigmoid(MLP(d_c)) (the factor 2 makes a zero MLP the identity).
    """

    def __init__(self, channels: int, *, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.kernel = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, 9 * channels))
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.attention = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor, d_c: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        kernels = self.kernel(d_c).reshape(batch * channels, 1, 3, 3)  # (B, 9C) -> (BC, 1, 3, 3)
        # (B, C, H, W) -> (1, BC, H, W): one group per (sample, channel)
        dynamic = F.conv2d(x.reshape(1, batch * channels, height, width), kernels, padding=1, groups=batch * channels)
        dynamic = self.pointwise(F.silu(dynamic.reshape(batch, channels, height, width)))
        scale = 2.0 * torch.sigmoid(self.attention(d_c))[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        return dynamic + x * scale


class DABlock(nn.Module):
    """Degradation-aware block: x (B, C, H, W), d (B, vector_dim) -> (B, C, H, W), residual.

    d_c = SiLU(Linear(d)); body = DAConv, SiLU, conv3, SiLU, DAConv, SiLU, conv3; then conv3; x + out.
    """

    def __init__(self, channels: int, vector_dim: int) -> None:
        super().__init__()
        self.compress = nn.Linear(vector_dim, channels, bias=False)
        self.da_conv1, self.da_conv2 = DAConv(channels), DAConv(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, degradation_vector: torch.Tensor) -> torch.Tensor:
        d_c = F.silu(self.compress(degradation_vector))  # (B, vector_dim) -> (B, C)
        h = self.conv1(F.silu(self.da_conv1(x, d_c)))
        h = self.conv2(F.silu(self.da_conv2(F.silu(h), d_c)))
        return x + self.conv_out(h)


class ModulationLayer(nn.Module):
    """(1 + gamma) h + beta with gamma, beta = conv3(ReLU(conv3(cond))); no normalisation of h.

    h (B, C, H, W), cond (B, cond_channels, H, W) -> (B, C, H, W). The gamma/beta convolutions are
    zero-initialised (the shared one is not, or no gradient would ever reach either), so a fresh
    layer returns h exactly.
    """

    def __init__(self, channels: int, *, cond_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden_channels, 3, padding=1), nn.ReLU())
        self.to_gamma = nn.Conv2d(hidden_channels, channels, 3, padding=1)
        self.to_beta = nn.Conv2d(hidden_channels, channels, 3, padding=1)
        for conv in (self.to_gamma, self.to_beta):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        hidden = self.shared(cond)
        return h * (1 + self.to_gamma(hidden)) + self.to_beta(hidden)


class DeeDSRModule(ModelMixin, ConfigMixin):
    """The trainable adapter: time-aware encoder with DA blocks, token projection, one modulation layer per resnet.

    forward(lr_latent (B, 4, h, w), t (B,), degradation_vector (B, vector_dim)) ->
    ({width: (B, cond_channels, h_w, w)}, tokens (B, h_mid w_mid, cross_attention_dim)).
    """

    @register_to_config
    def __init__(self, *, modulation_channels: list[int], vector_dim: int = 1024, cross_attention_dim: int = 1024,
                 cond_channels: int = 256, hidden_channels: int = 128, encoder: dict | None = None) -> None:
        super().__init__()
        encoder_kwargs = {"model_channels": 256, "num_res_blocks": 1, **(encoder or {}), "out_channels": cond_channels}
        self.time_encoder = TimeAwareEncoder(**encoder_kwargs)
        resnet_channels = [resnet.out_channels for level in self.time_encoder.down_resnets for resnet in level]
        self.da_blocks = nn.ModuleList(DABlock(channels, vector_dim) for channels in resnet_channels)
        mid_channels = self.time_encoder.mid_resnets[-1].out_channels
        self.to_tokens = nn.Linear(mid_channels, cross_attention_dim)
        self.modulation_layers = nn.ModuleList(
            ModulationLayer(channels, cond_channels=cond_channels, hidden_channels=hidden_channels)
            for channels in modulation_channels)

    def __getattr__(self, name: str):
        # The config entry "encoder" (kwargs) is not a module; modules win over config attributes.
        modules = self.__dict__.get("_modules", {})
        return modules[name] if name in modules else super().__getattr__(name)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, *, vector_dim: int, cond_channels: int = 256,
                  hidden_channels: int = 128, **encoder_kwargs) -> DeeDSRModule:
        """A fresh adapter sized for `unet` (one modulation layer per resnet, tokens of its cross-attention width)."""
        channels = [resnet.conv2.out_channels for resnet in resnets_in_order(unet)]
        return cls(modulation_channels=channels, vector_dim=vector_dim,
                   cross_attention_dim=unet.config.cross_attention_dim, cond_channels=cond_channels,
                   hidden_channels=hidden_channels, encoder=encoder_kwargs)

    def forward(self, lr_latent: torch.Tensor, t: torch.Tensor,
                degradation_vector: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        encoder = self.time_encoder
        temb = encoder.time_embedding(encoder.time_proj(t).to(lr_latent.dtype))  # (B, 4 model_channels)
        h, level_feats, block = encoder.conv_in(lr_latent), [], 0
        for level, (resnets, attentions) in enumerate(zip(encoder.down_resnets, encoder.down_attentions)):
            for index, resnet in enumerate(resnets):
                h = self.da_blocks[block](resnet(h, temb), degradation_vector)
                block += 1
                if len(attentions) > 0:
                    h = attentions[index](h)
            if level < len(encoder.downsamplers):
                level_feats.append(h)
                h = encoder.downsamplers[level](h)
        h = encoder.mid_resnets[1](encoder.mid_attention(encoder.mid_resnets[0](h, temb)), temb)
        cond_feats = {feat.shape[-1]: head(feat, temb) for head, feat in zip(encoder.feature_heads, level_feats + [h])}
        tokens = self.to_tokens(h.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, hw, C) -> (B, hw, D)
        return cond_feats, tokens


def cross_attention_projections(unet: UNet2DConditionModel) -> list[nn.Parameter]:
    """The key and value projections of every cross-attention (attn2.to_k / to_v): trained in stage 2."""
    return [p for name, p in unet.named_parameters() if ".attn2.to_k." in name or ".attn2.to_v." in name]


class DeeDSRUNet(nn.Module):
    """A diffusers UNet + `DeeDSRModule` + the degradation learner, modulation by forward hooks on every
    `ResnetBlock2D.conv2` (as `SFTUNet`), the adapter's tokens as the cross-attention context.

    With gradient checkpointing of the UNet, the recomputation in backward uses the features of the latest
    forward call, so call backward before the next forward (the usual training loop), as `SFTUNet`."""

    def __init__(self, unet: UNet2DConditionModel, adapter: DeeDSRModule, degradation_learner: nn.Module) -> None:
        super().__init__()
        resnets = resnets_in_order(unet)
        if len(resnets) != len(adapter.modulation_layers):
            raise ValueError(f"UNet has {len(resnets)} resnets but the adapter has "
                             f"{len(adapter.modulation_layers)} modulation layers")
        self.unet, self.adapter, self.degradation_learner = unet, adapter, degradation_learner
        self._cond_feats: dict[int, torch.Tensor] | None = None
        self._hook_handles = [resnet.conv2.register_forward_hook(self._make_hook(index))
                              for index, resnet in enumerate(resnets)]

    @torch.no_grad()
    def degradation_vector(self, lr_image: torch.Tensor) -> torch.Tensor:
        """lr_image (B, 3, H, W) in [0, 1] (the LR before upscaling) -> d (B, vector_dim), frozen learner."""
        return self.degradation_learner(lr_image.to(self.degradation_learner.dtype)).to(self.adapter.dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, lr_latent: torch.Tensor,
                degradation_vector: torch.Tensor) -> torch.Tensor:
        """x_t, lr_latent (B, 4, h, w); t (B,) or scalar int64; degradation_vector (B, vector_dim) -> (B, 4, h, w)."""
        t = t.reshape(-1).expand(x_t.shape[0])
        self._cond_feats, tokens = self.adapter(lr_latent.to(self.adapter.dtype), t, degradation_vector)
        try:
            return self.unet(x_t, t, encoder_hidden_states=tokens.to(self.unet.dtype)).sample
        finally:
            if not (torch.is_grad_enabled() and self.unet.is_gradient_checkpointing):
                self._cond_feats = None  # kept only for the recomputation in backward

    def remove_hooks(self) -> None:
        """Detach the modulation hooks: the UNet behaves as the plain diffusers UNet again."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def _make_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]:
        def modulate(module: nn.Module, inputs: tuple, h: torch.Tensor) -> torch.Tensor:
            if self._cond_feats is None:  # outside this wrapper's forward: the plain UNet
                return h
            if h.shape[-1] not in self._cond_feats:
                raise ValueError(f"no adapter feature of width {h.shape[-1]} (have {sorted(self._cond_feats)}): the "
                                 "adapter's channel_mult must have as many levels as the UNet")
            cond = self._cond_feats[h.shape[-1]]
            return self.adapter.modulation_layers[index](h.to(cond.dtype), cond).to(h.dtype)

        return modulate

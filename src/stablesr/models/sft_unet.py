"""StableSR's modulated UNet: a frozen diffusers UNet plus SFT layers (https://arxiv.org/abs/2305.07015).

StableSR inserts one SFT layer into every resnet of the Stable Diffusion UNet (22 for SD 2.x): the
resnet's residual branch h = conv2(...) becomes SFT(h, F_w) before the skip connection is added,
where F_w is the time-aware encoder feature with the same spatial width w as h.

No UNet code is copied: `SFTUNet` registers a forward hook on each `ResnetBlock2D.conv2`, which
returns the modulated output in place of the plain one. The trainable part (encoder + SFT layers)
is one `StableSRModule`, saved and loaded as a single pipeline component.

    cond_feats = encoder(lr_latent, t)                      # {w: (B, cond_channels, h_w, w)}
    conv2 out h (B, C, h_w, w)  ->  sft_i(h, cond_feats[w])  # i = index of the resnet in order
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from stablesr.models.sft import SFTLayer
from stablesr.models.time_aware_encoder import TimeAwareEncoder

SFT_HIDDEN_CHANNELS = 128


def resnets_in_order(unet: UNet2DConditionModel) -> list[ResnetBlock2D]:
    """Every resnet of the UNet: down_blocks..., mid_block, up_blocks... (22 for SD 2.x).

    This is also the order of the official SFT layers: input_blocks, middle_block, output_blocks.
    """
    resnets = [resnet for block in unet.down_blocks for resnet in block.resnets]
    resnets += list(unet.mid_block.resnets)
    resnets += [resnet for block in unet.up_blocks for resnet in block.resnets]
    return resnets


class StableSRModule(ModelMixin, ConfigMixin):
    """The trainable "SR module": the time-aware encoder and one SFT layer per UNet resnet.

    `sft_channels[i]` is the channel count of the i-th resnet in `resnets_in_order` order;
    `encoder` holds the `TimeAwareEncoder` keyword arguments (its out_channels must equal
    cond_channels). The official SD 2.x module has 105,514,240 parameters.
    """

    @register_to_config
    def __init__(
        self,
        *,
        sft_channels: list[int],
        cond_channels: int = 256,
        sft_hidden_channels: int = SFT_HIDDEN_CHANNELS,
        encoder: dict | None = None,
    ) -> None:
        super().__init__()
        encoder_kwargs = {"out_channels": cond_channels, **(encoder or {})}
        if encoder_kwargs["out_channels"] != cond_channels:
            raise ValueError(
                f"encoder out_channels {encoder_kwargs['out_channels']} != cond_channels {cond_channels}"
            )
        self.encoder = TimeAwareEncoder(**encoder_kwargs)
        self.sft_layers = nn.ModuleList(
            SFTLayer(channels, cond_channels=cond_channels, hidden_channels=sft_hidden_channels)
            for channels in sft_channels
        )

    def __getattr__(self, name: str):
        # The config entry "encoder" (kwargs) shares its name with the submodule; the module wins.
        modules = self.__dict__.get("_modules", {})
        return modules[name] if name in modules else super().__getattr__(name)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, *, cond_channels: int = 256, **encoder_kwargs) -> StableSRModule:
        """A freshly initialised SR module sized for `unet` (one SFT layer per resnet)."""
        sft_channels = [resnet.conv2.out_channels for resnet in resnets_in_order(unet)]
        encoder = {"out_channels": cond_channels, **encoder_kwargs}
        return cls(sft_channels=sft_channels, cond_channels=cond_channels, encoder=encoder)


class SFTUNet(nn.Module):
    """Runtime composition: a (frozen) diffusers UNet2DConditionModel + StableSRModule, SFT applied
    by forward hooks on every ResnetBlock2D.conv2 (no copied UNet file).

    Works under torch.no_grad and with autograd (gradients reach the SR module while the UNet
    stays frozen), for any batch size (features are per sample). The encoder and SFT layers run in
    the SR module's dtype, the UNet in its own; the SFT output is cast back to the UNet's dtype.
    With gradient checkpointing of the UNet, the recomputation in backward uses the features of
    the latest forward call, so call backward before the next forward (the usual training loop).
    """

    def __init__(self, unet: UNet2DConditionModel, sr_module: StableSRModule) -> None:
        super().__init__()
        resnets = resnets_in_order(unet)
        if len(resnets) != len(sr_module.sft_layers):
            raise ValueError(
                f"UNet has {len(resnets)} resnets but the SR module has {len(sr_module.sft_layers)} SFT layers"
            )
        self.unet = unet
        self.sr_module = sr_module
        self._cond_feats: dict[int, torch.Tensor] | None = None
        self._hook_handles = [
            resnet.conv2.register_forward_hook(self._make_hook(index)) for index, resnet in enumerate(resnets)
        ]

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, lr_latent: torch.Tensor
    ) -> torch.Tensor:
        """Model output (eps or v, per the UNet's training) of the SFT-modulated UNet.

        x_t (B, 4, h, w) noisy latent; t (B,) int64 original timestep 0..999 (a scalar is broadcast);
        encoder_hidden_states (B, 77, D) text context; lr_latent (B, 4, h, w) clean scaled LR latent,
        or (B / k, 4, h, w) shared by the k groups of x_t (the classifier-free-guidance batch
        [uncond, cond]): the encoder and the SFT conditions then run once, not k times, and t must
        repeat with the same period. Returns (B, 4, h, w).
        """
        batch, lr_batch = x_t.shape[0], lr_latent.shape[0]
        if batch % lr_batch != 0 or lr_latent.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(f"lr_latent {tuple(lr_latent.shape)} must match x_t {tuple(x_t.shape)} in size, "
                             "with a batch that divides x_t's")
        t = t.reshape(-1).expand(batch)
        lr_t = t[:lr_batch]
        if not torch.equal(t.view(-1, lr_batch), lr_t.expand(batch // lr_batch, -1)):
            raise ValueError("a shared lr_latent needs timesteps that repeat with the lr_latent batch")
        self._cond_feats = self.sr_module.encoder(lr_latent.to(self.sr_module.dtype), lr_t)
        try:
            return self.unet(x_t, t, encoder_hidden_states=encoder_hidden_states).sample
        finally:
            if not (torch.is_grad_enabled() and self.unet.is_gradient_checkpointing):
                self._cond_feats = None  # kept only for the recomputation in backward

    def remove_hooks(self) -> None:
        """Detach the SFT hooks: the UNet behaves as the plain diffusers UNet again."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def _make_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]:
        def modulate(module: nn.Module, inputs: tuple, h: torch.Tensor) -> torch.Tensor:
            # Outside this wrapper's forward: the plain UNet (another wrapper may be active).
            if self._cond_feats is None:
                return h
            # The SFT layer runs in the SR module's dtype (e.g. fp32 beside an fp16 UNet); no-op casts when equal.
            cond = self._cond_for_width(h.shape[-1])
            return self.sr_module.sft_layers[index](h.to(cond.dtype), cond).to(h.dtype)

        return modulate

    def _cond_for_width(self, width: int) -> torch.Tensor:
        if width not in self._cond_feats:
            raise ValueError(
                f"no encoder feature of width {width} (have {sorted(self._cond_feats)}): "
                "the encoder and the UNet must downsample the same latent size"
            )
        return self._cond_feats[width]

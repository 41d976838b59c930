"""CCSR control modules (v1 "LAControlNet", v2 latent-conditioned ControlNet) and v1's condition encoder.

CCSR (Sun et al. 2024, https://arxiv.org/abs/2401.00877) steers a frozen SD 2.1 UNet with a
ControlNet (Zhang et al. 2023, https://arxiv.org/abs/2302.05543) without a hint CNN: the trainable
copy of the UNet encoder + middle block takes concat(x_t, c) in its first conv (8 channels), and
every skip feature plus the middle output passes a zero-initialised 1x1 conv, scaled by a control
strength, into the frozen UNet (`UNet2DConditionModel`'s down/mid additional residuals: added to the
skips before the decoder concatenates them, and to the middle block's output).

    c          = mode(E_cond(2 lr - 1)) * scaling    (`ConditionEncoder`, a frozen copy of the VAE encoder)
    residuals  = strength * zero_conv_k(h_k)         (13 for SD 2.x: 12 skips + the middle block)

CCSR v2 (`LatentControlNet`) is a diffusers `ControlNetModel` whose hint CNN is replaced by one 3x3 conv
on the LR VAE latent (official name `condition_conv_in`), added to conv_in(x_t).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

UNET_STRUCTURE_SKIP = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def _structure(config) -> dict:
    """A diffusers config -> plain JSON-able constructor kwargs (private keys dropped, tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if k not in UNET_STRUCTURE_SKIP}


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class LAControlNet(ModelMixin, ConfigMixin):
    """The trainable copy of a UNet's encoder + middle block, conditioned by concatenation.

    unet_config: the UNet's constructor kwargs; condition_channels: channels of c (4: the LR latent).
    `conv_in` takes in_channels + condition_channels; `zero_convs[k]` follows the k-th skip feature
    (conv_in, every resnet/attention output, every downsampler), `mid_zero_conv` the middle block.
    """

    @register_to_config
    def __init__(self, *, unet_config: dict, condition_channels: int = 4) -> None:
        super().__init__()
        config = {**unet_config, "in_channels": unet_config["in_channels"] + condition_channels}
        copy_of = UNet2DConditionModel.from_config(config)  # the decoder half is dropped below
        self.conv_in, self.time_proj, self.time_embedding = copy_of.conv_in, copy_of.time_proj, copy_of.time_embedding
        self.down_blocks, self.mid_block = copy_of.down_blocks, copy_of.mid_block
        self.zero_convs = nn.ModuleList(_zero_conv(c) for c in self.skip_channels())
        self.mid_zero_conv = _zero_conv(unet_config["block_out_channels"][-1])

    def skip_channels(self) -> list[int]:
        """Channels of the skip features in the UNet's order (SD 2.x: 320 x 4, 640 x 3, 1280 x 5)."""
        channels = [self.conv_in.out_channels]
        for block in self.down_blocks:
            channels += [resnet.conv2.out_channels for resnet in block.resnets]
            channels += [down.conv.out_channels for down in block.downsamplers or []]
        return channels

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, *, condition_channels: int = 4) -> LAControlNet:
        """Initialised from `unet`: its encoder, middle block and time embedding copied; the extra input
        channels of conv_in and every zero conv start at zero, so the controlled UNet equals `unet`."""
        control = cls(unet_config=_structure(unet.config), condition_channels=condition_channels)
        state = {k: v for k, v in unet.state_dict().items() if k.split(".")[0] in
                 ("time_embedding", "down_blocks", "mid_block", "conv_in")}
        weight = state["conv_in.weight"]  # (C, in, 3, 3) -> (C, in + condition_channels, 3, 3)
        state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], condition_channels,
                                                                      *weight.shape[2:])], dim=1)
        missing, unexpected = control.load_state_dict(state, strict=False)
        if unexpected or any(not k.split(".")[0].endswith("zero_convs") and k.split(".")[0] != "mid_zero_conv"
                             for k in missing):
            raise ValueError(f"UNet and control module differ: missing {missing}, unexpected {unexpected}")
        return control if control.dtype == unet.dtype else control.to(dtype=unet.dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                condition: torch.Tensor, *, strength: float = 1.0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """x_t (B, 4, h, w), t (B,) or scalar int64, encoder_hidden_states (B, 77, D), condition (B, 4, h, w)
        -> (skip residuals, each (B, C_k, h_k, w_k); middle residual (B, C_mid, h/2^L, w/2^L)), all * strength."""
        t = t.reshape(-1).expand(x_t.shape[0]).to(x_t.device)
        emb = self.time_embedding(self.time_proj(t).to(x_t.dtype))  # (B, time_embed_dim)
        h = self.conv_in(torch.cat([x_t, condition.to(x_t.dtype)], dim=1))  # (B, 4 + 4, h, w) -> (B, C0, h, w)
        skips = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, features = block(h, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h, features = block(h, emb)
            skips += features
        h = self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        down = tuple(strength * conv(skip) for conv, skip in zip(self.zero_convs, skips, strict=True))
        return down, strength * self.mid_zero_conv(h)


class LatentControlNet(ModelMixin, ConfigMixin):
    """CCSR v2: a diffusers ControlNetModel (`controlnet_config`) conditioned by a conv on the LR latent.

    `controlnet.controlnet_cond_embedding` is Conv2d(condition_channels -> block_out_channels[0], 3x3), the
    official `condition_conv_in`; forward returns the (down, mid) residuals like `LAControlNet`.
    """

    @register_to_config
    def __init__(self, *, controlnet_config: dict, condition_channels: int = 4) -> None:
        super().__init__()
        self.controlnet = ControlNetModel.from_config(controlnet_config)
        width = controlnet_config["block_out_channels"][0]
        self.controlnet.controlnet_cond_embedding = nn.Conv2d(condition_channels, width, kernel_size=3, padding=1)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, *, condition_channels: int = 4) -> LatentControlNet:
        """Initialised from `unet` (diffusers' ControlNetModel.from_unet); the condition conv starts at zero."""
        base = ControlNetModel.from_unet(unet)
        control = cls(controlnet_config=_structure(base.config), condition_channels=condition_channels)
        state = {k: v for k, v in base.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        control.controlnet.load_state_dict(state, strict=False)
        nn.init.zeros_(control.controlnet.controlnet_cond_embedding.weight)
        nn.init.zeros_(control.controlnet.controlnet_cond_embedding.bias)
        return control if control.dtype == unet.dtype else control.to(dtype=unet.dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                condition: torch.Tensor, *, strength: float = 1.0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """x_t, condition (B, 4, h, w) (the scaled LR latent), t (B,), context (B, 77, D) -> (down, mid) residuals."""
        t = t.reshape(-1).expand(x_t.shape[0]).to(x_t.device)
        down, mid = self.controlnet(x_t, t, encoder_hidden_states, controlnet_cond=condition.to(x_t.dtype),
                                    conditioning_scale=strength, return_dict=False)
        return tuple(down), mid


class ControlledUNet(nn.Module):
    """Runtime composition: the frozen diffusers UNet plus a control module's residuals (no copied UNet)."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: LAControlNet | LatentControlNet) -> None:
        super().__init__()
        self.unet, self.controlnet = unet, controlnet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                condition: torch.Tensor, *, strength: float = 1.0) -> torch.Tensor:
        """Model output (eps) of the controlled UNet: x_t, condition (B, 4, h, w); t (B,); context (B, 77, D)."""
        t = t.reshape(-1).expand(x_t.shape[0])
        down, mid = self.controlnet(x_t.to(self.controlnet.dtype), t, encoder_hidden_states.to(self.controlnet.dtype),
                                    condition.to(self.controlnet.dtype), strength=strength)
        dtype = self.unet.dtype
        return self.unet(x_t.to(dtype), t, encoder_hidden_states=encoder_hidden_states.to(dtype),
                         down_block_additional_residuals=tuple(r.to(dtype) for r in down),
                         mid_block_additional_residual=mid.to(dtype)).sample


class ConditionEncoder(ModelMixin, ConfigMixin):
    """A frozen copy of the VAE encoder + quant_conv (CCSR v1 `cond_encoder`); `encode` like AutoencoderKL's.

    The condition latent is the posterior mode times the VAE scaling factor (`condition_latent`).
    """

    @register_to_config
    def __init__(self, *, vae_config: dict) -> None:
        super().__init__()
        vae = AutoencoderKL.from_config(vae_config)
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    @classmethod
    def from_vae(cls, vae: AutoencoderKL) -> ConditionEncoder:
        encoder = cls(vae_config=_structure(vae.config))
        encoder.encoder.load_state_dict(vae.encoder.state_dict())
        encoder.quant_conv.load_state_dict(vae.quant_conv.state_dict())
        return encoder if encoder.dtype == vae.dtype else encoder.to(dtype=vae.dtype)

    def encode(self, image: torch.Tensor) -> AutoencoderKLOutput:
        """image (B, 3, H, W) in [-1, 1] -> posterior over the unscaled (B, 4, H/8, W/8)."""
        moments = self.quant_conv(self.encoder(image))  # (B, 8, H/8, W/8): mean and log-variance
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments))

    def condition_latent(self, image: torch.Tensor) -> torch.Tensor:
        """c = mode(posterior) * scaling_factor, (B, 4, H/8, W/8), for image (B, 3, H, W) in [-1, 1]."""
        return self.encode(image).latent_dist.mode() * self.config.vae_config.get("scaling_factor", 0.18215)

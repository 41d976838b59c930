"""Controllable feature wrapping (CFW): an SD AutoencoderKL whose decoder is steered by encoder features.

StableSR, Wang et al., IJCV 2024, section 3.3: https://arxiv.org/abs/2305.07015

The encoder keeps two intermediate feature maps of the (bicubic-upsampled) LR image; the decoder
fuses them back in at the same resolutions, weighted by the fidelity w:

    F_m = F_d + C(F_e, F_d; theta) * w        (paper eq. 5)

code name          paper
---------          -----
enc_feats[k]       F_e   (encoder features after the ResNets of level k+1, before its downsample)
dec_feats          F_d   (decoder features after the ResNets of the matching level)
FusionBlock        C(.; theta)
fidelity           w     (0 = plain SD decoder, 1 = maximal fidelity to the input)

Why a subclass of diffusers `AutoencoderKL`: the plain `encode` / `decode`, `save_pretrained` /
`from_pretrained`, attention processors and slicing all keep working, the SD VAE weights keep
their diffusers names, and only the two fusion blocks are added as top-level children
(`fusion_layer_1` at H/2, `fusion_layer_2` at H/4, the official level names).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (DiffusionPipeline's loader looks it up here)
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from stablesr.models.rrdb import RRDB
from stablesr.weights.keymap_vae import check_state_keys

# Encoder/decoder levels that carry CFW features: 1 (H/2, 2*ch) and 2 (H/4, 4*ch).
FUSED_LEVELS = (1, 2)


class FusionBlock(nn.Module):
    """CFW fusion C(F_e, F_d): ResBlock(2C->C) -> num_blocks x RRDB(C) -> ResBlock(C->C); out = F_d + w * C.

    Shapes: enc_feat, dec_feat (B, C, H, W) -> (B, C, H, W). The ResBlocks are GroupNorm(32, eps 1e-6)
    + SiLU + 3x3 conv, twice, with a 1x1 skip when the channel count changes.
    """

    def __init__(self, channels: int, *, num_blocks: int = 2, growth_channels: int = 32, norm_num_groups: int = 32):
        super().__init__()
        resblock = dict(temb_channels=None, eps=1e-6, groups=norm_num_groups, dropout=0.0)
        self.in_block = ResnetBlock2D(in_channels=2 * channels, out_channels=channels, **resblock)
        self.rrdb_blocks = nn.Sequential(*[RRDB(channels, growth_channels) for _ in range(num_blocks)])
        self.out_block = ResnetBlock2D(in_channels=channels, out_channels=channels, **resblock)

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, *, fidelity: float) -> torch.Tensor:
        """enc_feat, dec_feat (B, C, H, W) -> dec_feat + fidelity * fused (B, C, H, W)."""
        fused = self.in_block(torch.cat([enc_feat, dec_feat], dim=1), None)  # (B, 2C, H, W) -> (B, C, H, W)
        fused = self.out_block(self.rrdb_blocks(fused), None)
        return dec_feat + fidelity * fused


class CFWAutoencoderKL(AutoencoderKL):
    """SD AutoencoderKL plus the two CFW fusion blocks of StableSR's `AutoencoderKLResi`.

    Latents here are UNSCALED (multiply by `config.scaling_factor` for the diffusion model).
    `encode_with_features`: image (B, 3, H, W) in [-1, 1] -> (posterior over (B, 4, H/8, W/8),
    [F_e at H/2 (B, 2*ch, H/2, W/2), F_e at H/4 (B, 4*ch, H/4, W/4)]).
    `decode_with_features`: z (B, 4, h, w), enc_feats -> image (B, 3, 8h, 8w).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 512,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        num_fuse_blocks: int = 2,
        fuse_growth_channels: int = 32,
    ):
        if not (use_quant_conv and use_post_quant_conv):
            raise ValueError("CFWAutoencoderKL needs quant_conv and post_quant_conv (the SD VAE layout)")
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            mid_block_add_attention=mid_block_add_attention,
        )
        fuse = dict(num_blocks=num_fuse_blocks, growth_channels=fuse_growth_channels, norm_num_groups=norm_num_groups)
        self.fusion_layer_1 = FusionBlock(block_out_channels[1], **fuse)
        self.fusion_layer_2 = FusionBlock(block_out_channels[2], **fuse)

    # ----------------------------------------------------------------------------------------- encoder
    def encode_with_features(self, image: torch.Tensor) -> tuple[DiagonalGaussianDistribution, list[torch.Tensor]]:
        """image (B, 3, H, W) in [-1, 1] -> (posterior over the unscaled latent, [F_e at H/2, F_e at H/4]).

        Same operations, in the same order, as `AutoencoderKL.encode`, so the posterior is bit-identical.
        """
        encoder = self.encoder
        hidden, enc_feats = self._run_down_blocks(image, stop_after=len(encoder.down_blocks) - 1)
        hidden = encoder.conv_act(encoder.conv_norm_out(encoder.mid_block(hidden)))
        moments = self.quant_conv(encoder.conv_out(hidden))  # (B, 2 * latent_channels, H/8, W/8)
        return DiagonalGaussianDistribution(moments), enc_feats

    def extract_enc_feats(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image (B, 3, H, W) -> [F_e at H/2, F_e at H/4]; runs the encoder only as far as level 2."""
        return self._run_down_blocks(image, stop_after=max(FUSED_LEVELS))[1]

    def _run_down_blocks(self, image: torch.Tensor, *, stop_after: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder conv_in and down levels 0..stop_after; returns the last hidden state and F_e."""
        hidden = self.encoder.conv_in(image)
        enc_feats = []
        for level, down_block in enumerate(self.encoder.down_blocks[: stop_after + 1]):
            for resnet in down_block.resnets:
                hidden = resnet(hidden, temb=None)
            if level in FUSED_LEVELS:
                enc_feats.append(hidden)
            for downsampler in down_block.downsamplers or []:
                hidden = downsampler(hidden)
        return hidden, enc_feats

    # ----------------------------------------------------------------------------------------- decoder
    def decode_with_features(
        self, z: torch.Tensor, enc_feats: list[torch.Tensor] | None, *, fidelity: float
    ) -> torch.Tensor:
        """z (B, 4, h, w) UNSCALED, enc_feats [F_e at 4h, F_e at 2h] -> image (B, 3, 8h, 8w) in about [-1, 1].

        fidelity == 0 or enc_feats None runs the plain SD decoder (bit-identical, no fusion compute).
        """
        if enc_feats is None or fidelity == 0:
            return self.decode(z).sample
        if len(enc_feats) != len(FUSED_LEVELS):
            raise ValueError(f"enc_feats must hold {len(FUSED_LEVELS)} tensors (H/2, H/4), got {len(enc_feats)}")
        decoder = self.decoder
        hidden = decoder.mid_block(decoder.conv_in(self.post_quant_conv(z)), None)
        num_levels = len(decoder.up_blocks)
        fusions = {1: self.fusion_layer_1, 2: self.fusion_layer_2}
        for index, up_block in enumerate(decoder.up_blocks):
            level = num_levels - 1 - index  # diffusers up_blocks[0] is the official up level 3 (H/8)
            for resnet in up_block.resnets:
                hidden = resnet(hidden, temb=None)
            if level in fusions:
                hidden = fusions[level](enc_feats[level - 1], hidden, fidelity=fidelity)
            for upsampler in up_block.upsamplers or []:
                hidden = upsampler(hidden)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(hidden)))

    # ----------------------------------------------------------------------------------------- loading
    def load_vae_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a plain diffusers AutoencoderKL state dict; the fusion blocks keep their current weights.

        Raises CheckpointMismatchError naming missing, unexpected or mis-shaped keys.
        """
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(("fusion_layer_1.", "fusion_layer_2."))}
        check_state_keys(state, own)
        self.load_state_dict(state, strict=False)


"""Sampling with the model being trained: validation previews and CFW training latents.

Both run StableSR's sampler (https://arxiv.org/abs/2305.07015, section 3.4) on a whole latent,
without tiling: x_T = q_sample(z_lr, t = 999) with the un-respaced SD table, then N respaced DDPM
steps; the encoder and UNet see the original timesteps. They reuse the trainer's `SFTUNet`
(whose hooks are already on the UNet) instead of building a second one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from stablesr.color_fix import apply_color_fix
from stablesr.models.sft_unet import SFTUNet
from stablesr.sampling.chain import sample_chain, untiled_model
from stablesr.sampling.samplers import default_noise_sampler
from stablesr.sampling.schedules import betas_scaled_linear


@torch.no_grad()
def encode_latent(vae, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """image (B, 3, H, W) in [-1, 1] -> scaled posterior SAMPLE (B, 4, H/8, W/8), as StableSR trains and samples.

    The result is made contiguous: the CPU VAE can return a channels-last sample, and the UNet's
    backward pass on CPU (torch 2.13) crashes on such inputs.
    """
    latent = vae.encode(image).latent_dist.sample(generator=generator) * vae.config.scaling_factor
    return latent.contiguous()


@torch.no_grad()
def sample_sr_latent(sft_unet: SFTUNet, lr_latent: torch.Tensor, context: torch.Tensor, *, steps: int,
                     prediction_type: str, generator: torch.Generator | None) -> torch.Tensor:
    """lr_latent (B, 4, h, w) scaled, context (1, 77, D) -> sampled scaled latent (B, 4, h, w).

    The pipeline's chain (`sampling/chain.py`: x_T from the noised LR latent, respaced DDPM) on the whole latent.
    """
    model = untiled_model(sft_unet, context, lr_latent)
    return sample_chain(model, lr_latent, betas_scaled_linear(), steps=steps, prediction_type=prediction_type,
                        noise_sampler=default_noise_sampler(generator))


@torch.no_grad()
def upscale_preview(sft_unet: SFTUNet, vae, context: torch.Tensor, lr: torch.Tensor, *, scale: int, steps: int,
                    prediction_type: str, fidelity: float, generator: torch.Generator | None) -> torch.Tensor:
    """lr (1, 3, h, w) in [0, 1] -> SR (1, 3, H, W) in [0, 1], H = scale h rounded down to a multiple of 8."""
    lr_up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1
    height, width = (lr_up.shape[-2] // 8) * 8, (lr_up.shape[-1] // 8) * 8
    lr_up = lr_up[..., :height, :width].to(vae.device, vae.dtype)  # (1, 3, H, W)
    lr_latent = encode_latent(vae, lr_up, generator)
    latent = sample_sr_latent(sft_unet, lr_latent, context, steps=steps, prediction_type=prediction_type,
                              generator=generator)
    z = latent.to(vae.dtype) / vae.config.scaling_factor
    enc_feats = vae.extract_enc_feats(lr_up) if fidelity > 0 else None
    decoded = vae.decode_with_features(z, enc_feats, fidelity=fidelity)
    decoded = apply_color_fix(decoded.float(), lr_up.float(), method="wavelet")
    return ((decoded + 1) / 2).clamp(0, 1)


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit RGB PNG."""
    array = image.reshape(-1, *image.shape[-2:]).permute(1, 2, 0).float().cpu().numpy()  # (3, H, W) -> (H, W, 3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray((array * 255.0).round().clip(0, 255).astype(np.uint8)).save(path)

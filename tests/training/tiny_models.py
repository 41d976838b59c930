"""A tiny seeded StableSR pipeline for the training and train-CLI tests (smaller than conftest's, for speed)."""

from __future__ import annotations

import torch

TINY_UNET = dict(sample_size=8, block_out_channels=[32, 64], layers_per_block=1,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=[2, 4],
                 cross_attention_dim=16, use_linear_projection=True)
TINY_ENCODER = dict(cond_channels=32, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), num_heads=2)
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, num_fuse_blocks=1, fuse_growth_channels=8)


def make_tiny_pipeline(seed: int = 0, *, prediction_type: str = "epsilon"):
    """A random tiny StableSRPipeline (UNet 0.8 M, SR module 1.6 M, CFW VAE 0.65 M parameters)."""
    from diffusers import UNet2DConditionModel

    from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
    from stablesr.models.sft_unet import StableSRModule
    from stablesr.models.text_encoder import PromptEmbeddings
    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.weights.loading import make_scheduler

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    with torch.no_grad():  # a non-trivial output layer (diffusers leaves it random already; make it larger)
        unet.conv_out.weight.normal_(0, 0.05)
    sr_module = StableSRModule.from_unet(unet, **TINY_ENCODER)
    vae = CFWAutoencoderKL(**TINY_VAE)
    embeds = PromptEmbeddings.from_tensors({"null": torch.randn(1, 77, 16)}, {"null": ""})
    return StableSRPipeline(unet=unet, sr_module=sr_module, vae=vae, scheduler=make_scheduler(prediction_type),
                            prompt_embeds=embeds, cfw_trained=False)

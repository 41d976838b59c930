"""A tiny CCSR v1 pipeline of real components with seeded random weights (no files), for the tests."""

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from stablesr.models.controlnet import ConditionEncoder, LAControlNet
from stablesr.models.text_encoder import PromptEmbeddings
from stablesr.pipelines.ccsr import CCSRPipeline
from stablesr.weights.loading import make_scheduler

TINY_UNET = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32,
                 attention_head_dim=(2, 4, 4, 4), use_linear_projection=True, sample_size=16,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
TINY_VAE = dict(block_out_channels=(32, 32, 64, 64), latent_channels=4, layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=128)


def make_tiny_ccsr_pipeline(seed: int = 0) -> CCSRPipeline:
    """UNet 32/64/64/64 (SD 2.x block layout: 13 control residuals), VAE 32/32/64/64, context width 32;
    the control module's zero convs and extra input channels get small random values so it matters."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    vae = AutoencoderKL(**TINY_VAE).eval()
    controlnet = LAControlNet.from_unet(unet).eval()
    with torch.no_grad():
        for p in [*controlnet.zero_convs.parameters(), *controlnet.mid_zero_conv.parameters()]:
            p.normal_(0, 0.05)
        controlnet.conv_in.weight[:, 4:].normal_(0, 0.05)
    prompts = PromptEmbeddings.from_tensors({"null": torch.randn(1, 77, 32)}, {"null": ""})
    pipe = CCSRPipeline(unet=unet, controlnet=controlnet, cond_encoder=ConditionEncoder.from_vae(vae).eval(),
                        vae=vae, scheduler=make_scheduler("epsilon"), prompt_embeds=prompts)
    pipe.set_progress_bar_config(disable=True)
    return pipe

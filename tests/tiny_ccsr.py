"""A tiny CCSR v1 pipeline of real components with seeded random weights (no files), for the tests."""

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from stablesr.configs_ccsr import V2_NEGATIVE_PROMPT, V2_PROMPT
from stablesr.models.controlnet import ConditionEncoder, LAControlNet, LatentControlNet
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


def make_tiny_ccsr_pipeline(seed: int = 0, *, version: str = "v1") -> CCSRPipeline:
    """UNet 32/64/64/64 (SD 2.x block layout: 13 control residuals), VAE 32/32/64/64, context width 32;
    the control module's zero convs and extra input channels get small random values so it matters.
    v2: a LatentControlNet (random zero convs and condition conv), no condition encoder, the v2 prompts cached."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    vae = AutoencoderKL(**TINY_VAE).eval()
    if version == "v2":
        controlnet = LatentControlNet.from_unet(unet).eval()
        with torch.no_grad():
            inner = controlnet.controlnet
            for p in [*inner.controlnet_down_blocks.parameters(), *inner.controlnet_mid_block.parameters(),
                      *inner.controlnet_cond_embedding.parameters()]:
                p.normal_(0, 0.05)
        texts = {"null": "", "positive": V2_PROMPT, "negative": V2_NEGATIVE_PROMPT}
        prompts = PromptEmbeddings.from_tensors({name: torch.randn(1, 77, 32) for name in texts}, texts)
        pipe = CCSRPipeline(unet=unet, controlnet=controlnet, vae=vae, scheduler=make_scheduler("epsilon"),
                            prompt_embeds=prompts)
        pipe.set_progress_bar_config(disable=True)
        return pipe
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

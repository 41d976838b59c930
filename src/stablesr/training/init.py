"""Starting weights for training: a pipeline folder, official checkpoints, or an SD base + a fresh SR module.

StableSR (https://arxiv.org/abs/2305.07015) finetunes only the time-aware encoder and the SFT
layers on top of a frozen Stable Diffusion 2.x; "from scratch" therefore means an SD base (a
diffusers folder or the single file `v2-1_512-ema-pruned.safetensors`) plus a freshly initialised
`StableSRModule` sized for its UNet. Every source ends as a `StableSRPipeline`, whose components
the trainers use and whose folder format the export reuses.
"""

from __future__ import annotations

from pathlib import Path

from stablesr.errors import StableSRError, WeightsNotFoundError
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.models.sft_unet import StableSRModule
from stablesr.training.config import ModelInit
from stablesr.weights.loading import (
    PREDICTION_TYPES,
    Parts,
    build_prompt_embeddings,
    build_text_encoder,
    build_unet,
    build_vae,
    load_pipeline,
    load_sd_folder,
    load_strict,
    make_scheduler,
    shipped_config,
)


def load_initial_pipeline(init: ModelInit):
    """The StableSRPipeline training starts from (see `ModelInit`); frozen parts in eval mode."""
    sources = [init.pipeline is not None, bool(init.checkpoints), init.base is not None]
    if sum(sources) != 1:
        raise StableSRError("set exactly one of model.pipeline, model.checkpoints or model.base")
    if init.pipeline is not None:
        pipe = load_pipeline(init.pipeline)
    elif init.checkpoints:
        from stablesr.weights.loading import build_pipeline

        pipe = build_pipeline(list(init.checkpoints), base=init.base_name, trust_pickle=init.trust_pickle)
    else:
        pipe = pipeline_from_base(init.base, base_name=init.base_name, trust_pickle=init.trust_pickle)
    if init.fresh_sr_module:
        pipe.register_modules(sr_module=StableSRModule.from_config(pipe.sr_module.config))
    return pipe


def pipeline_from_base(base: str | Path, *, base_name: str, trust_pickle: bool = False):
    """SD 2.x base (diffusers folder or LDM single file) + a fresh SR module -> StableSRPipeline."""
    from stablesr.pipelines.stablesr import StableSRPipeline

    path = Path(base).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"SD base {path} not found (a diffusers folder or v2-1_512-ema-pruned.safetensors)")
    tokenizer = None
    if path.is_dir():  # the folder's own UNet / VAE configs (a non-standard size trains too)
        unet, vae_state, vae_config, text_encoder, tokenizer = load_sd_folder(path)
        vae = CFWAutoencoderKL(**vae_config)
        load_strict(vae, vae_state, "SD VAE", allow_missing_prefix="fusion_layer")
    else:
        vae_config = shipped_config(base_name, "vae")
        parts = Parts()
        parts.add(path, trust_pickle=trust_pickle)
        if not parts.unet:
            raise WeightsNotFoundError(f"{path} holds no SD UNet weights (model.diffusion_model.*)")
        unet = build_unet(parts.unet, shipped_config(base_name, "unet"))
        vae, _ = build_vae(parts, vae_config)
        text_encoder = build_text_encoder(parts.text) if parts.text else None
    prompt_embeds = build_prompt_embeddings(text_encoder, tokenizer)
    return StableSRPipeline(unet=unet, sr_module=StableSRModule.from_unet(unet), vae=vae.eval().requires_grad_(False),
                            scheduler=make_scheduler(PREDICTION_TYPES[base_name]), prompt_embeds=prompt_embeds,
                            cfw_trained=False)

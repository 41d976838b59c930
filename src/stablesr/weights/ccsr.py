"""CCSR official weights -> `CCSRPipeline`, through explicit key maps: v1 `real-world_ccsr.ckpt` (LDM
layout) and the v2 diffusers folders (`controlnet/`, `vae/`, plus the SD 2.1-base folder).

Prefixes of the official checkpoint and where they go (facts: reference section A4):

    model.diffusion_model.*     SD UNet                      -> unet (the StableSR UNet key map)
    control_model.*             the control module           -> controlnet (`LAControlNet`):
        time_embed / input_blocks / middle_block   the UNet key map of those blocks
        zero_convs.{k}.0                           zero_convs.{k}
        middle_block_out.0                         mid_zero_conv
    cond_encoder.{encoder,quant_conv}.*   frozen LR encoder  -> cond_encoder (the VAE key map)
    first_stage_model.*         VAE with the finetuned decoder -> vae
    cond_stage_model.model.*    OpenCLIP text tower (optional) -> only the cached '' embedding

Everything else (schedule buffers, `decoder_loss.*`) is ignored. A missing part, an unknown key inside
a part, or a wrong shape raises one `CheckpointMismatchError` naming the keys.

v2: `controlnet/` is a diffusers ControlNetModel folder whose config has `use_vae_encode_condition: true`
and whose `condition_conv_in.*` conv replaces the hint CNN (-> `controlnet.controlnet_cond_embedding.*`);
`vae/` is a whole AutoencoderKL with the finetuned decoder; the UNet and text encoder come from SD 2.1-base.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from stablesr.configs_ccsr import V2_NEGATIVE_PROMPT, V2_PROMPT
from stablesr.errors import CheckpointMismatchError, WeightsNotFoundError
from stablesr.models.controlnet import ConditionEncoder, LAControlNet, LatentControlNet
from stablesr.models.text_encoder import PromptEmbeddings
from stablesr.weights.io import load_state_dict
from stablesr.weights.keymap_unet import convert_strict, unet_module_map
from stablesr.weights.keymap_vae import convert_ldm_vae
from stablesr.weights.loading import (
    TEXT_PREFIX,
    build_prompt_embeddings,
    build_text_encoder,
    build_unet,
    encode_text,
    load_sd_folder,
    load_strict,
    make_scheduler,
    shipped_config,
)

CONTROL_PREFIX = "control_model."
COND_ENCODER_PREFIX = "cond_encoder."
VAE_PREFIX = "first_stage_model."
UNET_PREFIX = "model.diffusion_model."
CCSR_PARTS = {UNET_PREFIX: "the SD UNet", CONTROL_PREFIX: "the control module",
              COND_ENCODER_PREFIX: "the condition encoder", VAE_PREFIX: "the VAE (finetuned decoder)"}
CCSR_HINT = ("CCSR v1 needs the full real-world_ccsr.ckpt (links in the csslc/CCSR README), which holds "
             + ", ".join(f"{p}* ({what})" for p, what in CCSR_PARTS.items()))


def is_ccsr_state(state: dict) -> bool:
    """A CCSR v1 checkpoint has control_model.* and cond_encoder.* keys."""
    return any(k.startswith(CONTROL_PREFIX) for k in state) and any(k.startswith(COND_ENCODER_PREFIX) for k in state)


def control_module_map(unet_config: dict, num_skips: int) -> dict[str, str]:
    """Official control_model module path (no prefix) -> LAControlNet module path."""
    module_map = {source: target for source, target in unet_module_map(unet_config).items()
                  if source.split(".")[0] in ("time_embed", "input_blocks", "middle_block")}
    module_map.update({f"zero_convs.{k}.0": f"zero_convs.{k}" for k in range(num_skips)})
    module_map["middle_block_out.0"] = "mid_zero_conv"
    return module_map


def convert_control_model(state: dict, unet_config: dict, *, condition_channels: int = 4) -> dict[str, torch.Tensor]:
    """Official `control_model.*` keys -> LAControlNet state dict (exact: every key known, every shape right)."""
    control_state = {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
    with torch.device("meta"):
        control = LAControlNet(unet_config=unet_config, condition_channels=condition_channels)
    expected = {key: tuple(tensor.shape) for key, tensor in control.state_dict().items()}
    return convert_strict(control_state, control_module_map(unet_config, len(control.zero_convs)), expected,
                          what="CCSR control module")


def convert_cond_encoder(state: dict) -> dict[str, torch.Tensor]:
    """Official `cond_encoder.{encoder,quant_conv}.*` -> ConditionEncoder state dict (the VAE encoder key map;
    the checkpoint's own decoder keys complete the layout check and are dropped)."""
    encoder = {k[len(COND_ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(COND_ENCODER_PREFIX)}
    decoder = {k[len(VAE_PREFIX):]: v for k, v in state.items()
               if k.startswith((VAE_PREFIX + "decoder.", VAE_PREFIX + "post_quant_conv."))}
    converted = convert_ldm_vae({**encoder, **decoder})
    return {k: v for k, v in converted.items() if k.startswith(("encoder.", "quant_conv."))}


def build_ccsr_pipeline(checkpoint: str | Path | dict, *, trust_pickle: bool = False, unet_config: dict | None = None,
                        vae_config: dict | None = None, null_embedding: torch.Tensor | None = None):
    """A CCSRPipeline from real-world_ccsr.ckpt (a path, or its state dict already loaded).

    `unet_config` / `vae_config` override the shipped SD 2.1-base configs (small or custom models).
    The '' embedding comes from the checkpoint's text tower, or `null_embedding` (1, 77, D) when given.
    """
    from stablesr.pipelines.ccsr import CCSRPipeline

    state = checkpoint if isinstance(checkpoint, dict) else load_state_dict(checkpoint, trust_pickle=trust_pickle)
    state = {k.removeprefix("module."): v for k, v in state.get("state_dict", state).items()}
    missing = [f"{p}* ({what})" for p, what in CCSR_PARTS.items() if not any(k.startswith(p) for k in state)]
    if missing:
        raise CheckpointMismatchError(f"not a CCSR v1 checkpoint: no {', '.join(missing)}. " + CCSR_HINT)
    unet_config = unet_config or shipped_config("sd21-base", "unet")
    unet = build_unet({k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}, unet_config)
    controlnet = LAControlNet(unet_config=unet_config)
    load_strict(controlnet, convert_control_model(state, unet_config), "CCSR control module")
    vae = AutoencoderKL.from_config(vae_config or shipped_config("sd21-base", "vae"))
    load_strict(vae, convert_ldm_vae({k: v for k, v in state.items() if k.startswith(VAE_PREFIX)}), "CCSR VAE")
    cond_encoder = ConditionEncoder.from_vae(vae)  # the structure; every weight is replaced below
    load_strict(cond_encoder, convert_cond_encoder(state), "CCSR condition encoder")
    if null_embedding is None:
        text = {k[len(TEXT_PREFIX):]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
        if not text:
            raise WeightsNotFoundError("no text tower (cond_stage_model.model.*) in the checkpoint to compute the "
                                       "empty-prompt embedding; " + CCSR_HINT)
        null_embedding = build_prompt_embeddings(build_text_encoder(text)).find("")
    prompts = build_prompt_embeddings(None, null_embedding=null_embedding)
    return CCSRPipeline(unet=unet.eval().requires_grad_(False), controlnet=controlnet.eval(),
                        cond_encoder=cond_encoder.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False),
                        scheduler=make_scheduler("epsilon"), prompt_embeds=prompts)


# ------------------------------------------------------------------------------------------------ v2
V2_CONDITION_CONV = "condition_conv_in."


def _folder_class(folder: Path) -> str | None:
    config = folder / "config.json"
    return json.loads(config.read_text()).get("_class_name") if config.is_file() else None


def convert_v2_controlnet(state: dict, config: dict) -> LatentControlNet:
    """The official v2 ControlNet (diffusers keys, `condition_conv_in.*`) -> LatentControlNet, exactly."""
    if not config.get("use_vae_encode_condition"):
        raise CheckpointMismatchError("not a CCSR v2 ControlNet: its config.json lacks use_vae_encode_condition: "
                                      "true (a standard ControlNet has a hint CNN instead of a latent conv)")
    structure = {k: v for k, v in config.items() if not k.startswith("_") and k != "use_vae_encode_condition"}
    control = LatentControlNet(controlnet_config=structure)
    renamed = {("controlnet.controlnet_cond_embedding." + k[len(V2_CONDITION_CONV):]) if k.startswith(V2_CONDITION_CONV)
               else "controlnet." + k: v for k, v in state.items() if not k.startswith("controlnet_cond_embedding.")}
    load_strict(control, renamed, "CCSR v2 ControlNet")
    return control.eval()


def build_ccsr_v2_pipeline(folders: list[str | Path]):
    """A v2 CCSRPipeline from the official `controlnet/` and `vae/` folders and an SD 2.1-base diffusers folder
    (unet/, text_encoder/, tokenizer/), in any order; the v2 prompts and '' are encoded once and cached."""
    from stablesr.pipelines.ccsr import CCSRPipeline

    kinds: dict[str, Path] = {}
    for folder in map(Path, folders):
        kind = {"ControlNetModel": "controlnet", "AutoencoderKL": "vae"}.get(_folder_class(folder))
        kinds[kind or ("sd" if (folder / "unet").is_dir() else "?")] = folder
    missing = [name for name in ("controlnet", "vae", "sd") if name not in kinds]
    if missing or "?" in kinds:
        raise WeightsNotFoundError(f"CCSR v2 needs three folders: controlnet/ and vae/ (official release) and an SD "
                                   f"2.1-base diffusers folder; missing {missing}" +
                                   (f", not recognised: {kinds['?']}" if "?" in kinds else ""))
    weights = sorted(kinds["controlnet"].glob("diffusion_pytorch_model*.safetensors")) or \
        sorted(kinds["controlnet"].glob("diffusion_pytorch_model*.bin"))
    if not weights:
        raise WeightsNotFoundError(f"no diffusion_pytorch_model.safetensors (or .bin) in {kinds['controlnet']}")
    state = {k: v for path in weights for k, v in load_state_dict(path).items()}
    controlnet = convert_v2_controlnet(state, json.loads((kinds["controlnet"] / "config.json").read_text()))
    vae = AutoencoderKL.from_pretrained(kinds["vae"], local_files_only=True).eval().requires_grad_(False)
    unet, _, _, text_encoder, tokenizer = load_sd_folder(kinds["sd"])
    if text_encoder is None:
        raise WeightsNotFoundError(f"{kinds['sd']} has no text_encoder/ and tokenizer/ to encode the v2 prompts")
    texts = {"null": "", "positive": V2_PROMPT, "negative": V2_NEGATIVE_PROMPT}
    with torch.no_grad():
        embeddings = {name: encode_text(text_encoder, tokenizer, text) for name, text in texts.items()}
    return CCSRPipeline(unet=unet, controlnet=controlnet, vae=vae, scheduler=make_scheduler("epsilon"),
                        prompt_embeds=PromptEmbeddings.from_tensors(embeddings, texts))

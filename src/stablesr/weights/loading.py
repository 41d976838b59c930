"""Build a `StableSRPipeline` from official checkpoints, SD base weights, or a converted folder.

Sources a user may have (all local; nothing downloads):
- a full official StableSR Lightning checkpoint (`stablesr_000117.ckpt`, `stablesr_768v_000139.ckpt`,
  `stablesr_turbo.ckpt`): SD UNet + VAE + OpenCLIP text tower + SR module;
- the WebUI-extracted SR module (only `.spade.` / `structcond_stage_model.` keys) plus an SD base
  (a diffusers folder, or an LDM single file such as `v2-1_512-ema-pruned.safetensors`);
- the CFW checkpoint `vqgan_cfw_00011.ckpt` (VAE + fusion layers);
- a folder written by `stablesr convert` / `save_pretrained` (configs + safetensors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from stablesr.errors import CheckpointMismatchError, StableSRError, WeightsNotFoundError
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.models.sft_unet import StableSRModule
from stablesr.models.text_encoder import (
    OFFICIAL_NEGATIVE_PROMPT,
    OFFICIAL_POSITIVE_PROMPT,
    OpenCLIPTextEncoder,
    PromptEmbeddings,
    known_prompt_tokens,
)
from stablesr.weights.folders import check_model_folder
from stablesr.weights.io import load_state_dict
from stablesr.weights.keymap_unet import convert_ldm_unet, convert_sr_module
from stablesr.weights.keymap_vae import convert_cfw, convert_ldm_vae

Base = Literal["sd21-base", "sd21-768v", "sd-turbo"]
CONFIG_DIR = Path(__file__).parent / "configs"
PREDICTION_TYPES: dict[str, str] = {"sd21-base": "epsilon", "sd21-768v": "v_prediction", "sd-turbo": "epsilon"}
TEXT_PREFIX = "cond_stage_model.model."
OBTAIN_HINT = ("Get the official weights from the Hugging Face repository Iceclear/StableSR (stablesr_000117.ckpt, "
               "vqgan_cfw_00011.ckpt, ...), then run `stablesr convert stablesr_000117.ckpt vqgan_cfw_00011.ckpt "
               "-o stablesr-sd21/` and pass `--model stablesr-sd21/`.")


def guess_base(path: str | Path) -> Base:
    """The SD base an official checkpoint was trained on, from its file name (768v / turbo / 512 base)."""
    name = Path(path).name.lower()
    if "768" in name:
        return "sd21-768v"
    if "turbo" in name:
        return "sd-turbo"
    return "sd21-base"


def shipped_config(base: Base, component: Literal["unet", "vae"]) -> dict:
    path = CONFIG_DIR / base / component / "config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def make_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """The SD 2.x training schedule; `linspace` spacing reproduces StableSR's respaced timesteps."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type, clip_sample=False, timestep_spacing="linspace",
                         variance_type="fixed_small")


def classify_state(state: dict) -> set[str]:
    """Which parts a checkpoint holds: {'unet', 'sr_module', 'vae', 'cfw', 'text'}."""
    kinds = set()
    if any(k.startswith("model.diffusion_model.") and ".spade." not in k for k in state):
        kinds.add("unet")
    if any(".spade." in k or k.startswith("structcond_stage_model.") for k in state):
        kinds.add("sr_module")
    if any(k.startswith("first_stage_model.") for k in state):
        kinds.add("vae")
    if any(k.startswith("decoder.fusion_layer_") for k in state):
        kinds.add("cfw")
    if any(k.startswith(TEXT_PREFIX) for k in state):
        kinds.add("text")
    return kinds


@dataclass
class Parts:
    """State dicts gathered from the user's files, in the official (LDM) layout."""

    unet: dict = field(default_factory=dict)
    sr_module: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    cfw: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def add(self, path: str | Path, *, trust_pickle: bool = False) -> set[str]:
        state = load_state_dict(path, trust_pickle=trust_pickle)
        kinds = classify_state(state)
        if not kinds:
            raise CheckpointMismatchError(
                f"{path}: no StableSR, SD or CFW keys found (first keys: {sorted(state)[:3]}); " + OBTAIN_HINT)
        for kind in kinds:
            self.sources[kind] = str(path)
        if "unet" in kinds:
            self.unet = {
                k: v for k, v in state.items() if k.startswith("model.diffusion_model.") and ".spade." not in k
            }
        if "sr_module" in kinds:
            self.sr_module = {
                k: v for k, v in state.items() if ".spade." in k or k.startswith("structcond_stage_model.")
            }
        if "vae" in kinds:
            self.vae = {
                k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")
            }
        if "cfw" in kinds:
            self.cfw = {k: v for k, v in state.items() if not k.startswith("loss.")}
        if "text" in kinds:
            self.text = {k[len(TEXT_PREFIX):]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
        return kinds


def load_strict(module: torch.nn.Module, state: dict, what: str, *, allow_missing_prefix: str | None = None) -> None:
    """load_state_dict that names missing/unexpected keys and wrong shapes in one clear error (never a silent
    partial load)."""
    expected = module.state_dict()
    wrong = [f"{key} {tuple(value.shape)} (model: {tuple(expected[key].shape)})" for key, value in state.items()
             if key in expected and tuple(value.shape) != tuple(expected[key].shape)]
    if wrong:
        raise CheckpointMismatchError(f"{what}: {len(wrong)} tensors of the wrong shape: {', '.join(wrong[:3])}")
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (allow_missing_prefix and k.startswith(allow_missing_prefix))]
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"{what}: {len(missing)} missing keys {missing[:5]}, {len(result.unexpected_keys)} unexpected keys "
            f"{result.unexpected_keys[:5]}")


def build_unet(state: dict, unet_config: dict) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**unet_config)
    load_strict(unet, convert_ldm_unet(state, unet_config), "SD UNet")
    return unet.eval().requires_grad_(False)


def build_sr_module(state: dict, unet: UNet2DConditionModel, encoder_config: dict | None = None) -> StableSRModule:
    """The SR module sized for `unet`; `encoder_config` (TimeAwareEncoder kwargs) defaults to the official one."""
    encoder_config = dict(encoder_config or {})
    sr_module = StableSRModule.from_unet(unet, cond_channels=encoder_config.get("out_channels", 256), **encoder_config)
    converted = convert_sr_module(state, unet_config=dict(unet.config), encoder_config=encoder_config)
    load_strict(sr_module, converted, "StableSR SR module (SFT + time-aware encoder)")
    return sr_module.eval()


def build_vae(parts: Parts, vae_config: dict) -> tuple[CFWAutoencoderKL, bool]:
    """(vae, cfw_trained): the CFW weights when given, else the plain SD VAE (fusion layers unused)."""
    vae = CFWAutoencoderKL(**vae_config)
    if parts.cfw:
        load_strict(vae, convert_cfw(parts.cfw), "CFW autoencoder")
        return vae.eval(), True
    if not parts.vae:
        raise WeightsNotFoundError("no VAE weights: give a full official checkpoint, an SD base, or the CFW "
                                   "checkpoint vqgan_cfw_00011.ckpt. " + OBTAIN_HINT)
    load_strict(vae, convert_ldm_vae(parts.vae), "SD VAE", allow_missing_prefix="fusion_layer")
    return vae.eval(), False


@torch.no_grad()
def build_prompt_embeddings(text_encoder: torch.nn.Module | None, tokenizer=None, *,
                            null_embedding: torch.Tensor | None = None) -> PromptEmbeddings:
    """Cache '' and the official negative/positive prompts so inference needs no text model."""
    if null_embedding is not None:
        return PromptEmbeddings.from_tensors({"null": null_embedding}, {"null": ""})
    if text_encoder is None:
        raise WeightsNotFoundError("no text encoder weights to compute the empty-prompt embedding; give a full "
                                   "official checkpoint or an SD base (folder or single file). " + OBTAIN_HINT)
    prompts = {"null": "", "negative": OFFICIAL_NEGATIVE_PROMPT, "positive": OFFICIAL_POSITIVE_PROMPT}
    embeddings = {name: encode_text(text_encoder, tokenizer, text) for name, text in prompts.items()}
    return PromptEmbeddings.from_tensors(embeddings, prompts)


def encode_text(text_encoder, tokenizer, text: str) -> torch.Tensor:
    """(1, 77, D) embedding; without a tokenizer only the KNOWN_PROMPT_TOKENS texts can be encoded."""
    if tokenizer is None:
        tokens = known_prompt_tokens(text)
    else:
        tokens = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = text_encoder(tokens)
    return (out if torch.is_tensor(out) else out.last_hidden_state).float()


def build_text_encoder(state: dict) -> OpenCLIPTextEncoder:
    """The OpenCLIP ViT-H/14 text tower from `cond_stage_model.model.*` keys (shapes give the size)."""
    width = state["token_embedding.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    encoder = OpenCLIPTextEncoder(vocab_size=state["token_embedding.weight"].shape[0],
                                  context_length=state["positional_embedding"].shape[0], width=width, layers=layers,
                                  heads=width // 64, embed_dim=state["text_projection"].shape[1])
    load_strict(encoder, state, "OpenCLIP text encoder")
    return encoder.eval()


def load_sd_folder(folder: Path):
    """SD 2.x diffusers folder -> (unet, plain VAE state (diffusers keys), VAE config, text_encoder, tokenizer)."""
    for sub in ("unet", "vae"):
        if not (folder / sub / "config.json").is_file():
            raise WeightsNotFoundError(
                f"{folder} is not a diffusers SD folder: {folder / sub / 'config.json'} is missing")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True).eval().requires_grad_(False)
    from diffusers import AutoencoderKL

    plain_vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
    vae_config = {k: v for k, v in plain_vae.config.items() if not k.startswith("_")}
    text_encoder = tokenizer = None
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        text_encoder, tokenizer = load_transformers_text(folder)
    return unet, plain_vae.state_dict(), vae_config, text_encoder, tokenizer


def load_transformers_text(folder: Path):
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as error:
        raise StableSRError("custom prompts from a diffusers folder need `transformers`: "
                            "pip install 'stablesr[prompts]'") from error
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    return text_encoder, tokenizer


def build_pipeline(checkpoints: list[str | Path], *, base: Base | str | None = None, trust_pickle: bool = False,
                   keep_text_encoder: bool = False, text_encoder_folder: str | Path | None = None,
                   unet_config: dict | None = None, vae_config: dict | None = None,
                   encoder_config: dict | None = None):
    """Assemble a StableSRPipeline from the user's files (see the module docstring).

    `unet_config` / `vae_config` (diffusers configs) and `encoder_config` (TimeAwareEncoder kwargs)
    override the shipped SD 2.x configs, for custom or small models.
    """
    from stablesr.pipelines.stablesr import StableSRPipeline

    parts = Parts()
    base_folder = None
    for path in checkpoints:
        path = Path(path)
        if path.is_dir():
            base_folder = path
            continue
        parts.add(path, trust_pickle=trust_pickle)
    if not parts.sr_module:
        raise WeightsNotFoundError("no StableSR SR module among the inputs (need `.spade.` and "
                                   "`structcond_stage_model.` keys). " + OBTAIN_HINT)
    if base is None or base not in PREDICTION_TYPES:
        base_name = guess_base(parts.sources["sr_module"])
    else:
        base_name = base
    text_encoder = tokenizer = None
    if base_folder is not None:
        unet, vae_state, folder_vae_config, text_encoder, tokenizer = load_sd_folder(base_folder)
        vae_config = vae_config or folder_vae_config
    elif parts.unet:
        unet, vae_state = build_unet(parts.unet, unet_config or shipped_config(base_name, "unet")), None
    else:
        raise WeightsNotFoundError(f"no SD UNet: give the full official checkpoint or an SD base ({base_name}) as a "
                                   "diffusers folder or a single file. " + OBTAIN_HINT)
    sr_module = build_sr_module(parts.sr_module, unet, encoder_config)
    vae_config = vae_config or shipped_config(base_name, "vae")
    if vae_state is not None and not parts.cfw:
        vae = CFWAutoencoderKL(**vae_config)
        load_strict(vae, vae_state, "SD VAE", allow_missing_prefix="fusion_layer")
        vae, cfw_trained = vae.eval(), False
    else:
        vae, cfw_trained = build_vae(parts, vae_config)
    if text_encoder is None and parts.text:
        text_encoder = build_text_encoder(parts.text)
    if text_encoder_folder is not None:
        text_encoder, tokenizer = load_transformers_text(Path(text_encoder_folder))
    prompt_embeds = build_prompt_embeddings(text_encoder, tokenizer)
    keep = keep_text_encoder and tokenizer is not None
    return StableSRPipeline(unet=unet, sr_module=sr_module, vae=vae.requires_grad_(False),
                            scheduler=make_scheduler(PREDICTION_TYPES[base_name]), prompt_embeds=prompt_embeds,
                            text_encoder=text_encoder if keep else None, tokenizer=tokenizer if keep else None,
                            cfw_trained=cfw_trained)


def load_pipeline(model: str | Path, *, torch_dtype: torch.dtype = torch.float32, resident: bool = True):
    """A converted folder or a bundled model's name -> StableSRPipeline (offline); clear error when absent.
    `resident=False`: the memory-mapped weights are left out of memory until used (see `SRPipeline.from_pretrained`)."""
    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.weights.bundled import resolve_model

    folder = resolve_model(model)
    if not (folder / "model_index.json").is_file():
        raise WeightsNotFoundError(f"model folder {folder} not found (no model_index.json there). " + OBTAIN_HINT)
    check_model_folder(folder)
    return StableSRPipeline.from_pretrained(folder, dtype=torch_dtype, local_files_only=True, resident=resident)


PAGE_BYTES = 4096


@torch.no_grad()
def make_resident(components) -> None:
    """Read one value per memory page of every CPU weight, so that weights loaded lazily (safetensors files
    are memory-mapped: a page is only read, and only counted in the process's memory, when first used)
    are in memory now. The memory budget (`--max-memory`) subtracts what the process holds when it plans
    the VAE tiles, before the first step; without this the UNet's weights were not counted then (measured:
    2.1 GB resident of 5.7 GB, and a 1024 -> 4096 run with full-size weights peaked at 9.9 GB under an
    8 GB budget). They would be read by the first step anyway."""
    for component in components:
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            if tensor.device.type == "cpu" and tensor.numel() and tensor.is_contiguous():
                stride = max(1, PAGE_BYTES // tensor.element_size())
                tensor.detach().reshape(-1)[::stride].float().sum()

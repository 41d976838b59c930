"""Official StableSR checkpoint layout -> our UNet-side modules (https://github.com/IceClear/StableSR).

The official checkpoints (`stablesr_000117.ckpt`, `..._768v_000139.ckpt`, `stablesr_turbo.ckpt`)
store an LDM/OpenAI-style SD 2.x UNet under `model.diffusion_model.*` with one `.spade.` module
per resnet, and the time-aware encoder under `structcond_stage_model.*`. The WebUI-extracted SR
module holds only the `.spade.` and `structcond_stage_model.` keys, with the same names.

    model.diffusion_model.* (no .spade.)   -> diffusers UNet2DConditionModel   (convert_ldm_unet)
    model.diffusion_model.*.spade.*        -> StableSRModule.sft_layers.{i}     (convert_sr_module)
    structcond_stage_model.*               -> StableSRModule.encoder            (convert_sr_module)

Every map is a literal table of module paths built from the config; a key is renamed by its
longest mapped module prefix. Conversions are strict: the renamed keys are compared with a model
built on the meta device, and any missing, unexpected or mis-shaped key raises
CheckpointMismatchError.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from stablesr.errors import CheckpointMismatchError
from stablesr.models.sft_unet import StableSRModule
from stablesr.models.time_aware_encoder import SelfAttention2d

UNET_PREFIX = "model.diffusion_model."
ENCODER_PREFIX = "structcond_stage_model."
SFT_MARKER = ".spade."
DEFAULT_UNET_CONFIG = Path(__file__).parent / "configs" / "sd21-base" / "unet" / "config.json"
# structcond_stage_config.params of the official 512 and 768v yamls (reference/stablesr-official.md, section 2)
OFFICIAL_ENCODER_PARAMS = {
    "in_channels": 4,
    "model_channels": 256,
    "out_channels": 256,
    "num_res_blocks": 2,
    "attention_resolutions": [4, 2, 1],
    "channel_mult": [1, 1, 2, 2],
    "num_heads": 4,
    "num_head_channels": -1,
}

# LDM ResBlock sub-module -> diffusers ResnetBlock2D sub-module (same maths, see ecosystem.md 2.4)
RESNET_LAYERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
# official SPADE sub-module -> SFTLayer sub-module
SFT_LAYERS = {
    "param_free_norm": "norm",
    "mlp_shared.0": "cond_conv",
    "mlp_gamma": "to_gamma",
    "mlp_beta": "to_beta",
}
# legacy AttentionBlock sub-module -> SelfAttention2d; "to_qkv" is split into to_q/k/v afterwards
ATTENTION_LAYERS = {"norm": "norm", "qkv": "to_qkv", "proj_out": "to_out"}
# An SD 2.x SpatialTransformer keeps its inner names (norm, proj_in, transformer_blocks.N.attn1.to_q,
# ..., ff.net.0.proj, ff.net.2, norm1..3, proj_out) in diffusers' Transformer2DModel, so only its
# block prefix is renamed.


# ---------------------------------------------------------------------------------------- configs
def unet_config_from_ldm(params: dict, *, upcast_attention: bool = False) -> dict:
    """Official `unet_config.params` (LDM vocabulary) -> diffusers UNet2DConditionModel config.

    Example: SD 2.1 (model_channels 320, channel_mult [1,2,4,4], num_head_channels 64,
    context_dim 1024) -> block_out_channels [320,640,1280,1280], attention_head_dim [5,10,20,20]
    (diffusers' attention_head_dim holds the number of heads).
    """
    if not params.get("use_spatial_transformer", False) or params.get("num_classes") is not None:
        raise ValueError("only text-conditioned SD UNets (use_spatial_transformer, no num_classes) are supported")
    channels = [params["model_channels"] * mult for mult in params["channel_mult"]]
    has_attention = [2**level in params["attention_resolutions"] for level in range(len(channels))]
    head_channels = params.get("num_head_channels", -1)
    heads = [params["num_heads"] if head_channels == -1 else c // head_channels for c in channels]
    return {
        "sample_size": params["image_size"],
        "in_channels": params["in_channels"],
        "out_channels": params["out_channels"],
        "block_out_channels": channels,
        "layers_per_block": params["num_res_blocks"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        "attention_head_dim": heads,
        "cross_attention_dim": params["context_dim"],
        "transformer_layers_per_block": params.get("transformer_depth", 1),
        "use_linear_projection": params.get("use_linear_in_transformer", False),
        "upcast_attention": upcast_attention,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    }


def encoder_config_from_ldm(params: dict) -> dict:
    """Official `structcond_stage_config.params` -> TimeAwareEncoder keyword arguments."""
    if params.get("use_scale_shift_norm") or params.get("resblock_updown") or params.get("use_new_attention_order"):
        raise ValueError("scale-shift norm, resblock up/down and the new attention order are not used by StableSR")
    return {
        "in_channels": params["in_channels"],
        "model_channels": params["model_channels"],
        "out_channels": params["out_channels"],
        "num_res_blocks": params["num_res_blocks"],
        "channel_mult": list(params["channel_mult"]),
        "attention_resolutions": list(params["attention_resolutions"]),
        "num_heads": params.get("num_heads", 1),
        "num_head_channels": params.get("num_head_channels", -1),
    }


def load_default_unet_config() -> dict:
    """The shipped SD 2.1-base UNet config (the architecture of all official StableSR models)."""
    return json.loads(DEFAULT_UNET_CONFIG.read_text())


# ------------------------------------------------------------------------------------ module maps
def _add_block(module_map: dict, source: str, target: str, layers: dict[str, str]) -> None:
    for source_layer, target_layer in layers.items():
        module_map[f"{source}.{source_layer}"] = f"{target}.{target_layer}"


def _unet_levels(unet_config: dict) -> tuple[int, int, list[bool], list[bool]]:
    levels = len(unet_config["block_out_channels"])
    down_attention = [kind.startswith("CrossAttn") for kind in unet_config["down_block_types"]]
    up_attention = [kind.startswith("CrossAttn") for kind in unet_config["up_block_types"]]
    return levels, unet_config["layers_per_block"], down_attention, up_attention


def ldm_unet_resnet_paths(unet_config: dict) -> list[tuple[str, str]]:
    """(official ResBlock path, diffusers resnet path) in `resnets_in_order` order.

    SD 2.x: input_blocks.{1,2,4,5,7,8,10,11}.0, middle_block.{0,2}, output_blocks.{0..11}.0.
    """
    levels, layers, _, _ = _unet_levels(unet_config)
    stride = layers + 1  # official blocks per level: the resnets plus one down/upsampler slot
    paths = [
        (f"input_blocks.{1 + level * stride + layer}.0", f"down_blocks.{level}.resnets.{layer}")
        for level in range(levels)
        for layer in range(layers)
    ]
    paths += [("middle_block.0", "mid_block.resnets.0"), ("middle_block.2", "mid_block.resnets.1")]
    paths += [
        (f"output_blocks.{level * stride + layer}.0", f"up_blocks.{level}.resnets.{layer}")
        for level in range(levels)
        for layer in range(layers + 1)
    ]
    return paths


def unet_module_map(unet_config: dict) -> dict[str, str]:
    """Official UNet module path (no prefix) -> diffusers UNet2DConditionModel module path."""
    levels, layers, down_attention, up_attention = _unet_levels(unet_config)
    module_map = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "middle_block.1": "mid_block.attentions.0",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    for source, target in ldm_unet_resnet_paths(unet_config):
        _add_block(module_map, source, target, RESNET_LAYERS)
    stride = layers + 1  # official blocks per level: the resnets plus one down/upsampler slot
    for level in range(levels):
        for layer in range(layers):
            if down_attention[level]:
                source = f"input_blocks.{1 + level * stride + layer}.1"
                module_map[source] = f"down_blocks.{level}.attentions.{layer}"
        for layer in range(layers + 1):
            if up_attention[level]:
                module_map[f"output_blocks.{level * stride + layer}.1"] = f"up_blocks.{level}.attentions.{layer}"
        if level < levels - 1:
            downsampler = f"input_blocks.{(level + 1) * stride}.0.op"
            upsampler = f"output_blocks.{level * stride + layers}.{2 if up_attention[level] else 1}.conv"
            module_map[downsampler] = f"down_blocks.{level}.downsamplers.0.conv"
            module_map[upsampler] = f"up_blocks.{level}.upsamplers.0.conv"
    return module_map


def encoder_module_map(encoder_config: dict) -> dict[str, str]:
    """Official EncoderUNetModelWT module path (no prefix) -> TimeAwareEncoder module path."""
    levels, layers = len(encoder_config["channel_mult"]), encoder_config["num_res_blocks"]
    module_map = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
    }
    block = 1
    for level in range(levels):
        for layer in range(layers):
            _add_block(module_map, f"input_blocks.{block}.0", f"down_resnets.{level}.{layer}", RESNET_LAYERS)
            if 2**level in encoder_config["attention_resolutions"]:
                _add_block(module_map, f"input_blocks.{block}.1", f"down_attentions.{level}.{layer}", ATTENTION_LAYERS)
            block += 1
        if level < levels - 1:
            module_map[f"input_blocks.{block}.0.op"] = f"downsamplers.{level}"
            block += 1
    _add_block(module_map, "middle_block.0", "mid_resnets.0", RESNET_LAYERS)
    _add_block(module_map, "middle_block.1", "mid_attention", ATTENTION_LAYERS)
    _add_block(module_map, "middle_block.2", "mid_resnets.1", RESNET_LAYERS)
    for level in range(levels):
        _add_block(module_map, f"fea_tran.{level}", f"feature_heads.{level}", RESNET_LAYERS)
    return module_map


def sr_module_map(unet_config: dict, encoder_config: dict) -> dict[str, str]:
    """Full official key prefix (.spade. modules and encoder) -> StableSRModule module path."""
    module_map = {}
    for index, (source, _) in enumerate(ldm_unet_resnet_paths(unet_config)):
        _add_block(module_map, f"{UNET_PREFIX}{source}.spade", f"sft_layers.{index}", SFT_LAYERS)
    for source, target in encoder_module_map(encoder_config).items():
        module_map[ENCODER_PREFIX + source] = f"encoder.{target}"
    return module_map


# --------------------------------------------------------------------------------- renaming, checks
def rename_key(key: str, module_map: dict[str, str]) -> str | None:
    """Rename `key` by its longest module-path prefix in `module_map`; None when no prefix matches.

    Example: with {"input_blocks.1.0.in_layers.0": "down_blocks.0.resnets.0.norm1"},
    "input_blocks.1.0.in_layers.0.weight" -> "down_blocks.0.resnets.0.norm1.weight".
    """
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        target = module_map.get(".".join(parts[:cut]))
        if target is not None:
            return ".".join([target, *parts[cut:]])
    return None


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"{shown}{more}"


def convert_strict(
    state: dict, module_map: dict[str, str], expected_shapes: dict[str, tuple], *, what: str
) -> dict[str, torch.Tensor]:
    """Rename every key of `state` and check the result against `expected_shapes` exactly.

    Raises CheckpointMismatchError naming the official keys that are unexpected, missing or of
    the wrong shape (the first few, and how many).
    """
    inverse_map = {target: source for source, target in module_map.items()}
    renamed, source_of, unexpected = {}, {}, []
    for key, tensor in state.items():
        target = rename_key(key, module_map)
        if target is None or target not in expected_shapes:
            unexpected.append(key)
        else:
            renamed[target], source_of[target] = tensor, key
    missing = [rename_key(key, inverse_map) or key for key in expected_shapes if key not in renamed]
    mismatched = [
        f"{source_of[key]} {tuple(tensor.shape)} != {tuple(expected_shapes[key])}"
        for key, tensor in renamed.items()
        if tuple(tensor.shape) != tuple(expected_shapes[key])
    ]
    problems = [
        f"{len(items)} {kind} key(s): {_describe(items)}"
        for kind, items in (("unexpected", unexpected), ("missing", missing), ("mis-shaped", mismatched))
        if items
    ]
    if problems:
        raise CheckpointMismatchError(f"checkpoint does not match the {what}: " + "; ".join(problems))
    return renamed


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


# ------------------------------------------------------------------------------------- the UNet
def convert_ldm_unet(state: dict, unet_config: dict) -> dict[str, torch.Tensor]:
    """Official `model.diffusion_model.*` keys (the SD UNet; `.spade.` keys excluded) -> diffusers
    UNet2DConditionModel state dict for `unet_config`. Other prefixes in `state` are ignored."""
    unet_state = {
        key: tensor for key, tensor in state.items() if key.startswith(UNET_PREFIX) and SFT_MARKER not in key
    }
    with torch.device("meta"):
        expected = _meta_shapes(UNet2DConditionModel.from_config(unet_config))
    module_map = {UNET_PREFIX + source: target for source, target in unet_module_map(unet_config).items()}
    return convert_strict(unet_state, module_map, expected, what="diffusers UNet")


# -------------------------------------------------------------------------------- the SR module
def convert_sr_module(
    state: dict, *, unet_config: dict | None = None, encoder_config: dict | None = None
) -> dict[str, torch.Tensor]:
    """Official `.spade.` keys + `structcond_stage_model.*` -> StableSRModule state dict.

    Accepts the full Lightning `state_dict` (other prefixes such as first_stage_model.,
    cond_stage_model. and the schedule buffers are ignored) or the WebUI-extracted SR module
    (only the spade/structcond keys, same names). `unet_config` (diffusers, default: the shipped
    SD 2.1 config) fixes the SFT layers; `encoder_config` (TimeAwareEncoder kwargs, updating the
    official encoder config) fixes the encoder.
    """
    unet_config = load_default_unet_config() if unet_config is None else unet_config
    encoder_config = {**encoder_config_from_ldm(OFFICIAL_ENCODER_PARAMS), **(encoder_config or {})}
    sr_state = {
        key: tensor
        for key, tensor in state.items()
        if key.startswith(ENCODER_PREFIX) or (key.startswith(UNET_PREFIX) and SFT_MARKER in key)
    }
    with torch.device("meta"):
        module = _sr_module_for(unet_config, encoder_config)
    heads_of = {name: sub.num_heads for name, sub in module.named_modules() if isinstance(sub, SelfAttention2d)}
    expected = _fuse_attention_shapes(_meta_shapes(module), heads_of)
    renamed = convert_strict(sr_state, sr_module_map(unet_config, encoder_config), expected, what="StableSR module")
    return _split_attention(renamed, heads_of)


def _sr_module_for(unet_config: dict, encoder_config: dict) -> StableSRModule:
    """The StableSRModule matching a UNet config (one SFT layer per resnet, in order)."""
    unet = UNet2DConditionModel.from_config(unet_config)
    return StableSRModule.from_unet(unet, cond_channels=encoder_config["out_channels"], **encoder_config)


def _fuse_attention_shapes(shapes: dict[str, tuple], heads_of: dict[str, int]) -> dict[str, tuple]:
    """Expected shapes in the official attention layout: fused qkv (3C, C, 1), proj_out (C, C, 1)."""
    fused = {}
    for key, shape in shapes.items():
        module, _, param = key.rpartition(".")
        parent, _, layer = module.rpartition(".")
        if parent not in heads_of or layer not in ("to_q", "to_k", "to_v", "to_out"):
            fused[key] = shape
        elif layer == "to_q":
            rows = 3 * shape[0]
            fused[f"{parent}.to_qkv.{param}"] = (rows, shape[1], 1) if param == "weight" else (rows,)
        elif layer == "to_out":
            fused[key] = (*shape, 1) if param == "weight" else shape
    return fused


def _split_attention(state: dict[str, torch.Tensor], heads_of: dict[str, int]) -> dict[str, torch.Tensor]:
    """Legacy QKV layout -> separate q, k, v projections; Conv1d kernels -> Linear weights.

    The official qkv output channels are ordered (head, [q|k|v], head_channel): reshape to
    (heads, 3, ch, ...) and take [:, 0], [:, 1], [:, 2], each back to (heads * ch, ...).
    """
    converted = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        parent, _, layer = module.rpartition(".")
        if parent in heads_of and layer == "to_qkv":
            heads = heads_of[parent]
            # weight (3C, C, 1) -> (heads, 3, ch, C, 1); bias (3C,) -> (heads, 3, ch)
            per_head = tensor.reshape(heads, 3, tensor.shape[0] // (3 * heads), *tensor.shape[1:])
            target_shape = (-1, tensor.shape[1]) if param == "weight" else (-1,)  # -> (C, C) or (C,)
            for part, name in enumerate(("to_q", "to_k", "to_v")):
                converted[f"{parent}.{name}.{param}"] = per_head[:, part].reshape(target_shape).contiguous()
        elif parent in heads_of and layer == "to_out" and param == "weight":
            converted[key] = tensor.squeeze(-1)
        else:
            converted[key] = tensor
    return converted

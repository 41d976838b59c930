"""Key maps from the official LDM AutoencoderKL / StableSR CFW checkpoints to diffusers names.

StableSR (https://arxiv.org/abs/2305.07015) ships `vqgan_cfw_00011.ckpt` in the LDM `AutoencoderKLResi`
layout; the SD VAE inside `stablesr_*.ckpt` uses the LDM `first_stage_model.*` layout. Both map onto
`diffusers.AutoencoderKL` / `stablesr.models.cfw_autoencoder.CFWAutoencoderKL` here, strictly: a key
that is unknown, missing or has the wrong shape raises CheckpointMismatchError naming it.

LDM name                                   diffusers name
--------                                   --------------
encoder.down.{i}.block.{j}.nin_shortcut    encoder.down_blocks.{i}.resnets.{j}.conv_shortcut
encoder.down.{i}.downsample.conv           encoder.down_blocks.{i}.downsamplers.0.conv
decoder.up.{i}.block.{j}                   decoder.up_blocks.{n-1-i}.resnets.{j}   (order reversed)
decoder.up.{i}.upsample.conv               decoder.up_blocks.{n-1-i}.upsamplers.0.conv
*.mid.block_{1,2}                          *.mid_block.resnets.{0,1}
*.mid.attn_1.{norm,q,k,v,proj_out}         *.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
*.norm_out                                 *.conv_norm_out
decoder.fusion_layer_{k}.encode_enc_1      fusion_layer_{k}.in_block   (conv_out -> conv_shortcut)
decoder.fusion_layer_{k}.encode_enc_2.{b}  fusion_layer_{k}.rrdb_blocks.{b}
decoder.fusion_layer_{k}.encode_enc_3      fusion_layer_{k}.out_block
"""

from __future__ import annotations

import re

import torch
from torch import nn

from stablesr.errors import CheckpointMismatchError

LDM_PREFIX = "first_stage_model."
VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
CFW_IGNORED_ROOTS = ("loss.",)
ATTENTION_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
FUSION_RESBLOCK_NAMES = {
    "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_out": "conv_shortcut",
}


# --------------------------------------------------------------------------------------------- public
def convert_ldm_vae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM AutoencoderKL state dict (optionally under 'first_stage_model.') -> diffusers AutoencoderKL keys.

    Keys outside encoder./decoder./quant_conv./post_quant_conv. are ignored (the rest of a full LDM
    checkpoint); inside them every key must be known and every expected key present.
    """
    vae_state = _strip_vae_state(state)
    _check_ldm_vae_complete(vae_state)
    num_levels = _count_indices(vae_state, r"encoder\.down\.(\d+)\.")
    return {_rename_vae_key(k, num_levels): _reshape_attention(k, v) for k, v in vae_state.items()}


def convert_cfw(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official `AutoencoderKLResi` state dict (vqgan_cfw_00011 layout) -> CFWAutoencoderKL keys.

    `loss.*` keys are ignored; any other key must be a VAE key or a `decoder.fusion_layer_{1,2}.*` key.
    """
    unknown = sorted(k for k in state if not k.startswith(VAE_ROOTS + CFW_IGNORED_ROOTS))
    if unknown:
        raise CheckpointMismatchError(f"unexpected keys in CFW checkpoint: {unknown[:8]} ({len(unknown)})")
    fusion = {k: v for k, v in state.items() if k.startswith("decoder.fusion_layer_")}
    vae = {k: v for k, v in state.items() if k.startswith(VAE_ROOTS) and k not in fusion}
    _check_fusion_complete(fusion)
    converted = convert_ldm_vae(vae)
    converted.update({_rename_fusion_key(k): v for k, v in fusion.items()})
    return converted


def vae_config_from_ldm(ddconfig: dict, *, embed_dim: int, scaling_factor: float = 0.18215) -> dict:
    """Official `ddconfig` (ch, ch_mult, num_res_blocks, ...) -> diffusers AutoencoderKL config dict."""
    if ddconfig.get("attn_resolutions") or not ddconfig.get("double_z", True) or embed_dim != ddconfig["z_channels"]:
        raise CheckpointMismatchError(
            "only the SD VAE family is supported: attn_resolutions [], double_z true, embed_dim == z_channels"
        )
    num_levels = len(ddconfig["ch_mult"])
    return {
        "in_channels": ddconfig["in_channels"],
        "out_channels": ddconfig["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * num_levels,
        "up_block_types": ["UpDecoderBlock2D"] * num_levels,
        "block_out_channels": [ddconfig["ch"] * mult for mult in ddconfig["ch_mult"]],
        "layers_per_block": ddconfig["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": embed_dim,
        "norm_num_groups": 32,
        "sample_size": ddconfig["resolution"],
        "scaling_factor": scaling_factor,
    }


def check_state_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointMismatchError unless `state` has exactly the keys and shapes of `expected`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(
            f"state dict does not match the model: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)}), wrong shape {mis_shaped[:8]} ({len(mis_shaped)})"
        )


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Check keys and shapes (CheckpointMismatchError), then copy `state` into `model`."""
    check_state_keys(state, model.state_dict())
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------- renaming
def _rename_vae_key(key: str, num_levels: int) -> str:
    """One LDM VAE key -> its diffusers name (the key set was checked before)."""
    root, rest = key.split(".", 1)
    if root in ("quant_conv", "post_quant_conv"):
        return key
    rest = re.sub(r"^norm_out\.", "conv_norm_out.", rest)
    rest = re.sub(r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.", rest)
    rest = re.sub(r"^mid\.attn_1\.(\w+)\.", lambda m: f"mid_block.attentions.0.{ATTENTION_NAMES[m[1]]}.", rest)
    rest = re.sub(r"^down\.(\d+)\.block\.", r"down_blocks.\1.resnets.", rest)
    rest = re.sub(r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.", rest)
    rest = re.sub(r"^up\.(\d+)\.block\.", lambda m: f"up_blocks.{num_levels - 1 - int(m[1])}.resnets.", rest)
    rest = re.sub(r"^up\.(\d+)\.upsample\.", lambda m: f"up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.", rest)
    rest = re.sub(r"(resnets\.\d+\.)(\w+)\.", lambda m: m[1] + RESNET_NAMES[m[2]] + ".", rest)
    return f"{root}.{rest}"


def _reshape_attention(key: str, value: torch.Tensor) -> torch.Tensor:
    """LDM mid attention q/k/v/proj_out are 1x1 convs (C, C, 1, 1); diffusers uses Linear (C, C)."""
    if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", key):
        if value.ndim != 4 or value.shape[2:] != (1, 1):
            raise CheckpointMismatchError(f"{key}: expected a 1x1 conv weight, got shape {tuple(value.shape)}")
        return value[:, :, 0, 0]  # (C, C, 1, 1) -> (C, C)
    return value


def _rename_fusion_key(key: str) -> str:
    """decoder.fusion_layer_{k}.encode_enc_{1,2,3}.* -> fusion_layer_{k}.{in_block,rrdb_blocks,out_block}.*"""
    match = re.fullmatch(r"decoder\.(fusion_layer_[12])\.encode_enc_(\d)\.(.+)", key)
    layer, part, rest = match[1], match[2], match[3]
    if part == "2":
        return f"{layer}.rrdb_blocks.{rest}"
    module, tail = rest.split(".", 1)
    block = "in_block" if part == "1" else "out_block"
    return f"{layer}.{block}.{FUSION_RESBLOCK_NAMES[module]}.{tail}"


# --------------------------------------------------------------------------------------------- checks
def _strip_vae_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a 'first_stage_model.' prefix and every key outside the VAE roots."""
    if any(k.startswith(LDM_PREFIX) for k in state):
        state = {k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
    return {k: v for k, v in state.items() if k.startswith(VAE_ROOTS)}


def _count_indices(state: dict, pattern: str) -> int:
    """1 + the largest integer captured by `pattern` in any key (0 when none matches)."""
    found = [int(m[1]) for k in state if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def _check_ldm_vae_complete(state: dict[str, torch.Tensor]) -> None:
    """Compare the key set with the one the inferred (levels, res blocks) structure must have."""
    num_levels = _count_indices(state, r"encoder\.down\.(\d+)\.")
    num_res_blocks = _count_indices(state, r"encoder\.down\.0\.block\.(\d+)\.")
    expected = set(_expected_ldm_vae_keys(state, num_levels, num_res_blocks))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected or num_levels == 0:
        raise CheckpointMismatchError(
            f"VAE checkpoint keys do not match the LDM AutoencoderKL layout: "
            f"missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})"
        )


def _expected_ldm_vae_keys(state: dict, num_levels: int, num_res_blocks: int) -> list[str]:
    """Every parameter key of an LDM AutoencoderKL with this many levels and res blocks."""
    blocks = [f"encoder.down.{i}.block.{j}" for i in range(num_levels) for j in range(num_res_blocks)]
    blocks += [f"decoder.up.{i}.block.{j}" for i in range(num_levels) for j in range(num_res_blocks + 1)]
    blocks += [f"{side}.mid.block_{j}" for side in ("encoder", "decoder") for j in (1, 2)]
    modules = [f"{b}.{name}" for b in blocks for name in ("norm1", "conv1", "norm2", "conv2")]
    modules += [f"{b}.nin_shortcut" for b in blocks if _changes_channels(state, b)]
    modules += [f"encoder.down.{i}.downsample.conv" for i in range(num_levels - 1)]
    modules += [f"decoder.up.{i}.upsample.conv" for i in range(1, num_levels)]
    modules += [f"{side}.mid.attn_1.{name}" for side in ("encoder", "decoder") for name in ATTENTION_NAMES]
    modules += [f"{side}.{name}" for side in ("encoder", "decoder") for name in ("conv_in", "norm_out", "conv_out")]
    modules += ["quant_conv", "post_quant_conv"]
    return [f"{m}.{p}" for m in modules for p in ("weight", "bias")]


def _changes_channels(state: dict[str, torch.Tensor], block: str) -> bool:
    """A ResNet block has a 1x1 shortcut exactly when its conv1 changes the channel count."""
    weight = state.get(f"{block}.conv1.weight")
    return weight is not None and weight.shape[0] != weight.shape[1]


def _check_fusion_complete(fusion: dict[str, torch.Tensor]) -> None:
    """Both fusion layers must hold exactly the Fuse_sft_block_RRDB parameter set."""
    num_blocks = _count_indices(fusion, r"decoder\.fusion_layer_[12]\.encode_enc_2\.(\d+)\.")
    expected = set()
    for layer in ("decoder.fusion_layer_1", "decoder.fusion_layer_2"):
        modules = [f"{layer}.encode_enc_1.{n}" for n in FUSION_RESBLOCK_NAMES]
        modules += [f"{layer}.encode_enc_3.{n}" for n in ("norm1", "conv1", "norm2", "conv2")]
        modules += [
            f"{layer}.encode_enc_2.{b}.rdb{r}.conv{c}"
            for b in range(num_blocks) for r in (1, 2, 3) for c in range(1, 6)
        ]
        expected |= {f"{m}.{p}" for m in modules for p in ("weight", "bias")}
    missing, unexpected = sorted(expected - set(fusion)), sorted(set(fusion) - expected)
    if missing or unexpected or num_blocks == 0:
        raise CheckpointMismatchError(
            f"CFW fusion keys do not match the official layout: "
            f"missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})"
        )

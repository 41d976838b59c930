"""Official key maps: full-size bijection, strictness, legacy attention split, blind-spot tensors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import UNet2DConditionModel

from conftest import require_parity_file
from stablesr.errors import CheckpointMismatchError
from stablesr.models.sft_unet import StableSRModule
from stablesr.models.time_aware_encoder import SelfAttention2d
from stablesr.weights.keymap_unet import (
    ENCODER_PREFIX,
    UNET_PREFIX,
    convert_ldm_unet,
    convert_sr_module,
    encoder_config_from_ldm,
    load_default_unet_config,
    unet_config_from_ldm,
)

# unet_config.params of the official v2-finetune_text_T_512.yaml (reference/stablesr-official.md, section 3)
SD21_LDM_PARAMS = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 1024,
    "legacy": False,
    "semb_channels": 256,
}
ARCHITECTURE_KEYS = [
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
    "up_block_types", "attention_head_dim", "cross_attention_dim", "use_linear_projection",
    "transformer_layers_per_block", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift",
]  # fmt: skip


@pytest.fixture(scope="module")
def full_official_shapes() -> dict[str, list[int]]:
    return json.loads(require_parity_file("official_full_keys.json").read_text())["stablesr"]


@pytest.fixture(scope="module")
def tiny_configs(tiny_config) -> tuple[dict, dict]:
    return unet_config_from_ldm(tiny_config["unet_config.params"]), encoder_config_from_ldm(
        tiny_config["structcond_stage_config.params"]
    )


def _meta_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


# ------------------------------------------------------------------------------------ configs
def test_sd21_ldm_params_give_the_shipped_config():
    converted, shipped = unet_config_from_ldm(SD21_LDM_PARAMS), load_default_unet_config()
    assert {k: converted[k] for k in ARCHITECTURE_KEYS} == {k: shipped[k] for k in ARCHITECTURE_KEYS}
    assert converted["attention_head_dim"] == [5, 10, 20, 20]


@pytest.mark.parametrize("name", ["sd21-base", "sd21-768v", "sd-turbo"])
def test_shipped_configs_build_the_sd21_unet(name):
    from stablesr.weights.keymap_unet import DEFAULT_UNET_CONFIG

    config = json.loads((DEFAULT_UNET_CONFIG.parents[2] / name / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    assert sum(p.numel() for p in unet.parameters()) == 918_930_884 - 53_020_160  # official UNet minus SPADE
    assert config["upcast_attention"] == (name == "sd21-768v")
    assert config["sample_size"] == (96 if name == "sd21-768v" else 64)


# ------------------------------------------------------------------------- full-size bijection
def test_full_size_official_keys_map_one_to_one(full_official_shapes):
    state = _meta_state(full_official_shapes)
    unet_keys = [k for k in state if k.startswith(UNET_PREFIX) and ".spade." not in k]
    attention_qkv = [k for k in state if k.startswith(ENCODER_PREFIX) and ".qkv." in k]
    unet_state = convert_ldm_unet(state, load_default_unet_config())
    sr_state = convert_sr_module(state)  # default configs = the official 512 model
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_default_unet_config())
        sr_module = StableSRModule.from_unet(unet)
    # strict conversion already checked names and shapes; here: counts leave no room for overlaps
    assert set(unet_state) == set(unet.state_dict()) and len(unet_keys) == len(unet_state)
    assert set(sr_state) == set(sr_module.state_dict())
    assert len(state) - len(unet_keys) + 2 * len(attention_qkv) == len(sr_state)  # one qkv -> q, k, v
    assert sum(t.numel() for t in sr_state.values()) == 105_514_240
    assert sum(t.numel() for k, t in sr_state.items() if k.startswith("encoder.")) == 52_494_080
    assert sum(t.numel() for t in unet_state.values()) == 918_930_884 - 53_020_160


def test_other_lightning_keys_are_ignored(stablesr_tiny_state, tiny_config, tiny_configs):
    unet_config, encoder_config = tiny_configs
    other_keys = tiny_config["lightning_state_dict_keys_not_in_stablesr_tiny (shape)"]
    extras = {key: torch.zeros(shape) for key, shape in other_keys.items()}
    extras["cond_stage_model.model.positional_embedding"] = torch.zeros(77, 64)
    full = {**stablesr_tiny_state, **extras}
    assert convert_ldm_unet(full, unet_config).keys() == convert_ldm_unet(stablesr_tiny_state, unet_config).keys()
    webui = {k: v for k, v in stablesr_tiny_state.items() if ".spade." in k or k.startswith(ENCODER_PREFIX)}
    from_full = convert_sr_module(full, unet_config=unet_config, encoder_config=encoder_config)
    from_webui = convert_sr_module(webui, unet_config=unet_config, encoder_config=encoder_config)
    assert from_full.keys() == from_webui.keys()
    assert all(torch.equal(from_full[k], from_webui[k]) for k in from_full)


# ------------------------------------------------------------------------------------ strictness
SPADE_KEY = UNET_PREFIX + "output_blocks.4.0.spade.mlp_gamma.weight"
ENCODER_KEY = ENCODER_PREFIX + "fea_tran.2.skip_connection.weight"
UNET_KEY = UNET_PREFIX + "output_blocks.5.2.conv.weight"


@pytest.mark.parametrize("key", [UNET_KEY, SPADE_KEY, ENCODER_KEY])
@pytest.mark.parametrize("fault", ["missing", "extra", "shape"])
def test_faults_raise_checkpoint_mismatch_naming_the_key(stablesr_tiny_state, tiny_configs, key, fault):
    unet_config, encoder_config = tiny_configs
    state = dict(stablesr_tiny_state)
    if fault == "missing":
        del state[key]
    elif fault == "extra":
        key = key.replace(".weight", ".extra_weight")
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    convert = (
        (lambda s: convert_ldm_unet(s, unet_config))
        if key.startswith(UNET_PREFIX) and ".spade." not in key
        else (lambda s: convert_sr_module(s, unet_config=unet_config, encoder_config=encoder_config))
    )
    with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
        convert(state)


def test_error_lists_the_first_keys_and_the_count(stablesr_tiny_state, tiny_configs):
    state = {k: v for k, v in stablesr_tiny_state.items() if "output_blocks" not in k}
    with pytest.raises(CheckpointMismatchError, match=r"missing key\(s\): .*\(\d+ in all\)") as error:
        convert_ldm_unet(state, tiny_configs[0])
    assert str(error.value).count(UNET_PREFIX) == 5


def test_wrong_encoder_config_is_a_mismatch(stablesr_tiny_state, tiny_configs):
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        convert_sr_module(stablesr_tiny_state, unet_config=tiny_configs[0])  # default encoder: 256 channels


# ------------------------------------------------------------------------ legacy attention split
def _legacy_qkv_attention(x: torch.Tensor, qkv_weight, qkv_bias, proj_weight, proj_bias, heads: int) -> torch.Tensor:
    """The official AttentionBlock maths after its GroupNorm, written from the formula (float64)."""
    batch, channels, length = x.shape
    qkv = torch.einsum("oc,bct->bot", qkv_weight[..., 0], x) + qkv_bias[:, None]  # (B, 3C, T)
    per_head = qkv.reshape(batch * heads, 3 * channels // heads, length)
    q, k, v = per_head.chunk(3, dim=1)  # each (B*heads, ch, T)
    scale = 1 / math.sqrt(math.sqrt(channels // heads))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    out = torch.einsum("bts,bcs->bct", weight, v).reshape(batch, channels, length)
    return torch.einsum("oc,bct->bot", proj_weight[..., 0], out) + proj_bias[:, None]


def test_qkv_split_reproduces_the_legacy_attention(stablesr_tiny_state, tiny_configs):
    unet_config, encoder_config = tiny_configs
    sr_state = convert_sr_module(stablesr_tiny_state, unet_config=unet_config, encoder_config=encoder_config)
    source = {k[len(ENCODER_PREFIX + "input_blocks.7.1.") :]: v.double() for k, v in stablesr_tiny_state.items()
              if k.startswith(ENCODER_PREFIX + "input_blocks.7.1.")}  # fmt: skip
    attention = SelfAttention2d(128, num_heads=4).double()
    attention.load_state_dict({k.rpartition("down_attentions.2.0.")[2]: v.double() for k, v in sr_state.items()
                               if k.startswith("encoder.down_attentions.2.0.")})  # fmt: skip
    x = torch.randn(2, 128, 3, 4, dtype=torch.float64)
    normed = attention.norm(x).flatten(2)
    expected = x.flatten(2) + _legacy_qkv_attention(
        normed, source["qkv.weight"], source["qkv.bias"], source["proj_out.weight"], source["proj_out.bias"], 4
    )
    torch.testing.assert_close(attention(x).flatten(2), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------- blind spots
# Tensors with no numerical influence on the parity cases (fixtures README, errata), and where they
# must land. Written out by hand from the LDM -> diffusers block correspondence.
BLIND_SPOTS = {
    f"input_blocks.{block}.0.{layer}": f"down_blocks.0.resnets.{resnet}.{target}"
    for block, resnet in ((1, 0), (2, 1))
    for layer, target in (("emb_layers.1.weight", "time_emb_proj.weight"), ("emb_layers.1.bias", "time_emb_proj.bias"),
                          ("in_layers.2.bias", "conv1.bias"), ("out_layers.3.bias", "conv2.bias"))
} | {
    f"output_blocks.{block}.0.{layer}": f"up_blocks.3.resnets.{block - 9}.{target}"
    for block in (9, 10, 11)
    for layer, target in (("emb_layers.1.weight", "time_emb_proj.weight"), ("emb_layers.1.bias", "time_emb_proj.bias"),
                          ("in_layers.2.bias", "conv1.bias"), ("out_layers.3.bias", "conv2.bias"))
} | {
    "output_blocks.11.1.proj_out.bias": "up_blocks.3.attentions.2.proj_out.bias",
    "output_blocks.11.1.transformer_blocks.0.ff.net.2.bias": (
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2.bias"
    ),
    "output_blocks.11.0.skip_connection.bias": "up_blocks.3.resnets.2.conv_shortcut.bias",
    "output_blocks.11.0.spade.mlp_beta.bias": "sft_layers.21.to_beta.bias",
}  # fmt: skip


def test_blind_spot_tensors_land_in_the_intended_parameter(stablesr_tiny_state, tiny_configs):
    unet_config, encoder_config = tiny_configs
    assert len(BLIND_SPOTS) == 24
    perturbed = dict(stablesr_tiny_state)
    for number, source in enumerate(BLIND_SPOTS, start=1):
        perturbed[UNET_PREFIX + source] = stablesr_tiny_state[UNET_PREFIX + source] + 1000.0 * number

    def convert_both(state):
        unet_state = convert_ldm_unet(state, unet_config)
        return unet_state | convert_sr_module(state, unet_config=unet_config, encoder_config=encoder_config)

    baseline, moved = convert_both(stablesr_tiny_state), convert_both(perturbed)
    moved_unet = convert_ldm_unet(perturbed, unet_config)
    changed = {
        key: (moved[key] - baseline[key]).mean().item()
        for key in baseline if not torch.equal(moved[key], baseline[key])
    }
    expected = {target: 1000.0 * number for number, target in enumerate(BLIND_SPOTS.values(), start=1)}
    assert changed == pytest.approx(expected, abs=0.01)
    unet = UNet2DConditionModel.from_config(unet_config)
    unet.load_state_dict(moved_unet)
    for target in BLIND_SPOTS.values():
        if not target.startswith("sft_layers."):
            assert torch.equal(unet.get_parameter(target), moved[target]), target

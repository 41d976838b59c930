"""Parity with the official StableSR code (fixtures/parity cases a and b).

stablesr_tiny.safetensors (official key layout, fp16 on disk, upcast to fp32) is loaded through our
key maps into a diffusers UNet2DConditionModel + StableSRModule built from the tiny config, and
the outputs are compared with the tensors the official modules produced on CPU in fp32.
Tolerance (fixtures README): max|diff| <= 1e-4 * max(1, max|ref|). Measured errors are printed
(pytest -s) and recorded as test properties.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from fixture_cases import debug_taps, encoder_cases, ids, load_meta, tensor_names, unet_cases

from conftest import assert_close_scaled
from stablesr.models.sft_unet import SFTUNet, StableSRModule
from stablesr.weights.keymap_unet import (
    convert_ldm_unet,
    convert_sr_module,
    encoder_config_from_ldm,
    unet_config_from_ldm,
)

TOLERANCE = 1e-4
META = load_meta()
ENCODER_CASES = {case.name: case for case in encoder_cases(META)}
# official debug tap -> our module whose forward output is the same tensor (the name map is ours; the
# taps to check come from the fixture)
TAP_MODULES = {
    "time_embed": "unet.time_embedding",
    "input_blocks.1.0.spade": "sr_module.sft_layers.0",
    "input_blocks.1.0": "unet.down_blocks.0.resnets.0",
    "input_blocks.1": "unet.down_blocks.0.attentions.0",
    "input_blocks.4.0": "unet.down_blocks.1.resnets.0",
    "middle_block": "unet.mid_block",
    "output_blocks.8": "unet.up_blocks.2",
    "output_blocks.11": "unet.up_blocks.3",
}


@pytest.fixture(scope="module")
def model(stablesr_tiny_state, tiny_config) -> SFTUNet:
    unet_config = unet_config_from_ldm(tiny_config["unet_config.params"])
    encoder_config = encoder_config_from_ldm(tiny_config["structcond_stage_config.params"])
    unet = UNet2DConditionModel.from_config(unet_config).eval()
    unet.load_state_dict(convert_ldm_unet(stablesr_tiny_state, unet_config))
    sr_module = StableSRModule.from_unet(unet, cond_channels=encoder_config["out_channels"], **encoder_config).eval()
    sr_state = convert_sr_module(stablesr_tiny_state, unet_config=unet_config, encoder_config=encoder_config)
    sr_module.load_state_dict(sr_state)
    return SFTUNet(unet, sr_module)


def _check(actual, expected, name, record_property) -> None:
    ratio = assert_close_scaled(actual, expected, TOLERANCE, name)
    print(f"parity {name}: max|diff| / max(1, max|ref|) = {ratio:.2e}")
    record_property(name, ratio)


@pytest.mark.parametrize("case", encoder_cases(META), ids=ids)
def test_time_aware_encoder(model, parity_cases, case, record_property):
    with torch.no_grad():
        cond_feats = model.sr_module.encoder(parity_cases[f"a.{case.lr_latent}"], parity_cases[f"a.{case.t}"])
    assert tuple(cond_feats) == case.widths
    for width, feat in cond_feats.items():
        _check(feat, parity_cases[f"a.{case.name}.{width}"], f"a.{case.name}.{width}", record_property)


@pytest.mark.parametrize("name", [n for n in tensor_names(META) if n.endswith(".time_embed_out")])
def test_encoder_time_embedding_tap(model, parity_cases, name, record_property):
    encoder = model.sr_module.encoder
    t_name = ENCODER_CASES[name.split(".")[1]].t
    with torch.no_grad():
        temb = encoder.time_embedding(encoder.time_proj(parity_cases[f"a.{t_name}"]))
    _check(temb, parity_cases[name], name, record_property)


@pytest.mark.parametrize("case", unet_cases(META), ids=ids)
def test_unet_with_sft(model, parity_cases, case, record_property):
    lr_name = ENCODER_CASES[case.encoder_case].lr_latent
    with torch.no_grad():
        eps = model(parity_cases[f"b.{case.x_t}"], parity_cases[f"a.{case.t}"], parity_cases[f"b.{case.context}"],
                    parity_cases[f"a.{lr_name}"])
    _check(eps, parity_cases[f"b.{case.name}"], f"b.{case.name}", record_property)


@pytest.mark.parametrize("case", [c for c in unet_cases(META) if c.name in debug_taps(META)], ids=ids)
def test_debug_taps(model, parity_cases, case, record_property):
    taps, prefix = debug_taps(META)[case.name], "b.tap_" + case.name.removeprefix("eps_")
    captured = {}

    def capture(tap: str):
        def hook(module, args, out) -> None:  # returns None: the output is left unchanged
            captured[tap] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [model.get_submodule(TAP_MODULES[tap]).register_forward_hook(capture(tap)) for tap in taps]
    with torch.no_grad():
        model(parity_cases[f"b.{case.x_t}"], parity_cases[f"a.{case.t}"], parity_cases[f"b.{case.context}"],
              parity_cases[f"a.{ENCODER_CASES[case.encoder_case].lr_latent}"])
    for handle in handles:
        handle.remove()
    for tap in taps:
        _check(captured[tap], parity_cases[f"{prefix}.{tap}"], f"{prefix}.{tap}", record_property)

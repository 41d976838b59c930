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

from conftest import assert_close_scaled
from stablesr.models.sft_unet import SFTUNet, StableSRModule
from stablesr.weights.keymap_unet import (
    convert_ldm_unet,
    convert_sr_module,
    encoder_config_from_ldm,
    unet_config_from_ldm,
)

TOLERANCE = 1e-4
# case name -> (lr latent, timestep) inputs of case a; case b reuses them with its x_t and context
ENCODER_CASES = {
    "enc_32_t999": ("lr_latent_32", "t_999", (32, 16, 8, 4)),
    "enc_32_t500": ("lr_latent_32", "t_500", (32, 16, 8, 4)),
    "enc_24x40_t250": ("lr_latent_24x40", "t_250", (40, 20, 10, 5)),
    "enc_b2_16": ("lr_latent_b2_16", "t_b2", (16, 8, 4, 2)),
}
UNET_CASES = {
    "eps_32_t999": ("x_t_32", "context", "enc_32_t999"),
    "eps_32_t500": ("x_t_32", "context", "enc_32_t500"),
    "eps_24x40_t250": ("x_t_24x40", "context", "enc_24x40_t250"),
    "eps_b2_16": ("x_t_b2_16", "context_b2", "enc_b2_16"),
}
# official debug tap -> our module whose forward output is the same tensor
TAPS = {
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


@pytest.mark.parametrize("case", ENCODER_CASES)
def test_time_aware_encoder(model, parity_cases, case, record_property):
    lr_name, t_name, widths = ENCODER_CASES[case]
    with torch.no_grad():
        cond_feats = model.sr_module.encoder(parity_cases[f"a.{lr_name}"], parity_cases[f"a.{t_name}"])
    assert tuple(cond_feats) == widths
    for width, feat in cond_feats.items():
        _check(feat, parity_cases[f"a.{case}.{width}"], f"a.{case}.{width}", record_property)


def test_encoder_time_embedding_tap(model, parity_cases, record_property):
    encoder = model.sr_module.encoder
    with torch.no_grad():
        temb = encoder.time_embedding(encoder.time_proj(parity_cases["a.t_999"]))
    _check(temb, parity_cases["a.enc_32_t999.time_embed_out"], "a.enc_32_t999.time_embed_out", record_property)


@pytest.mark.parametrize("case", UNET_CASES)
def test_unet_with_sft(model, parity_cases, case, record_property):
    x_name, context_name, encoder_case = UNET_CASES[case]
    lr_name, t_name, _ = ENCODER_CASES[encoder_case]
    with torch.no_grad():
        eps = model(
            parity_cases[f"b.{x_name}"],
            parity_cases[f"a.{t_name}"],
            parity_cases[f"b.{context_name}"],
            parity_cases[f"a.{lr_name}"],
        )
    _check(eps, parity_cases[f"b.{case}"], f"b.{case}", record_property)


def test_debug_taps(model, parity_cases, record_property):
    captured = {}

    def capture(tap: str):
        def hook(module, args, out) -> None:  # returns None: the output is left unchanged
            captured[tap] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [model.get_submodule(path).register_forward_hook(capture(tap)) for tap, path in TAPS.items()]
    with torch.no_grad():
        inputs = ("b.x_t_32", "a.t_999", "b.context", "a.lr_latent_32")
        model(*(parity_cases[name] for name in inputs))
    for handle in handles:
        handle.remove()
    for tap in TAPS:
        _check(captured[tap], parity_cases[f"b.tap_32_t999.{tap}"], f"b.tap_32_t999.{tap}", record_property)

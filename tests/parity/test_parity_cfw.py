"""Parity with the official CFW AutoencoderKLResi (fixture case f), loaded through our key maps."""

import json

import pytest
import torch
from diffusers import AutoencoderKL
from fixture_cases import decoded_fidelities, encoder_features, load_meta

from conftest import assert_close_scaled, require_parity_file
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.weights.keymap_vae import convert_cfw, convert_ldm_vae, load_state_strict, vae_config_from_ldm

REL = 1e-4  # README: single network evaluations, max|diff| <= 1e-4 * max(1, max|ref|)
META = load_meta()


@pytest.fixture(scope="module")
def vae_config() -> dict:
    ddconfig = json.loads(require_parity_file("tiny_config.json").read_text())["ddconfig (first_stage_config & CFW)"]
    return vae_config_from_ldm(ddconfig, embed_dim=4)


@pytest.fixture(scope="module")
def cfw(cfw_tiny_state, vae_config) -> CFWAutoencoderKL:
    model = CFWAutoencoderKL(**vae_config).eval()
    load_state_strict(model, convert_cfw(cfw_tiny_state))
    return model


@pytest.fixture(scope="module")
def encoded(cfw, parity_cases):
    with torch.no_grad():
        return cfw.encode_with_features(parity_cases["f.image"])


def test_encoder_outputs(encoded, parity_cases):
    posterior, enc_feats = encoded
    assert_close_scaled(posterior.parameters, parity_cases["f.moments"], REL, "f.moments")
    assert_close_scaled(posterior.mean, parity_cases["f.posterior_mean"], REL, "f.posterior_mean")
    assert_close_scaled(posterior.logvar, parity_cases["f.posterior_logvar"], REL, "f.posterior_logvar")
    names = encoder_features(META)
    assert len(enc_feats) == len(names)
    for feat, name in zip(enc_feats, names):
        assert_close_scaled(feat, parity_cases[name], REL, name)


@pytest.mark.parametrize(("fidelity", "name"), decoded_fidelities(META))
def test_decoded(cfw, encoded, parity_cases, fidelity, name):
    with torch.no_grad():
        decoded = cfw.decode_with_features(parity_cases["f.z"], encoded[1], fidelity=fidelity)
    assert_close_scaled(decoded, parity_cases[f"f.decoded_{name}"], REL, f"f.decoded_{name}")


def test_fidelity_zero_is_bit_identical_to_plain_autoencoder(cfw, encoded, parity_cases, cfw_tiny_state, vae_config):
    plain = AutoencoderKL(**vae_config).eval()
    load_state_strict(plain, convert_ldm_vae({k: v for k, v in cfw_tiny_state.items() if ".fusion_layer_" not in k}))
    with torch.no_grad():
        expected = plain.decode(parity_cases["f.z"]).sample
        decoded = cfw.decode_with_features(parity_cases["f.z"], encoded[1], fidelity=0.0)
    assert (decoded - expected).abs().max().item() == 0.0


def test_fidelity_changes_the_output_as_in_the_reference(parity_cases):
    """The fixture itself: w moves the output by O(1), so matching w=0.5 and w=1 really checks the fusion."""
    (_, lowest), *_, (_, highest) = sorted(decoded_fidelities(META))
    delta = (parity_cases[f"f.decoded_{highest}"] - parity_cases[f"f.decoded_{lowest}"]).abs().max().item()
    assert delta > 0.5

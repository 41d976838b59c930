"""Official LDM VAE / CFW key maps: one-to-one on the full-size layout, strict, and blind spots wired right."""

import json

import pytest
import torch
from diffusers import AutoencoderKL

from conftest import require_parity_file
from stablesr.errors import CheckpointMismatchError
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.weights.keymap_vae import (
    check_state_keys,
    convert_cfw,
    convert_ldm_vae,
    load_state_strict,
    vae_config_from_ldm,
)

# Tensors the parity cases cannot check (README errata): the attention key bias (softmax is
# shift-invariant) and conv biases right before a GroupNorm with one channel per group (32-ch levels).
BLIND_SPOTS = {
    "encoder.mid.attn_1.k.bias": "encoder.mid_block.attentions.0.to_k.bias",
    "decoder.mid.attn_1.k.bias": "decoder.mid_block.attentions.0.to_k.bias",
    "encoder.down.0.block.0.conv1.bias": "encoder.down_blocks.0.resnets.0.conv1.bias",
    "encoder.down.0.block.1.conv1.bias": "encoder.down_blocks.0.resnets.1.conv1.bias",
    "decoder.up.0.block.0.conv1.bias": "decoder.up_blocks.3.resnets.0.conv1.bias",
    "decoder.up.0.block.2.conv1.bias": "decoder.up_blocks.3.resnets.2.conv1.bias",
}


def tiny_model() -> CFWAutoencoderKL:
    ddconfig = json.loads(require_parity_file("tiny_config.json").read_text())["ddconfig (first_stage_config & CFW)"]
    return CFWAutoencoderKL(**vae_config_from_ldm(ddconfig, embed_dim=4))


def test_vae_config_from_ldm_sd21():
    ddconfig = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    config = vae_config_from_ldm(ddconfig, embed_dim=4)
    assert config["block_out_channels"] == [128, 256, 512, 512]
    assert config["layers_per_block"] == 2 and config["latent_channels"] == 4
    assert config["scaling_factor"] == 0.18215
    with pytest.raises(CheckpointMismatchError):
        vae_config_from_ldm({**ddconfig, "attn_resolutions": [32]}, embed_dim=4)


def test_full_size_official_cfw_layout_maps_one_to_one():
    official = json.loads(require_parity_file("official_full_keys.json").read_text())["cfw"]
    state = {key: torch.empty(shape, device="meta") for key, shape in official.items()}
    converted = convert_cfw(state)
    with torch.device("meta"):
        model = CFWAutoencoderKL()
    check_state_keys(converted, model.state_dict())  # same keys, same shapes
    assert len(converted) == len(state) == len(model.state_dict()) == 404


def test_tiny_cfw_converts_into_the_tiny_model(cfw_tiny_state):
    converted = convert_cfw({**cfw_tiny_state, "loss.logvar": torch.zeros(())})
    assert len(converted) == len(cfw_tiny_state)
    source_ptrs = {v.data_ptr() for v in cfw_tiny_state.values()}
    assert {v.data_ptr() for v in converted.values()} == source_ptrs  # every source tensor used exactly once
    load_state_strict(tiny_model(), converted)


def test_convert_ldm_vae_strips_prefix_and_ignores_other_keys(cfw_tiny_state):
    vae_state = {k: v for k, v in cfw_tiny_state.items() if ".fusion_layer_" not in k}
    full = {f"first_stage_model.{k}": v for k, v in vae_state.items()}
    full.update({"betas": torch.zeros(1000), "model.diffusion_model.out.2.bias": torch.zeros(4)})
    converted = convert_ldm_vae(full)
    plain_config = {k: v for k, v in tiny_model().config.items() if not k.startswith(("_", "num_fuse", "fuse_"))}
    plain = AutoencoderKL(**plain_config)
    load_state_strict(plain, converted)
    assert torch.equal(plain.encoder.mid_block.attentions[0].to_q.weight,
                       vae_state["encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    assert torch.equal(plain.decoder.up_blocks[0].upsamplers[0].conv.weight,
                       vae_state["decoder.up.3.upsample.conv.weight"])


def test_missing_unexpected_and_misshaped_keys_raise(cfw_tiny_state):
    missing = {k: v for k, v in cfw_tiny_state.items() if k != "decoder.up.2.block.1.norm2.bias"}
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.up\.2\.block\.1\.norm2\.bias"):
        convert_cfw(missing)
    missing_fusion = {
        k: v for k, v in cfw_tiny_state.items() if k != "decoder.fusion_layer_2.encode_enc_3.conv2.weight"
    }
    with pytest.raises(CheckpointMismatchError, match="fusion_layer_2.encode_enc_3.conv2.weight"):
        convert_cfw(missing_fusion)
    with pytest.raises(CheckpointMismatchError, match=r"encoder\.mid\.block_3\.conv1\.bias"):
        convert_cfw({**cfw_tiny_state, "encoder.mid.block_3.conv1.bias": torch.zeros(128)})
    with pytest.raises(CheckpointMismatchError, match="optimizer"):
        convert_cfw({**cfw_tiny_state, "optimizer.state": torch.zeros(1)})
    wrong = {**cfw_tiny_state, "decoder.conv_out.bias": torch.zeros(4)}
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.conv_out\.bias \(4,\) != \(3,\)"):
        load_state_strict(tiny_model(), convert_cfw(wrong))
    with pytest.raises(CheckpointMismatchError, match="1x1 conv"):
        convert_cfw({**cfw_tiny_state, "decoder.mid.attn_1.v.weight": torch.zeros(128, 128, 3, 3)})


@pytest.mark.parametrize("source_key", sorted(BLIND_SPOTS))
def test_blind_spot_tensors_land_in_their_parameter(cfw_tiny_state, source_key):
    reference = convert_cfw(cfw_tiny_state)
    perturbed = dict(cfw_tiny_state)
    perturbed[source_key] = cfw_tiny_state[source_key] + torch.arange(cfw_tiny_state[source_key].numel()).float() + 1
    converted = convert_cfw(perturbed)
    changed = [k for k in reference if not torch.equal(reference[k], converted[k])]
    assert changed == [BLIND_SPOTS[source_key]]
    model = tiny_model()
    load_state_strict(model, converted)
    assert torch.equal(model.state_dict()[BLIND_SPOTS[source_key]], perturbed[source_key])

"""Assembling pipelines from the files users have: WebUI SR module + SD diffusers folder, errors, guesses."""

import json

import pytest
import torch
from safetensors.torch import save_file

from stablesr.errors import StableSRError, WeightsNotFoundError
from stablesr.weights.keymap_unet import encoder_config_from_ldm, unet_config_from_ldm
from stablesr.weights.keymap_vae import convert_ldm_vae, vae_config_from_ldm
from stablesr.weights.loading import build_pipeline, build_unet, classify_state, guess_base


def tiny_tokenizer(folder):
    transformers = pytest.importorskip("transformers")
    vocab = {"!": 0}
    for c in "abcdefghijklmnopqrstuvwxyz,()23:":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(folder)
    return transformers


@pytest.fixture(scope="module")
def sd_folder_and_sr_module(tmp_path_factory, stablesr_tiny_state, cfw_tiny_state, tiny_config):
    """An SD base as a diffusers folder (unet, vae, text_encoder, tokenizer) + the WebUI SR module file."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("sd")
    unet_state = {k: v for k, v in stablesr_tiny_state.items() if k.startswith("model.") and ".spade." not in k}
    unet = build_unet(unet_state, unet_config_from_ldm(tiny_config["unet_config.params"]))
    unet.save_pretrained(root / "sd" / "unet")
    vae = AutoencoderKL(**vae_config_from_ldm(tiny_config["ddconfig (first_stage_config & CFW)"], embed_dim=4))
    vae.load_state_dict(convert_ldm_vae({k: v for k, v in cfw_tiny_state.items() if "fusion" not in k}))
    vae.save_pretrained(root / "sd" / "vae")
    transformers = tiny_tokenizer(root / "sd" / "tokenizer")
    torch.manual_seed(0)
    text_config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu")
    transformers.CLIPTextModel(text_config).save_pretrained(root / "sd" / "text_encoder")
    sr_state = {k: v for k, v in stablesr_tiny_state.items() if ".spade." in k or k.startswith("structcond")}
    save_file(sr_state, root / "webui_sr_module.safetensors")
    return root, unet


def test_webui_sr_module_plus_sd_folder_builds_the_same_model(sd_folder_and_sr_module, tiny_config):
    root, unet = sd_folder_and_sr_module
    pipe = build_pipeline([root / "webui_sr_module.safetensors", root / "sd"], keep_text_encoder=True,
                          encoder_config=encoder_config_from_ldm(tiny_config["structcond_stage_config.params"]))
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), unet.state_dict().values()))
    assert not pipe.config.cfw_trained  # no CFW checkpoint given: fidelity must stay 0
    assert set(pipe.prompt_embeds.config.prompts) == {"null", "negative", "positive"}
    with torch.no_grad():
        ids = pipe.tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.equal(pipe.prompt_embeds.null, pipe.text_encoder(ids).last_hidden_state)
        custom = pipe.encode_prompt("a cat")  # the kept text encoder serves prompts that are not cached
    assert custom.shape == (1, 77, 64) and not torch.equal(custom, pipe.prompt_embeds.null)


def test_sr_module_alone_names_what_is_missing(sd_folder_and_sr_module):
    root, _ = sd_folder_and_sr_module
    with pytest.raises(WeightsNotFoundError, match="no SD UNet"):
        build_pipeline([root / "webui_sr_module.safetensors"])


def test_unrelated_checkpoint_and_missing_file_are_clear_errors(tmp_path):
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(StableSRError, match="no StableSR, SD or CFW keys"):
        build_pipeline([tmp_path / "other.safetensors"])
    with pytest.raises(WeightsNotFoundError, match="nope.ckpt"):
        build_pipeline([tmp_path / "nope.ckpt"])


def test_classify_state_and_guess_base():
    state = {"model.diffusion_model.out.0.weight": 0, "model.diffusion_model.input_blocks.1.0.spade.x": 0,
             "first_stage_model.decoder.conv_in.weight": 0, "cond_stage_model.model.ln_final.weight": 0}
    assert classify_state(state) == {"unet", "sr_module", "vae", "text"}
    assert classify_state({"decoder.fusion_layer_1.x": 0, "encoder.conv_in.weight": 0}) == {"cfw"}
    assert guess_base("stablesr_768v_000139.ckpt") == "sd21-768v"
    assert guess_base("stablesr_turbo.ckpt") == "sd-turbo"
    assert guess_base("stablesr_000117.ckpt") == "sd21-base"

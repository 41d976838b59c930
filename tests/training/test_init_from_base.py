"""`model.base: DIR` (docs/training.md): a diffusers-format SD folder + a fresh SR module, reached end to end."""

from __future__ import annotations

import json

import pytest
import torch

from stablesr.training.config import ModelInit, StableSRTrainConfig, config_from_dict
from stablesr.training.init import load_initial_pipeline
from tiny_models import TINY_UNET


def write_tiny_sd_folder(folder):
    """A diffusers-format SD folder (unet/, vae/, text_encoder/, tokenizer/) with tiny random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=32)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    vocab = {"!": 0, **{c + end: 1 + 2 * k + (end != "") for k, c in enumerate("abcdefghijklmnopqrstuvwxyz,()23:")
                        for end in ("", "</w>")}, "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"),
                                           str(folder / "tokenizer" / "merges.txt"), pad_token="!")
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(folder / "tokenizer")
    text_config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu")
    transformers.CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")
    return unet, vae


def test_model_base_folder_builds_a_pipeline_with_its_weights_and_a_fresh_sr_module(tmp_path):
    unet, vae = write_tiny_sd_folder(tmp_path / "sd")
    config = config_from_dict(StableSRTrainConfig, {"model": {"base": str(tmp_path / "sd")}})
    assert config.model == ModelInit(base=str(tmp_path / "sd"))
    pipe = load_initial_pipeline(config.model)
    for name, value in unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[name], value), name
    vae_state = pipe.vae.state_dict()
    for name, value in vae.state_dict().items():
        assert torch.equal(vae_state[name], value), name
    assert tuple(pipe.vae.config.block_out_channels) == (32,) * 4  # the folder's config, not the shipped SD one
    assert len(pipe.sr_module.sft_layers) == sum(1 for _ in pipe.unet.modules()
                                                 if type(_).__name__ == "ResnetBlock2D")
    assert pipe.scheduler.config.prediction_type == "epsilon" and not pipe.config.cfw_trained
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    assert pipe.prompt_embeds.null.shape == (1, 77, 16)  # '' encoded by the folder's text encoder

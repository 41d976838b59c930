"""CCSR v1 official layout: a synthetic real-world_ccsr.ckpt (tiny, official key names) loads exactly."""

import pytest
import torch
from safetensors.torch import save_file

from stablesr.errors import CheckpointMismatchError, StableSRError
from stablesr.models.text_encoder import OpenCLIPTextEncoder, known_prompt_tokens
from stablesr.pipelines.ccsr import CCSRPipeline
from stablesr.weights.ccsr import build_ccsr_pipeline, control_module_map
from stablesr.weights.keymap_unet import unet_config_from_ldm
from stablesr.weights.keymap_vae import vae_config_from_ldm


@pytest.fixture(scope="module")
def official(stablesr_tiny_state, cfw_tiny_state, tiny_config):
    """An official-layout CCSR state dict built from the tiny StableSR fixtures, as make_stage2_init_weight
    would (control_* <- model.diffusion_* with 4 extra input channels, cond_encoder.* <- first_stage_model.*),
    with random zero convs and extra channels so every tensor is distinct."""
    g = torch.Generator().manual_seed(0)
    unet = {k: v for k, v in stablesr_tiny_state.items() if k.startswith("model.") and ".spade." not in k}
    vae = {k: v for k, v in cfw_tiny_state.items() if "fusion" not in k and not k.startswith("loss.")}
    state = dict(unet)
    state.update({"first_stage_model." + k: v for k, v in vae.items()})
    state.update({"cond_encoder." + k: v + 0.01 for k, v in vae.items() if k.startswith(("encoder.", "quant_conv."))})
    for key, value in unet.items():
        name = key[len("model.diffusion_model."):]
        if name.split(".")[0] in ("time_embed", "input_blocks", "middle_block"):
            state["control_model." + name] = value.clone()
    conv_in = state["control_model.input_blocks.0.0.weight"]
    state["control_model.input_blocks.0.0.weight"] = torch.cat(
        [conv_in, torch.randn(conv_in.shape[0], 4, 3, 3, generator=g)], 1)
    channels = [32, 32, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128]  # model_channels 32, mult 1, 2, 4, 4
    for k, c in enumerate(channels):
        state[f"control_model.zero_convs.{k}.0.weight"] = torch.randn(c, c, 1, 1, generator=g)
        state[f"control_model.zero_convs.{k}.0.bias"] = torch.randn(c, generator=g)
    state["control_model.middle_block_out.0.weight"] = torch.randn(128, 128, 1, 1, generator=g)
    state["control_model.middle_block_out.0.bias"] = torch.randn(128, generator=g)
    state["betas"] = torch.zeros(1000)  # schedule buffers are ignored
    configs = {"unet_config": unet_config_from_ldm(tiny_config["unet_config.params"]),
               "vae_config": vae_config_from_ldm(tiny_config["ddconfig (first_stage_config & CFW)"], embed_dim=4)}
    return state, configs


def test_every_part_lands_under_its_diffusers_name(official):
    state, configs = official
    pipe = build_ccsr_pipeline(state, null_embedding=torch.zeros(1, 77, 64), **configs)
    control = pipe.controlnet.state_dict()
    assert torch.equal(control["conv_in.weight"], state["control_model.input_blocks.0.0.weight"])
    assert control["conv_in.weight"].shape == (32, 8, 3, 3)
    assert torch.equal(control["zero_convs.11.weight"], state["control_model.zero_convs.11.0.weight"])
    assert torch.equal(control["mid_zero_conv.bias"], state["control_model.middle_block_out.0.bias"])
    assert torch.equal(control["down_blocks.1.resnets.0.norm1.weight"],
                       state["control_model.input_blocks.4.0.in_layers.0.weight"])
    assert torch.equal(control["time_embedding.linear_2.bias"], state["control_model.time_embed.2.bias"])
    assert torch.equal(pipe.unet.state_dict()["conv_out.weight"], state["model.diffusion_model.out.2.weight"])
    assert torch.equal(pipe.cond_encoder.state_dict()["quant_conv.bias"], state["cond_encoder.quant_conv.bias"])
    assert torch.equal(pipe.vae.state_dict()["quant_conv.bias"], state["first_stage_model.quant_conv.bias"])
    assert torch.equal(pipe.vae.state_dict()["decoder.conv_out.weight"],
                       state["first_stage_model.decoder.conv_out.weight"])
    assert len(pipe.controlnet.zero_convs) + 1 == 13


def test_full_size_control_map_covers_the_sd21_layout():
    from stablesr.weights.keymap_unet import load_default_unet_config

    module_map = control_module_map(load_default_unet_config(), 12)
    assert module_map["input_blocks.0.0"] == "conv_in" and module_map["middle_block_out.0"] == "mid_zero_conv"
    assert module_map["zero_convs.11.0"] == "zero_convs.11"
    assert module_map["input_blocks.11.0.in_layers.0"] == "down_blocks.3.resnets.1.norm1"
    assert not any(source.startswith(("output_blocks", "out.")) for source in module_map)


def test_a_missing_part_and_a_wrong_key_are_named(official, tmp_path):
    state, configs = official
    without = {k: v for k, v in state.items() if not k.startswith("cond_encoder.")}
    with pytest.raises(CheckpointMismatchError, match="cond_encoder"):
        build_ccsr_pipeline(without, null_embedding=torch.zeros(1, 77, 64), **configs)
    extra = {**state, "control_model.zero_convs.12.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match="zero_convs.12"):
        build_ccsr_pipeline(extra, null_embedding=torch.zeros(1, 77, 64), **configs)
    with pytest.raises(StableSRError, match="text tower"):
        build_ccsr_pipeline(state, **configs)


def test_convert_then_upscale_from_the_cli(official, tmp_path, capsys):
    import json

    from PIL import Image

    from stablesr.cli.main import main

    state, configs = official
    checkpoint = tmp_path / "real-world_ccsr.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, checkpoint)
    for name, config in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
    flags = ["--unet-config", str(tmp_path / "unet_config.json"), "--vae-config", str(tmp_path / "vae_config.json")]
    assert main(["convert", str(checkpoint), "-o", str(tmp_path / "no"), *flags]) != 0  # not a StableSR checkpoint
    assert main(["convert", str(checkpoint), "-o", str(tmp_path / "no"), "--method", "ccsr", *flags]) != 0
    assert "text tower" in capsys.readouterr().err  # without cond_stage_model.model.* there is no '' embedding
    torch.manual_seed(0)
    text = OpenCLIPTextEncoder(vocab_size=49408, context_length=77, width=64, layers=1, heads=1, embed_dim=64)
    state.update({"cond_stage_model.model." + k: v for k, v in text.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, checkpoint)
    assert main(["convert", str(checkpoint), "-o", str(tmp_path / "ccsr"), "--method", "ccsr", *flags]) == 0
    null = CCSRPipeline.from_pretrained(tmp_path / "ccsr").prompt_embeds.find("")
    torch.testing.assert_close(null, text.eval()(known_prompt_tokens("")).float(), rtol=0, atol=0)
    Image.new("RGB", (12, 8), (120, 60, 30)).save(tmp_path / "p.png")
    assert main(["upscale", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--method", "ccsr", "--model",
                 str(tmp_path / "ccsr"), "--steps", "15", "--min-size", "32", "--no-progress"]) == 0
    assert Image.open(tmp_path / "out" / "p.png").size == (48, 32)


def test_v2_official_folders_convert_exactly_and_upscale(tmp_path):
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from PIL import Image
    from tiny_ccsr import TINY_UNET, TINY_VAE

    from stablesr.cli.main import main
    from stablesr.models.controlnet import LatentControlNet

    transformers = pytest.importorskip("transformers")
    from test_loading import tiny_tokenizer

    torch.manual_seed(0)
    sd = tmp_path / "sd21-base"
    unet = UNet2DConditionModel(**TINY_UNET)
    unet.save_pretrained(sd / "unet")
    AutoencoderKL(**TINY_VAE).save_pretrained(sd / "vae")
    tiny_tokenizer(sd / "tokenizer")
    text_config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu")
    transformers.CLIPTextModel(text_config).save_pretrained(sd / "text_encoder")
    control = LatentControlNet.from_unet(unet)
    with torch.no_grad():
        for p in control.parameters():
            p.add_(0.01)
    official = {("condition_conv_in." + k.split(".", 2)[2]) if k.startswith("controlnet.controlnet_cond_embedding.")
                else k[len("controlnet."):]: v.contiguous() for k, v in control.state_dict().items()}
    (tmp_path / "controlnet").mkdir()
    save_file(official, tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors")
    config = {"_class_name": "ControlNetModel", **control.config.controlnet_config, "use_vae_encode_condition": True}
    (tmp_path / "controlnet" / "config.json").write_text(json.dumps(config))
    finetuned = AutoencoderKL(**TINY_VAE)
    finetuned.save_pretrained(tmp_path / "vae")
    out = tmp_path / "ccsr-v2"
    folders = [str(tmp_path / "vae"), str(sd), str(tmp_path / "controlnet")]
    assert main(["convert", *folders, "-o", str(out), "--method", "ccsr"]) == 0
    pipe = CCSRPipeline.from_pretrained(out)
    assert pipe.version == "v2" and pipe.resolve_settings().num_inference_steps == 1
    loaded = pipe.controlnet.state_dict()
    assert loaded.keys() == control.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in control.state_dict().items())
    assert torch.equal(pipe.vae.decoder.conv_out.weight, finetuned.decoder.conv_out.weight)
    Image.new("RGB", (12, 8), (120, 60, 30)).save(tmp_path / "p.png")
    args = ["upscale", str(tmp_path / "p.png"), "-o", str(tmp_path / "sr"), "--method", "ccsr", "--model", str(out),
            "--min-size", "32", "--no-progress"]
    assert main([*args, "--preset", "v2-multi-step"]) == 0
    assert Image.open(tmp_path / "sr" / "p.png").size == (48, 32)
    (tmp_path / "controlnet" / "config.json").write_text(json.dumps({**config, "use_vae_encode_condition": False}))
    assert main(["convert", *folders, "-o", str(tmp_path / "bad"), "--method", "ccsr"]) != 0

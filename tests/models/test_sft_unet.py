"""SFTUNet / StableSRModule: resnet order, sizes of the official module, hook behaviour, autograd."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from conftest import FLOAT32_REL
from stablesr.models.sft_unet import SFTUNet, StableSRModule, resnets_in_order
from stablesr.weights.keymap_unet import load_default_unet_config

TINY_UNET = {
    "sample_size": 16,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": [2, 4],
    "cross_attention_dim": 16,
    "use_linear_projection": True,
}
TINY_ENCODER = {"model_channels": 32, "num_res_blocks": 1, "channel_mult": (1, 2), "num_heads": 2}


def _tiny_models(seed: int = 0) -> tuple[UNet2DConditionModel, StableSRModule]:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).eval().requires_grad_(False)
    with torch.no_grad():  # the default init zeroes nothing here, but make the output layer non-trivial
        unet.conv_out.weight.normal_(0, 0.05)
    sr_module = StableSRModule.from_unet(unet, cond_channels=32, **TINY_ENCODER)
    return unet, sr_module.eval()


def _inputs(batch: int = 2, height: int = 8, width: int = 12, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 4, height, width, generator=generator)
    t = torch.tensor([999, 10, 500][:batch])
    context = torch.randn(batch, 7, 16, generator=generator)
    lr_latent = torch.randn(batch, 4, height, width, generator=generator)
    return x_t, t, context, lr_latent


def test_sd21_resnet_order_and_channels():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_default_unet_config())
    channels = [resnet.conv2.out_channels for resnet in resnets_in_order(unet)]
    # official SPADE widths: input 320,320,640,640,1280x4; middle 1280x2; output 1280x6,640x3,320x3
    assert channels == [320, 320, 640, 640] + [1280] * 4 + [1280] * 2 + [1280] * 6 + [640] * 3 + [320] * 3


def test_official_sr_module_sizes():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_default_unet_config())
        sr_module = StableSRModule.from_unet(unet)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert len(sr_module.sft_layers) == 22
    assert count(sr_module.sft_layers) == 53_020_160
    assert count(sr_module.encoder) == 52_494_080
    assert count(sr_module) == 105_514_240


def test_mismatched_cond_channels_are_refused():
    with pytest.raises(ValueError, match="cond_channels"):
        StableSRModule(sft_channels=[32], cond_channels=64, encoder={"out_channels": 32})


def test_removed_hooks_give_the_bare_unet_exactly():
    unet, sr_module = _tiny_models()
    x_t, t, context, lr_latent = _inputs()
    with torch.no_grad():
        bare = unet(x_t, t, encoder_hidden_states=context).sample
        model = SFTUNet(unet, sr_module)
        modulated = model(x_t, t, context, lr_latent)
        model.remove_hooks()
        after = unet(x_t, t, encoder_hidden_states=context).sample
    assert (modulated - bare).abs().max() > 1e-3
    assert torch.equal(after, bare)


def test_each_hook_applies_its_own_sft_layer_to_conv2():
    unet, sr_module = _tiny_models()
    model = SFTUNet(unet, sr_module)
    x_t, t, context, lr_latent = _inputs(batch=1)
    seen = []
    for index, layer in enumerate(sr_module.sft_layers):
        layer.register_forward_hook(lambda module, args, out, index=index: seen.append((index, args[0].shape)))
    with torch.no_grad():
        model(x_t, t, context, lr_latent)
    resnets = resnets_in_order(unet)
    assert [index for index, _ in seen] == list(range(len(resnets)))
    assert [shape[1] for _, shape in seen] == [resnet.conv2.out_channels for resnet in resnets]


def test_batch_entries_are_independent():
    unet, sr_module = _tiny_models()
    model = SFTUNet(unet, sr_module)
    x_t, t, context, lr_latent = _inputs(batch=2)
    with torch.no_grad():
        batched = model(x_t, t, context, lr_latent)
        singles = [model(x_t[i : i + 1], t[i : i + 1], context[i : i + 1], lr_latent[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(batched, torch.cat(singles), rtol=FLOAT32_REL, atol=FLOAT32_REL)


def test_lr_latent_drives_the_output():
    unet, sr_module = _tiny_models()
    model = SFTUNet(unet, sr_module)
    x_t, t, context, lr_latent = _inputs(batch=1)
    with torch.no_grad():
        delta = model(x_t, t, context, lr_latent) - model(x_t, t, context, lr_latent + 1)
    assert delta.abs().max() > 1e-3


def test_gradients_reach_only_the_sr_module():
    unet, sr_module = _tiny_models()
    model = SFTUNet(unet, sr_module.train())
    model(*_inputs()).square().mean().backward()
    assert all(p.grad is None for p in unet.parameters())
    for name, param in sr_module.named_parameters():
        assert param.grad is not None, name
    assert sum(p.grad.abs().sum() for p in sr_module.encoder.parameters()) > 0
    assert all(layer.to_gamma.weight.grad.abs().sum() > 0 for layer in sr_module.sft_layers)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        unet, sr_module = _tiny_models()
        if checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()
        model = SFTUNet(unet, sr_module.train())
        model(*_inputs()).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in sr_module.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=FLOAT32_REL, atol=1e-5)


def test_float64_unet_with_float32_sr_module():
    unet, sr_module = _tiny_models()
    x_t, t, context, lr_latent = _inputs()
    model = SFTUNet(unet, sr_module)
    with torch.no_grad():
        reference = model(x_t, t, context, lr_latent)
        model.unet.to(torch.float64)
        out = model(x_t.double(), t, context.double(), lr_latent)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), reference, rtol=1e-4, atol=1e-4)


def test_missing_width_raises_a_clear_error():
    unet, _ = _tiny_models()
    one_level = StableSRModule.from_unet(unet, cond_channels=32, model_channels=32, num_res_blocks=1, channel_mult=(1,))
    x_t, t, context, lr_latent = _inputs(batch=1)
    with pytest.raises(ValueError, match="no encoder feature of width 6"):
        SFTUNet(unet, one_level)(x_t, t, context, lr_latent)


def test_mismatched_lr_latent_is_refused():
    unet, sr_module = _tiny_models()
    x_t, t, context, _ = _inputs(batch=1)
    with pytest.raises(ValueError, match="lr_latent"):
        SFTUNet(unet, sr_module)(x_t, t, context, torch.randn(1, 4, 8, 8))


def test_sr_module_save_and_load_round_trip(tmp_path):
    _, sr_module = _tiny_models()
    sr_module.save_pretrained(tmp_path)
    loaded = StableSRModule.from_pretrained(tmp_path)
    assert loaded.config.sft_channels == sr_module.config.sft_channels
    assert isinstance(loaded.encoder, torch.nn.Module)
    for key, tensor in sr_module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_two_wrappers_on_one_unet_each_modulate_only_inside_their_own_forward():
    import torch
    from diffusers import UNet2DConditionModel

    from stablesr.models.sft_unet import SFTUNet, StableSRModule

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32,
                                attention_head_dim=(2, 4, 4, 4), use_linear_projection=True, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()
    first = SFTUNet(unet, StableSRModule.from_unet(unet, cond_channels=32, model_channels=32).eval())
    x, lr, ctx, t = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32), torch.tensor([500])
    with torch.no_grad():
        alone = first(x, t, ctx, lr)
        second = SFTUNet(unet, StableSRModule.from_unet(unet, cond_channels=32, model_channels=32).eval())
        assert torch.equal(first(x, t, ctx, lr), alone)
        assert not torch.equal(second(x, t, ctx, lr), alone)
        bare = unet(x, t, encoder_hidden_states=ctx).sample  # outside both forwards: no SFT
        first.remove_hooks()
        second.remove_hooks()
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, bare)


def test_a_shared_lr_latent_equals_the_repeated_one():
    unet, sr_module = _tiny_models()
    model = SFTUNet(unet, sr_module)
    x_t, _, context, lr_latent = _inputs(batch=2)
    x_t = torch.cat([x_t, x_t.flip(0)])  # the guidance batch: k = 2 groups of 2 samples
    t = torch.tensor([999, 10, 999, 10])
    context = torch.cat([context, context.flip(0)])
    with torch.no_grad():
        repeated = model(x_t, t, context, torch.cat([lr_latent, lr_latent]))
        shared = model(x_t, t, context, lr_latent)
    torch.testing.assert_close(shared, repeated, rtol=FLOAT32_REL, atol=FLOAT32_REL)


def test_a_shared_lr_latent_needs_repeating_timesteps():
    unet, sr_module = _tiny_models()
    x_t, _, context, lr_latent = _inputs(batch=2)
    with pytest.raises(ValueError, match="repeat"):
        SFTUNet(unet, sr_module)(torch.cat([x_t, x_t]), torch.tensor([1, 2, 3, 4]), torch.cat([context, context]),
                                 lr_latent)

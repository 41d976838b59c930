"""CCSR v1 control module: zero-initialised identity, 13 residuals for the SD layout, strength, condition encoder."""

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from stablesr.models.controlnet import ConditionEncoder, ControlledUNet, LAControlNet


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32,
                                attention_head_dim=(2, 4, 4, 4), use_linear_projection=True, sample_size=16,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()


def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 32, 64, 64), latent_channels=4, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=64).eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([999, 341]), torch.randn(2, 77, 32, generator=g),
            torch.randn(2, 4, 16, 16, generator=g))


def test_sd_layout_has_13_residuals_and_an_8_channel_input_conv():
    control = LAControlNet.from_unet(tiny_unet())
    assert control.conv_in.weight.shape == (32, 8, 3, 3)
    assert control.skip_channels() == [32, 32, 32, 32, 64, 64, 64, 64, 64, 64, 64, 64]
    assert len(control.zero_convs) + 1 == 13
    assert torch.equal(control.conv_in.weight[:, 4:], torch.zeros(32, 4, 3, 3))


@torch.no_grad()
def test_fresh_control_module_leaves_the_unet_unchanged():
    unet = tiny_unet()
    x_t, t, context, condition = inputs()
    plain = unet(x_t, t, encoder_hidden_states=context).sample
    controlled = ControlledUNet(unet, LAControlNet.from_unet(unet))(x_t, t, context, condition)
    assert torch.equal(controlled, plain)


@torch.no_grad()
def test_residuals_scale_with_strength_and_enter_the_skips():
    unet = tiny_unet()
    control = LAControlNet.from_unet(unet)
    torch.manual_seed(3)
    for p in [*control.zero_convs.parameters(), *control.mid_zero_conv.parameters()]:
        p.normal_(0, 0.05)
    x_t, t, context, condition = inputs()
    down, mid = control(x_t, t, context, condition, strength=1.0)
    down2, mid2 = control(x_t, t, context, condition, strength=0.5)
    assert all(torch.equal(0.5 * a, b) for a, b in zip(down, down2)) and torch.equal(0.5 * mid, mid2)
    expected = unet(x_t, t, encoder_hidden_states=context, down_block_additional_residuals=down2,
                    mid_block_additional_residual=mid2).sample
    out = ControlledUNet(unet, control)(x_t, t, context, condition, strength=0.5)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, unet(x_t, t, encoder_hidden_states=context).sample)
    assert torch.equal(ControlledUNet(unet, control)(x_t, t, context, condition, strength=0.0),
                       unet(x_t, t, encoder_hidden_states=context).sample)


@torch.no_grad()
def test_condition_encoder_is_the_vae_encoder_posterior_mode_times_scaling():
    vae = tiny_vae()
    encoder = ConditionEncoder.from_vae(vae)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = vae.encode(image).latent_dist.mean * vae.config.scaling_factor
    assert torch.equal(encoder.condition_latent(image), expected)


def test_save_load_round_trip(tmp_path):
    unet, vae = tiny_unet(), tiny_vae()
    control, encoder = LAControlNet.from_unet(unet), ConditionEncoder.from_vae(vae)
    control.save_pretrained(tmp_path / "c")
    encoder.save_pretrained(tmp_path / "e")
    loaded_c = LAControlNet.from_pretrained(tmp_path / "c")
    loaded_e = ConditionEncoder.from_pretrained(tmp_path / "e")
    for a, b in ((control, loaded_c), (encoder, loaded_e)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def test_v2_latent_controlnet_starts_as_the_unet_and_its_condition_conv_acts():
    from stablesr.models.controlnet import LatentControlNet

    unet = tiny_unet()
    control = LatentControlNet.from_unet(unet)
    x_t, t, context, condition = inputs()
    plain = unet(x_t, t, encoder_hidden_states=context).sample
    assert torch.equal(ControlledUNet(unet, control)(x_t, t, context, condition), plain)
    conv = control.controlnet.controlnet_cond_embedding
    assert conv.weight.shape == (32, 4, 3, 3)
    torch.manual_seed(4)
    for p in [*control.controlnet.controlnet_down_blocks.parameters(), *conv.parameters()]:
        p.normal_(0, 0.05)
    down, mid = control(x_t, t, context, condition)
    down0, _ = control(x_t, t, context, torch.zeros_like(condition))
    assert len(down) == 12 and not torch.equal(down[0], down0[0])  # the LR latent enters through the conv
    with_half = control(x_t, t, context, condition, strength=0.5)
    assert torch.equal(with_half[1], mid * 0.5)

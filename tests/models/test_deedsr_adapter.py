"""DeeDSR's adapter: DA identities, zero-initialised modulation leaves the UNet unchanged, the degradation
vector steers the features, and gradients reach the adapter and the cross-attention key/value projections."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from stablesr.models.deedsr_adapter import (
    DABlock,
    DAConv,
    DeeDSRModule,
    DeeDSRUNet,
    ModulationLayer,
    cross_attention_projections,
)
from stablesr.models.degradation_learner import DegradationLearner
from stablesr.models.sft_unet import resnets_in_order

TINY_UNET = dict(sample_size=8, block_out_channels=[32, 64], layers_per_block=1,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=[2, 4],
                 cross_attention_dim=16, use_linear_projection=True)
TINY_ADAPTER = dict(cond_channels=32, hidden_channels=8, model_channels=32, channel_mult=(1, 2), num_heads=2)
TINY_LEARNER = dict(block="basic", layers=(1, 1), widths=(8, 16), stem_channels=8)


def make_tiny():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    adapter = DeeDSRModule.from_unet(unet, vector_dim=16, **TINY_ADAPTER)
    return unet, adapter, DegradationLearner(**TINY_LEARNER).eval()


def test_da_conv_with_zero_predictors_is_the_identity():
    torch.manual_seed(0)
    da = DAConv(8)
    for layer in (da.kernel[-1], da.attention[-1], da.pointwise):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(da(x, torch.randn(2, 8)), x)


def test_da_block_is_residual_and_depends_on_the_vector():
    torch.manual_seed(0)
    block = DABlock(8, vector_dim=4)
    x = torch.randn(2, 8, 6, 6)
    d = torch.randn(2, 4)
    assert not torch.allclose(block(x, d), block(x, d.flip(0)))
    torch.nn.init.zeros_(block.conv_out.weight)
    torch.nn.init.zeros_(block.conv_out.bias)
    assert torch.equal(block(x, d), x)
    # per-sample kernels: sample 0 alone gives the same result as in a batch
    first = block.da_conv1(x[:1], d[:1, :1].expand(1, 8))
    assert torch.allclose(first, block.da_conv1(x, d[:, :1].expand(2, 8))[:1], rtol=1e-4, atol=1e-6)


def test_fresh_modulation_returns_h_exactly():
    torch.manual_seed(0)
    h = torch.randn(2, 6, 4, 4)
    assert torch.equal(ModulationLayer(6, cond_channels=3, hidden_channels=5)(h, torch.randn(2, 3, 4, 4)), h)


def test_zero_initialised_modulation_leaves_the_unet_output_unchanged():
    unet, adapter, learner = make_tiny()
    assert len(adapter.modulation_layers) == len(resnets_in_order(unet)) == 8  # 2 down, 2 middle, 4 up (SD 2.x: 22)
    wrapped = DeeDSRUNet(unet, adapter, learner)
    x_t, lr_latent = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([999, 10])
    d = wrapped.degradation_vector(torch.rand(2, 3, 16, 16))
    with torch.no_grad():
        modulated = wrapped(x_t, t, lr_latent, d)
        _, tokens = adapter(lr_latent, t, d)
        wrapped.remove_hooks()
        plain = unet(x_t, t, encoder_hidden_states=tokens).sample
    assert tokens.shape == (2, 16, 16)  # (B, 4x4 middle positions, cross_attention_dim)
    assert torch.equal(modulated, plain)


def test_tokens_replace_the_text_and_the_vector_steers_the_output():
    unet, adapter, learner = make_tiny()
    for layer in adapter.modulation_layers:
        torch.nn.init.normal_(layer.to_gamma.weight, std=0.02)
    wrapped = DeeDSRUNet(unet, adapter, learner)
    x_t, lr_latent, t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        a = wrapped(x_t, t, lr_latent, torch.randn(1, 16))
        b = wrapped(x_t, t, lr_latent, torch.randn(1, 16))
    assert (a - b).abs().max() > 1e-4


def test_gradients_reach_the_adapter_and_the_key_value_projections_only():
    unet, adapter, learner = make_tiny()
    unet.requires_grad_(False)
    learner.requires_grad_(False)
    projections = cross_attention_projections(unet)
    assert len(projections) == 2 * 4  # to_k, to_v (weights, no bias) of 4 transformer blocks (1 down, 1 mid, 2 up)
    for p in projections:
        p.requires_grad_(True)
    wrapped = DeeDSRUNet(unet, adapter, learner)
    d = wrapped.degradation_vector(torch.rand(2, 3, 16, 16))
    out = wrapped(torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 4, 8, 8), d)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projections)
    assert adapter.modulation_layers[0].to_gamma.weight.grad.abs().sum() > 0  # zero init still learns
    assert adapter.to_tokens.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in learner.parameters())


def test_an_adapter_with_fewer_levels_than_the_unet_is_one_clear_error():
    unet, _, learner = make_tiny()
    adapter = DeeDSRModule.from_unet(unet, vector_dim=16, **{**TINY_ADAPTER, "channel_mult": (1,)})
    wrapped = DeeDSRUNet(unet, adapter, learner)
    with torch.no_grad(), pytest.raises(ValueError, match="no adapter feature of width 4"):
        wrapped(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.randn(1, 4, 8, 8), torch.randn(1, 16))


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        unet, adapter, learner = make_tiny()
        for layer in adapter.modulation_layers:
            torch.nn.init.normal_(layer.to_gamma.weight, std=0.02)
        unet.requires_grad_(False)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        wrapped = DeeDSRUNet(unet, adapter, learner)
        generator = torch.Generator().manual_seed(0)
        x_t, lr_latent = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
        out = wrapped(x_t, torch.tensor([3, 700]), lr_latent, torch.randn(2, 16, generator=generator))
        out.square().mean().backward()
        grads.append(adapter.modulation_layers[0].shared[0].weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    assert grads[0].abs().sum() > 0

"""CFWAutoencoderKL: exact identities with the plain diffusers AutoencoderKL, the fusion maths, sizes, saving."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from conftest import FLOAT32_REL
from stablesr.errors import CheckpointMismatchError
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL, FusionBlock

TINY = dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64)


def tiny_cfw(seed: int = 0) -> CFWAutoencoderKL:
    torch.manual_seed(seed)
    model = CFWAutoencoderKL(**TINY, num_fuse_blocks=1, fuse_growth_channels=8).eval()
    with torch.no_grad():  # the RRDB/conv biases start at zero: give every parameter some value
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def model() -> CFWAutoencoderKL:
    return tiny_cfw()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1


@torch.no_grad()
def test_encode_with_features_equals_plain_encode(model, image):
    posterior, enc_feats = model.encode_with_features(image)
    plain = model.encode(image).latent_dist
    assert torch.equal(posterior.parameters, plain.parameters)
    assert [tuple(f.shape) for f in enc_feats] == [(2, 16, 16, 24), (2, 32, 8, 12)]
    for feat, early in zip(enc_feats, model.extract_enc_feats(image)):
        assert torch.equal(feat, early)


@torch.no_grad()
def test_fidelity_zero_or_no_features_is_the_plain_decoder(model, image):
    posterior, enc_feats = model.encode_with_features(image)
    z = posterior.mean
    plain = model.decode(z).sample
    assert plain.shape == (2, 3, 32, 48)
    assert torch.equal(model.decode_with_features(z, enc_feats, fidelity=0.0), plain)
    assert torch.equal(model.decode_with_features(z, None, fidelity=1.0), plain)
    assert not torch.allclose(model.decode_with_features(z, enc_feats, fidelity=1.0), plain, atol=1e-3)


@torch.no_grad()
def test_fusion_path_with_identity_fusion_equals_plain_decoder(image):
    """With fusion blocks that return dec exactly (fidelity multiplies a zero), the manual up-level traversal
    must reproduce diffusers' Decoder.forward bit for bit."""
    model = tiny_cfw()
    for block in (model.fusion_layer_1, model.fusion_layer_2):
        block.forward = lambda enc_feat, dec_feat, *, fidelity: dec_feat
    posterior, enc_feats = model.encode_with_features(image)
    assert torch.equal(model.decode_with_features(posterior.mean, enc_feats, fidelity=1.0),
                       model.decode(posterior.mean).sample)


def reference_resblock(block, x):
    """GN(eps 1e-6) + SiLU + conv3x3, twice, plus the (1x1) skip: the official ResBlock written with F ops."""
    h = F.conv2d(F.silu(F.group_norm(x, 8, block.norm1.weight, block.norm1.bias, 1e-6)),
                 block.conv1.weight, block.conv1.bias, padding=1)
    h = F.conv2d(F.silu(F.group_norm(h, 8, block.norm2.weight, block.norm2.bias, 1e-6)),
                 block.conv2.weight, block.conv2.bias, padding=1)
    skip = x if block.conv_shortcut is None else F.conv2d(x, block.conv_shortcut.weight, block.conv_shortcut.bias)
    return skip + h


@torch.no_grad()
def test_fusion_block_matches_the_official_formula():
    torch.manual_seed(3)
    block = FusionBlock(16, num_blocks=2, growth_channels=8, norm_num_groups=8).eval()
    enc_feat, dec_feat = torch.randn(1, 16, 10, 12), torch.randn(1, 16, 10, 12)
    fused = reference_resblock(block.in_block, torch.cat([enc_feat, dec_feat], dim=1))
    fused = reference_resblock(block.out_block, block.rrdb_blocks[1](block.rrdb_blocks[0](fused)))
    for fidelity in (0.0, 0.5, 1.0):
        out = block(enc_feat, dec_feat, fidelity=fidelity)
        torch.testing.assert_close(out, dec_feat + fidelity * fused, rtol=FLOAT32_REL, atol=FLOAT32_REL)
    assert torch.equal(block(enc_feat, dec_feat, fidelity=0.0), dec_feat)


def test_full_size_fusion_parameter_counts():
    with torch.device("meta"):
        model = CFWAutoencoderKL()  # SD 2.1 VAE: block_out_channels (128, 256, 512, 512)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.fusion_layer_1) == 10_496_000
    assert count(model.fusion_layer_2) == 33_897_728
    assert count(model) - count(model.fusion_layer_1) - count(model.fusion_layer_2) == 83_653_863  # SD VAE


@torch.no_grad()
def test_save_pretrained_round_trip(model, image, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = CFWAutoencoderKL.from_pretrained(tmp_path).eval()
    assert loaded.config.num_fuse_blocks == 1 and loaded.config.fuse_growth_channels == 8
    assert loaded.config.scaling_factor == 0.18215
    posterior, enc_feats = model.encode_with_features(image)
    expected = model.decode_with_features(posterior.mean, enc_feats, fidelity=0.5)
    assert torch.equal(loaded.decode_with_features(posterior.mean, enc_feats, fidelity=0.5), expected)


@torch.no_grad()
def test_load_plain_vae_state_keeps_fusion_init(image):
    torch.manual_seed(5)
    plain = AutoencoderKL(**TINY, down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4)
    model = tiny_cfw(seed=7)
    fusion_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fusion_layer_")}
    model.load_vae_state_dict(plain.state_dict())
    z = torch.randn(1, 4, 4, 6)
    assert torch.equal(model.decode(z).sample, plain.decode(z).sample)
    for key, value in fusion_before.items():
        assert torch.equal(model.state_dict()[key], value)
    broken = dict(plain.state_dict())
    del broken["decoder.conv_out.bias"]
    with pytest.raises(CheckpointMismatchError, match="decoder.conv_out.bias"):
        model.load_vae_state_dict(broken)


def test_bad_enc_feats_raise(model):
    with pytest.raises(ValueError, match="enc_feats"):
        model.decode_with_features(torch.zeros(1, 4, 4, 4), [torch.zeros(1, 16, 16, 16)], fidelity=0.5)

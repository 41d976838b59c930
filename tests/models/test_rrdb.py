"""The residual dense block: the inference path (one dense buffer) equals the autograd path (concatenations)."""

import torch

from stablesr.models.rrdb import RRDB, ResidualDenseBlock


def test_dense_buffer_path_is_bitwise_the_concatenation_path():
    torch.manual_seed(0)
    for module, channels in ((ResidualDenseBlock(24, 8), 24), (RRDB(16, 8), 16)):
        for layer in module.modules():  # larger weights than the 0.1-scaled init, so every conv matters
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.normal_(layer.weight, std=0.2)
        x = torch.randn(2, channels, 9, 11)
        with torch.no_grad():
            buffered = module(x)
        with torch.enable_grad():
            concatenated = module(x.requires_grad_())
            concatenated.sum().backward()  # the training path still differentiates
        assert torch.equal(buffered, concatenated.detach())
        assert (buffered - x).abs().mean() > 0.01 and x.grad is not None

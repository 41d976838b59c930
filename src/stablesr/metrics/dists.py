"""DISTS: Deep Image Structure and Texture Similarity, a full-reference distance (lower is closer).

Ding, Ma, Wang & Simoncelli, "Image Quality Assessment: Unifying Structure and Texture Similarity",
IEEE TPAMI 2020, https://arxiv.org/abs/2004.07728

    x in [0, 1] -> (x - ImageNet mean) / std -> VGG16 with every max-pool replaced by an L2 pool
    taps f_k, k = 0..5: the input itself (3 channels), relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    per channel:  structure l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)
                  texture   s = (2 cov_xy + c2) / (var_x + var_y + c2),   c1 = c2 = 1e-6
    DISTS = 1 - sum_{k, channels} (alpha * l + beta * s) / (sum alpha + sum beta)

L2 pool: sqrt(Hann-3x3 blur of x^2 with stride 2, padding 1, + 1e-12); the 3x3 window is the outer
product of the inner taps of a 5-point Hann window, [0.5, 1, 0.5], normalised to sum 1.
The VGG16 convolutions are torchvision's `vgg16-397923af.pth` (read from a path you give or from
`$TORCH_HOME/hub/checkpoints/`, never downloaded); alpha and beta (1475 each) ship in
`data/dists_alpha_beta.safetensors` (MIT, from the `DISTS_pytorch` wheel; see `data/README.md`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stablesr.metrics.lpips import find_backbone_file, vgg16_features

TAP_CHANNELS = (3, 64, 128, 256, 512, 512)
# torchvision VGG16 `features` slices between the max-pools (indices 4, 9, 16, 23 are the pools)
STAGE_SLICES = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
_WEIGHTS_FILE = Path(__file__).parent / "data" / "dists_alpha_beta.safetensors"
_C1 = _C2 = 1e-6


class L2Pool(nn.Module):
    """Anti-aliased pooling: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)), sqrt of a Hann-blurred x^2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([0.5, 1.0, 0.5])
        window = torch.outer(taps, taps)
        self.register_buffer("window", (window / window.sum()).expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x * x, self.window, stride=2, padding=1, groups=x.shape[1])
        return torch.sqrt(blurred + 1e-12)


class DISTS(nn.Module):
    """DISTS distance. forward(x, y): two (B, 3, H, W) images in [0, 1] -> (B,) distances."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.pools = nn.ModuleList(L2Pool(c) for c in (64, 128, 256, 512))
        self.register_buffer("alpha", torch.full((1, sum(TAP_CHANNELS), 1, 1), 0.1))
        self.register_buffer("beta", torch.full((1, sum(TAP_CHANNELS), 1, 1), 0.1))
        self.register_buffer("mean", _MEAN.clone(), persistent=False)
        self.register_buffer("std", _STD.clone(), persistent=False)

    @classmethod
    def from_files(cls, *, backbone_path: str | Path | None = None) -> DISTS:
        """Bundled alpha / beta + the local torchvision VGG16 file (see `lpips.find_backbone_file`)."""
        from safetensors.torch import load_file

        model = cls()
        path = find_backbone_file("vgg", backbone_path, metric="DISTS")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        weights = load_file(_WEIGHTS_FILE)
        model.alpha.copy_(weights["alpha"])
        model.beta.copy_(weights["beta"])
        return model.eval().requires_grad_(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input and the five stage outputs (ReLU after the last conv of each stage)."""
        outputs, h = [x], (x - self.mean) / self.std
        for stage, (start, stop) in enumerate(STAGE_SLICES):
            if stage > 0:
                h = self.pools[stage - 1](h)
            h = self.features[start:stop](h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / weight_sum, TAP_CHANNELS, dim=1)
        betas = torch.split(self.beta / weight_sum, TAP_CHANNELS, dim=1)
        similarity = 0
        for alpha, beta, tap_x, tap_y in zip(alphas, betas, self.taps(x), self.taps(y)):
            mean_x, mean_y = tap_x.mean(dim=(2, 3), keepdim=True), tap_y.mean(dim=(2, 3), keepdim=True)
            var_x = ((tap_x - mean_x) ** 2).mean(dim=(2, 3), keepdim=True)
            var_y = ((tap_y - mean_y) ** 2).mean(dim=(2, 3), keepdim=True)
            cov_xy = (tap_x * tap_y).mean(dim=(2, 3), keepdim=True) - mean_x * mean_y
            structure = (2 * mean_x * mean_y + _C1) / (mean_x**2 + mean_y**2 + _C1)
            texture = (2 * cov_xy + _C2) / (var_x + var_y + _C2)
            similarity = similarity + (alpha * structure + beta * texture).sum(dim=(1, 2, 3))  # (B, C, 1, 1) -> (B,)
        return 1 - similarity

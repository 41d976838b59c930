"""FID: Fréchet Inception Distance between two image sets (lower is closer), in the pytorch-fid layout.

Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium", NeurIPS 2017, https://arxiv.org/abs/1706.08500

    x in [0, 1] -> bilinear resize to 299 x 299 (align_corners=False) -> 2x - 1
    -> InceptionV3 as in TensorFlow's 2015-12-05 graph -> global average pool ("pool3") -> (B, 2048)
    mu, Sigma = mean and covariance (float64, unbiased) of the features of each set
    FID = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2))

The network is the torchvision InceptionV3 layout with the four differences of the TensorFlow graph
that the standard FID weights (`pt_inception-2015-12-05-6726825d.pth`, 1008 classes) were ported from:
the average pools of the A, C and first E blocks exclude the padding from the mean, and the last E
block pools its fourth branch with a max pool. The file is read from a path you give,
`$TORCH_HOME/hub/checkpoints/` (pytorch-fid's cache) or `$TORCH_HOME/hub/pyiqa/` (pyiqa's), and never
downloaded. Features are taken without border crop; pyiqa's default "clean" mode resizes with PIL
bicubic instead and gives slightly different numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from stablesr.errors import CheckpointMismatchError
from stablesr.weights.cache import find_weights

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
INPUT_SIZE = 299


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU; keys `conv.*`, `bn.*` as in the weight file."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def avg_pool_without_padding(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool whose border windows average only the pixels inside the image."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """Mixed_5b..5d: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1 (256 + pool_features - 32 out)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool_without_padding(x)),
        ], dim=1)


class BlockB(nn.Module):
    """Mixed_6a, grid reduction 35 -> 17: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool/2 (768 out)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class BlockC(nn.Module):
    """Mixed_6b..6e: 1x1 | factorised 7x7 | two factorised 7x7 | avg pool -> 1x1 (768 out)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(avg_pool_without_padding(x)),
        ], dim=1)


class BlockD(nn.Module):
    """Mixed_7a, grid reduction 17 -> 8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool/2 (1280 out)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            seven = layer(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], dim=1)


class BlockE(nn.Module):
    """Mixed_7b / 7c: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1 (2048 out).

    `pool="avg"` (Mixed_7b) averages without padding; `pool="max"` (Mixed_7c) is the TF graph's max pool.
    """

    def __init__(self, in_channels: int, *, pool: Literal["avg", "max"]) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else avg_pool_without_padding(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], dim=1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to pool3. forward: (B, 3, H, W) in [0, 1], any size -> (B, 2048) features."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, pool="avg"), BlockE(2048, pool="max")

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> FIDInceptionV3:
        """The FID Inception weights (see `find_weights_file`); the 1008-class `fc` head is not needed."""
        model = cls()
        state = torch.load(find_weights_file(path), map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointMismatchError(f"{WEIGHTS_FILE} does not match the FID InceptionV3: missing "
                                          f"{missing[:3]}, unexpected {unexpected[:3]}")
        return model.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False) * 2 - 1
        h = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(h)))  # (B, 64, 147, 147)
        h = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(h, 3, stride=2)))  # (B, 192, 71, 71)
        h = F.max_pool2d(h, 3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            h = block(h)  # ... -> (B, 2048, 8, 8)
        return h.mean(dim=(2, 3))  # (B, 2048, 8, 8) -> (B, 2048)


def find_weights_file(path: str | Path | None = None) -> Path:
    """`path` (the file or a folder holding it), else the pytorch-fid or pyiqa hub cache (weights/cache.py)."""
    return find_weights(WEIGHTS_FILE, path, cache=("checkpoints", "pyiqa"),
                        needed_by="FID needs the Inception weights (pytorch-fid's release file)")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features, N >= 2 -> mean (D,) and unbiased covariance (D, D), both float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray,
                     *, eps: float = 1e-6) -> float:
    """||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 sqrtm(Sigma_1 Sigma_2)), in float64.

    When sqrtm is not finite (singular product) eps * I is added to both covariances, as pytorch-fid
    does; an imaginary part above 1e-3 on the diagonal is an error, smaller ones are numerical noise.
    Example: mu_1 = 0, mu_2 = 1 (D = 1), Sigma_1 = 1, Sigma_2 = 4 -> 1 + 1 + 4 - 2 * 2 = 2.
    """
    mu_1, mu_2 = np.atleast_1d(np.float64(mu_1)), np.atleast_1d(np.float64(mu_2))
    sigma_1, sigma_2 = np.atleast_2d(np.float64(sigma_1)), np.atleast_2d(np.float64(sigma_2))
    difference = mu_1 - mu_2
    covariance_mean = linalg.sqrtm(sigma_1 @ sigma_2)
    if not np.isfinite(covariance_mean).all():
        offset = np.eye(sigma_1.shape[0]) * eps
        covariance_mean = linalg.sqrtm((sigma_1 + offset) @ (sigma_2 + offset))
    if np.iscomplexobj(covariance_mean):
        if not np.allclose(np.diagonal(covariance_mean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary part {np.max(np.abs(covariance_mean.imag)):.3g}")
        covariance_mean = covariance_mean.real
    return float(difference @ difference + np.trace(sigma_1) + np.trace(sigma_2) - 2 * np.trace(covariance_mean))


def fid_from_features(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(features_1), *feature_statistics(features_2))


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: list[np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 images (sizes may differ, so one at a time) -> (N, 2048) float64 pool3 features."""
    features, device = [], next(model.parameters()).device
    for image in images:
        # (H, W, 3) uint8 -> (1, 3, H, W) in [0, 1]
        features.append(model(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(device).float() / 255))
    return torch.cat(features).double().cpu().numpy() if features else np.zeros((0, FEATURE_DIM))

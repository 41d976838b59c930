"""LPIPS (v0.1, AlexNet or VGG16): learned perceptual distance between two images (lower is closer).

Zhang, Isola, Efros, Shechtman & Wang, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018, https://arxiv.org/abs/1801.03924

    x in [-1, 1] -> (x - shift) / scale -> backbone taps f_l (relu1 .. relu5)
    f_l / (||f_l||_channels + 1e-10) -> squared difference -> 1x1 conv w_l (no bias) -> spatial mean
    LPIPS = sum_l of those means

The backbones are written here in torchvision's `features` layout so the standard ImageNet files
(`alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth`) load as they are; they are read from a path you
give or from `$TORCH_HOME/hub/checkpoints/` and never downloaded. The linear heads ship in
`data/lpips_v0.1_heads.safetensors` (BSD-2-Clause, from the `lpips` wheel; see `data/README.md`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from stablesr.weights.cache import find_weights

Backbone = Literal["alex", "vgg"]

BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# torchvision `features` index after which each LPIPS tap is taken (the ReLU outputs)
TAP_INDICES = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
TAP_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
_HEADS_FILE = Path(__file__).parent / "data" / "lpips_v0.1_heads.safetensors"


def alexnet_features() -> nn.Sequential:
    """torchvision AlexNet `features` (indices 0..12): 5 convs with ReLUs and 3 max-pools."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )


def vgg16_features() -> nn.Sequential:
    """torchvision VGG16 `features` (indices 0..30): 13 3x3 convs with ReLUs, a max-pool after each stage."""
    layers: list[nn.Module] = []
    in_channels = 3
    for stage_channels, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            layers += [nn.Conv2d(in_channels, stage_channels, 3, padding=1), nn.ReLU()]
            in_channels = stage_channels
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def find_backbone_file(backbone: Backbone, path: str | Path | None, *, metric: str | None = None) -> Path:
    """The ImageNet backbone file: `path` (a file or a folder holding it) or the hub cache (weights/cache.py).

    `metric` names the caller in the error (default 'LPIPS-alex' / 'LPIPS-vgg').
    """
    return find_weights(BACKBONE_FILES[backbone], path, cache="checkpoints",
                        needed_by=f"{metric or 'LPIPS-' + backbone} needs torchvision's ImageNet weights")


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. forward(x, y): two (B, 3, H, W) images in [-1, 1] -> (B,) distances."""

    def __init__(self, backbone: Backbone = "alex") -> None:
        super().__init__()
        self.backbone_name = backbone
        self.features = alexnet_features() if backbone == "alex" else vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS[backbone])
        self.register_buffer("shift", _SHIFT.clone(), persistent=False)
        self.register_buffer("scale", _SCALE.clone(), persistent=False)

    @classmethod
    def from_files(cls, backbone: Backbone = "alex", *, backbone_path: str | Path | None = None) -> LPIPS:
        """Bundled v0.1 heads + the local torchvision backbone file (see `find_backbone_file`)."""
        from safetensors.torch import load_file

        model = cls(backbone)
        state = torch.load(find_backbone_file(backbone, backbone_path), map_location="cpu", weights_only=True)
        model.features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        heads = load_file(_HEADS_FILE)
        for index, head in enumerate(model.heads):
            head.weight.data.copy_(heads[f"{backbone}.lin{index}.model.1.weight"])
        return model.eval().requires_grad_(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised ReLU outputs at the five LPIPS layers."""
        outputs, h = [], (x - self.shift) / self.scale
        for index, layer in enumerate(self.features[: TAP_INDICES[self.backbone_name][-1] + 1]):
            h = layer(h)
            if index in TAP_INDICES[self.backbone_name]:
                outputs.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = 0
        for head, tap_x, tap_y in zip(self.heads, self.taps(x), self.taps(y)):
            distance = distance + head((tap_x - tap_y) ** 2).mean(dim=(1, 2, 3))  # (B, 1, h, w) -> (B,)
        return distance

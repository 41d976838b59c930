"""RRDBNet, the generator of ESRGAN / Real-ESRGAN x4plus, used as a baseline and for pre-cleaning.

Papers: ESRGAN (Wang et al. 2018, https://arxiv.org/abs/1809.00219) and Real-ESRGAN (Wang et al.
2021, https://arxiv.org/abs/2107.10833). StableSR appendix C (https://arxiv.org/abs/2305.07015)
pre-cleans heavily degraded inputs with it.

Layout (attribute names match the published `RealESRGAN_x4plus.pth`, so its keys load unchanged):

    conv_first -> body (num_blocks x RRDB) -> conv_body, + skip from conv_first
    -> [nearest x2 -> conv_up1 -> lrelu] -> [nearest x2 -> conv_up2 -> lrelu]
    -> conv_hr -> lrelu -> conv_last
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stablesr.models.rrdb import RRDB

LEAKY_SLOPE = 0.2


class RRDBNet(nn.Module):
    """Residual-in-residual dense network with two nearest-neighbour x2 upsampling stages.

    The x4plus architecture is the default: 23 RRDB blocks, 64 features, growth 32.
    Shapes: x (B, in_channels, H, W) in [0, 1] -> (B, out_channels, 4H, 4W), not clamped.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        num_features: int = 64,
        num_blocks: int = 23,
        growth_channels: int = 32,
        scale: Literal[4] = 4,
    ) -> None:
        super().__init__()
        if scale != 4:
            raise ValueError(f"RRDBNet supports scale 4 only (the x4plus architecture), got {scale}")
        self.scale = scale
        self.num_blocks = num_blocks
        f = num_features
        self.conv_first = nn.Conv2d(in_channels, f, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(f, growth_channels) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        self.conv_up1 = nn.Conv2d(f, f, 3, padding=1)
        self.conv_up2 = nn.Conv2d(f, f, 3, padding=1)
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, 4H, 4W)."""
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for conv in (self.conv_up1, self.conv_up2):
            # (B, F, h, w) -> (B, F, 2h, 2w)
            features = F.interpolate(features, scale_factor=2, mode="nearest")
            features = F.leaky_relu(conv(features), LEAKY_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), LEAKY_SLOPE))

    def receptive_radius(self) -> int:
        """Input pixels on each side that can influence one output pixel (for exact tiling).

        Every conv is 3x3: each LR conv adds 1 px, conv_up1 (at 2x) adds 1/2 px, and conv_up2,
        conv_hr and conv_last (at 4x) add 3/4 px between them; rounded up.
        """
        lr_convs = 2 + 15 * self.num_blocks  # conv_first, 5 convs x 3 RDBs per block, conv_body
        return lr_convs + 2  # + ceil(1/2 + 3/4)

    def conv_layers(self) -> list[tuple[str, nn.Conv2d, bool]]:
        """Every conv in execution order as (state-dict prefix, layer, followed by LeakyReLU 0.2).

        This is the order in which exported graphs (ONNX, ncnn) list the convolutions.
        """
        layers = [("conv_first", self.conv_first, False)]
        for block_index in range(self.num_blocks):
            for rdb_index in (1, 2, 3):
                for conv_index in range(1, 6):
                    prefix = f"body.{block_index}.rdb{rdb_index}.conv{conv_index}"
                    layers.append((prefix, self.get_submodule(prefix), conv_index < 5))
        layers.append(("conv_body", self.conv_body, False))
        layers += [(name, getattr(self, name), True) for name in ("conv_up1", "conv_up2", "conv_hr")]
        layers.append(("conv_last", self.conv_last, False))
        return layers

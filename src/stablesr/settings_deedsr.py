"""DeeDSR's upscale settings (https://arxiv.org/abs/2404.00661): one frozen class, flags generated from it.

Standard library only, like `configs.py`, so `stablesr upscale --help` needs no torch. The sizes and
tiling fields share their names and flags with `UpscaleSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from stablesr.configs import STREAM_WEIGHTS_HELP, ColorFix, TiledSettings, setting


def _positive(value) -> bool:
    return value > 0


@dataclass(frozen=True)
class DeeDSRSettings(TiledSettings):
    """DeeDSR's knobs: DDIM 50 steps with eta 1 from pure noise, noise guidance at the first step (the released
    test path), then the shared tiled VAE and latent aggregation. No prompt: the adapter's tokens are the context."""

    upscale: float = setting(4.0, "upscaling factor", flag="--scale", check=_positive, rule="must be > 0")
    num_inference_steps: int = setting(50, "DDIM steps (the paper: 50)", flag="--steps", check=_positive,
                                       rule="must be >= 1")
    eta: float = setting(1.0, "DDIM eta (the released test path: 1)", check=lambda v: v >= 0, rule="must be >= 0")
    guided_steps: int = setting(1, "DeeDSR: leading DDIM steps whose noise estimate comes from the LR latent "
                                   "(noise guidance, eq. 11; default 1, the first step from noise)",
                                check=lambda v: v >= 0, rule="must be >= 0")
    color_fix: ColorFix = setting("adain", "colour correction against the input (the released code: adain)")
    tile_size: int = setting(64, "latent tile size of aggregation sampling (64 = 512 px)", group="tiles and memory",
                             check=lambda v: v >= 1, rule="must be >= 1")
    tile_overlap: int = setting(32, "latent tile overlap, < tile size", group="tiles and memory",
                                check=lambda v: v >= 0, rule="must be >= 0")
    tile_batch_size: int = setting(4, "latent tiles per UNet call", group="tiles and memory",
                                   check=lambda v: v >= 1, rule="must be >= 1")
    vae_tile_size: int = setting(1024, "VAE tile size in pixels (a multiple of 8, >= 64)", group="tiles and memory",
                                 check=lambda v: v >= 64 and v % 8 == 0, rule="must be a multiple of 8 and >= 64")
    min_size: int | None = setting(None, "bicubic-upscale the input at least to this short side in pixels "
                                         "(default: one latent tile, tile size x 8)", group="tiles and memory",
                                   check=_positive, rule="must be >= 1")
    stream_weights: bool = setting(False, STREAM_WEIGHTS_HELP, group="tiles and memory")

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def check_together(self) -> None:
        super().check_together()
        if self.guided_steps > self.num_inference_steps:
            self.fail("guided_steps", f"must be <= the number of steps {self.num_inference_steps} (--steps)")

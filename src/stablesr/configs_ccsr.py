"""CCSR's frozen settings class (Sun et al. 2024, https://arxiv.org/abs/2401.00877); standard library only.

Defaults follow the official v1 scripts (`inference_ccsr_tile.py`): 45 respaced steps, t_max 0.6667,
t_min 0.3333 (16 model evaluations), control strength 1, AdaIN colour fix, tiles of 512 px with a
256 px stride, the short side brought up to 512 px. A converted v2 model folder carries its own
defaults (`upscale_defaults.json`: the one-step recipe); the presets give the README's two v2 recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from stablesr.configs import STREAM_WEIGHTS_HELP, ColorFix, Start, TiledSettings, setting

V2_PROMPT = "clean, high-resolution, 8k"  # test_ccsr_tile.py --added_prompt
V2_NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"


def _positive(value) -> bool:
    return value > 0


@dataclass(frozen=True)
class CCSRSettings(TiledSettings):
    """Every knob of a CCSR upscale (see the module docstring for the defaults' source)."""

    upscale: float = setting(4.0, "upscaling factor", flag="--scale", check=_positive, rule="must be > 0")
    num_inference_steps: int = setting(45, "respaced steps N of the truncated schedule (CCSR v1: 45 -> 16 model "
                                           "evaluations)", flag="--steps", check=_positive, rule="must be >= 1")
    t_max: float = setting(0.6667, "where the truncated chain starts after the x0 jump, a fraction of N",
                           check=lambda v: 0 < v < 1, rule="must be in (0, 1)")
    t_min: float = setting(0.3333, "where it stops and outputs the x0 prediction, a fraction of N",
                           check=lambda v: 0 <= v < 1, rule="must be in [0, 1)")
    control_strength: float = setting(1.0, "scale of the 13 control residuals", check=lambda v: v >= 0,
                                      rule="must be >= 0")
    color_fix: ColorFix = setting("adain", "colour correction against the input (the official default: adain)")
    tile_size: int = setting(64, "latent tile size of Gaussian-weighted tiled sampling (64 = 512 px)",
                             group="tiles and memory", check=lambda v: v >= 1, rule="must be >= 1")
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

    start: Start | None = setting(None, "v2: x_T from the noised LR latent (default, as the official script) or "
                                        "pure noise; v1 always starts from noise")
    guidance_scale: float = setting(1.0, "v2 classifier-free guidance scale (1 = off; the multi-step recipe: 4.5)",
                                    check=lambda v: v >= 0, rule="must be >= 0")
    prompt: str | None = setting(None, f"v2 prompt (default: {V2_PROMPT!r}; v1 uses the empty prompt)")
    negative_prompt: str | None = setting(None, f"v2 negative prompt for guidance (default: {V2_NEGATIVE_PROMPT!r})")

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"num_inference_steps": 15},  # v1: 6 model evaluations (t = 999, 642, 571, 500, 428, 357)
        "v2-one-step": {"num_inference_steps": 1, "t_max": 0.6666, "t_min": 0.0, "guidance_scale": 1.0},
        "v2-multi-step": {"num_inference_steps": 6, "t_max": 0.6667, "t_min": 0.5, "guidance_scale": 4.5},
    }

    def check_together(self) -> None:
        super().check_together()
        if self.t_min >= self.t_max:
            self.fail("t_min", f"must be < t_max {self.t_max} (--t-max)")

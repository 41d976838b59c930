"""A new method is one settings class + one pipeline file that reuse the shared core (docs/adding-a-method.md).

The toy method here: nearest-neighbour x`scale`, run in tiles blended by the shared tiler. It gets
validation with flag-naming errors, generated CLI flags, presets, per-model defaults, the [0, 1]
image API (PIL / tensor / numpy, same kind out) and tiling without code of its own for any of them.
"""

import argparse
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stablesr.cli.settings_flags import add_settings_arguments, overrides_from_args
from stablesr.configs import Settings, SettingsError, setting
from stablesr.image_processor import input_kind, postprocess_images, preprocess_images
from stablesr.pipelines.base import SRPipeline
from stablesr.tiling.canvas import BlendCanvas
from stablesr.tiling.grid import window_grid
from stablesr.tiling.weights import gaussian_weights


@dataclass(frozen=True)
class ToySettings(Settings):
    """The toy method's knobs."""

    scale: int = setting(2, "upscaling factor", check=lambda v: v >= 1, rule="must be >= 1")
    tile_size: int = setting(8, "tile size in input pixels", group="tiles", check=lambda v: v >= 2, rule="must be >= 2")
    tile_overlap: int = setting(4, "tile overlap", group="tiles", check=lambda v: v >= 0, rule="must be >= 0")

    presets: ClassVar[dict] = {"big": {"scale": 4}}

    def check_together(self) -> None:
        if self.tile_overlap >= self.tile_size:
            self.fail("tile_overlap", "must be < the tile size")


class ToyPipeline(SRPipeline):
    settings_class = ToySettings

    @torch.no_grad()
    def __call__(self, image, settings=None, *, output_type=None, **options):
        # 1. Settings and inputs
        settings = self.resolve_settings(settings, **options)
        lr_images = preprocess_images(image)  # list of (1, 3, H, W) in [0, 1]
        outputs = []
        for lr in lr_images:
            # 2. Run the model per tile and blend (the shared tiler)
            height, width = lr.shape[-2:]
            canvas = BlendCanvas((1, 3, height * settings.scale, width * settings.scale), dtype=torch.float64,
                                 device=lr.device)
            for window in window_grid(height, width, tile_size=settings.tile_size, tile_overlap=settings.tile_overlap):
                tile = F.interpolate(lr[..., window.rows, window.cols].double(), scale_factor=settings.scale)
                canvas.add(window.scaled(settings.scale), tile,
                           gaussian_weights(window.height * settings.scale, window.width * settings.scale))
            outputs.append(canvas.result().float())
        # 3. Convert the output
        return postprocess_images(outputs, output_type or input_kind(image))


def test_a_new_method_gets_settings_cli_defaults_images_and_tiling_for_free():
    pipe = ToyPipeline()
    rgb = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    expected = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)
    assert np.array_equal(np.asarray(pipe(Image.fromarray(rgb))[0]), expected)  # PIL in, PIL out, tiles blended
    assert pipe(rgb.astype(np.float32) / 255).shape == (1, 24, 40, 3)  # numpy in, numpy out
    pipe.upscale_defaults = {"scale": 3}  # as from_pretrained reads them from upscale_defaults.json
    assert pipe(torch.rand(1, 3, 12, 20)).shape == (1, 3, 36, 60)
    assert pipe.resolve_settings(preset="big").scale == 4 and pipe.resolve_settings(scale=5).scale == 5
    with pytest.raises(SettingsError, match=r"--tile-overlap 8 \(tile_overlap\): must be < the tile size"):
        pipe(torch.rand(1, 3, 12, 20), tile_overlap=8)

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, ToySettings)
    assert "tile size in input pixels (default 8)" in parser.format_help()
    args = parser.parse_args(["--scale", "4", "--preset", "big"])
    assert overrides_from_args(args, ToySettings) == {"scale": 4} and args.preset == "big"

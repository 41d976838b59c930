"""What every method's pipeline shares: its settings class, per-model defaults, and the one settings merge.

A method (StableSR, later CCSR, DeeDSR) subclasses `SRPipeline`, names its frozen settings class in
`settings_class`, and fills in model-dependent values in `complete_settings`. A pipeline folder may
hold `upscale_defaults.json` (a subset of the settings fields); `from_pretrained` keeps it as
`pipe.upscale_defaults` and `save_pretrained` writes it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from diffusers import DiffusionPipeline

from stablesr.configs import UPSCALE_DEFAULTS_FILE, Settings, read_upscale_defaults, resolve_settings
from stablesr.errors import StableSRError


class SRPipeline(DiffusionPipeline):
    """A super-resolution pipeline with one frozen settings class (see the module docstring)."""

    settings_class: ClassVar[type[Settings]]
    upscale_defaults: dict[str, Any] = {}  # this model's `upscale_defaults.json` (set by from_pretrained)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' loader (offline: local files only; a bundled model's name such as "stablesr-nano" is its
        folder inside the package), plus the folder's `upscale_defaults.json` as `pipe.upscale_defaults`."""
        from stablesr.weights.bundled import resolve_model

        folder = resolve_model(str(pretrained_model_name_or_path))
        kwargs.setdefault("local_files_only", True)
        pipe = super().from_pretrained(folder, *args, **kwargs)
        pipe.upscale_defaults = read_upscale_defaults(folder, cls.settings_class) if folder.is_dir() else {}
        return pipe

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' writer, plus `upscale_defaults.json` when this model has defaults of its own."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.upscale_defaults:
            (Path(save_directory) / UPSCALE_DEFAULTS_FILE).write_text(json.dumps(self.upscale_defaults, indent=2))

    def resolve_settings(self, settings: Settings | None = None, *, preset: str | None = None, **options) -> Settings:
        """The settings of a call: `settings` as given, or class defaults < this model's `upscale_defaults`
        < `preset` < `options` (field names); then `complete_settings` for this model."""
        if settings is None:
            settings = resolve_settings(self.settings_class, model_defaults=self.upscale_defaults, preset=preset,
                                        overrides=options)
        elif options or preset is not None:
            raise StableSRError("pass either a settings object or keyword options (and preset), not both")
        return self.complete_settings(settings)

    def begin_call(self, image, settings: Settings | None, *, preset: str | None, options: dict[str, Any],
                   output_type: str | None, generator=None, noise_sampler=None):
        """Step 1 of every method's `__call__`: (settings merged and checked once, the output kind, the input
        as a list of (1, 3, H, W) tensors in [0, 1], the noise sampler that supplies every random draw)."""
        from stablesr.image_processor import input_kind, preprocess_images
        from stablesr.sampling.samplers import default_noise_sampler

        settings = self.resolve_settings(settings, preset=preset, **options)
        output_type = output_type or input_kind(image)
        if output_type not in ("pil", "pt", "np"):
            raise StableSRError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        return settings, output_type, preprocess_images(image), noise_sampler or default_noise_sampler(generator)

    def upscale_each(self, lr_images: list, upscale_one: Callable, *, hooked=None) -> list:
        """`upscale_one(lr)` for every image; then the hooks of `hooked` (a UNet wrapper) are removed, even on
        an error, and diffusers' offload hooks are reset."""
        try:
            return [upscale_one(lr) for lr in lr_images]
        finally:
            if hooked is not None:
                hooked.remove_hooks()
            self.maybe_free_model_hooks()

    def complete_settings(self, settings: Settings) -> Settings:
        """Fill in and check the values that depend on this model (override in a method)."""
        return settings

"""What every method's pipeline shares: its settings class, per-model defaults, and the one settings merge.

A method (StableSR, later CCSR, DeeDSR) subclasses `SRPipeline`, names its frozen settings class in
`settings_class`, and fills in model-dependent values in `complete_settings`. A pipeline folder may
hold `upscale_defaults.json` (a subset of the settings fields); `from_pretrained` keeps it as
`pipe.upscale_defaults` and `save_pretrained` writes it back.
"""

from __future__ import annotations

import json
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

    def complete_settings(self, settings: Settings) -> Settings:
        """Fill in and check the values that depend on this model (override in a method)."""
        return settings

"""The upscaling methods by name: each one's settings class (standard library only, for the CLI) and pipeline.

A method is a literal table entry here; `stablesr upscale --method NAME` and `Upscaler.load(method=NAME)` pick
its settings class and pipeline class from these tables (see docs/adding-a-method.md).
"""

from __future__ import annotations

import importlib

from stablesr.configs import Settings, UpscaleSettings
from stablesr.configs_ccsr import CCSRSettings
from stablesr.settings_deedsr import DeeDSRSettings

SETTINGS_CLASSES: dict[str, type[Settings]] = {
    "stablesr": UpscaleSettings,
    "realesrgan": UpscaleSettings,  # the baseline uses --scale only
    "deedsr": DeeDSRSettings,
    "ccsr": CCSRSettings,
}

PIPELINE_CLASSES: dict[str, str] = {  # module:class, imported on use (torch)
    "stablesr": "stablesr.pipelines.stablesr:StableSRPipeline",
    "deedsr": "stablesr.pipelines.deedsr:DeeDSRPipeline",
    "ccsr": "stablesr.pipelines.ccsr:CCSRPipeline",
}


def settings_class(method: str) -> type[Settings]:
    """The settings class of `method` (a key of SETTINGS_CLASSES)."""
    if method not in SETTINGS_CLASSES:
        raise ValueError(f"method must be one of {', '.join(SETTINGS_CLASSES)}, got {method!r}")
    return SETTINGS_CLASSES[method]


def pipeline_class(method: str):
    """The pipeline class of a diffusion method (imports torch)."""
    module, name = PIPELINE_CLASSES[method].split(":")
    return getattr(importlib.import_module(module), name)

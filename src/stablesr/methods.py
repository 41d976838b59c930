"""The upscaling methods by name: each one's settings class and pipeline class (standard library only).

`stablesr upscale --method NAME` and `Upscaler.load(method=NAME)` look the method up here; a new
method adds one entry. Classes are named as "module:attribute" so `--help` imports no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """settings: "module:Class" of its frozen settings; pipeline: "module:Class" of its SRPipeline (None:
    not a diffusion pipeline, e.g. the Real-ESRGAN baseline)."""

    settings: str
    pipeline: str | None


METHODS: dict[str, Method] = {
    "stablesr": Method("stablesr.configs:UpscaleSettings", "stablesr.pipelines.stablesr:StableSRPipeline"),
    "ccsr": Method("stablesr.configs_ccsr:CCSRSettings", "stablesr.pipelines.ccsr:CCSRPipeline"),
    "realesrgan": Method("stablesr.configs:UpscaleSettings", None),
}


def _load(name: str):
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


def settings_class(method: str) -> type:
    """The frozen settings class of `method`."""
    return _load(METHODS[method].settings)


def pipeline_class(method: str) -> type | None:
    """The pipeline class of `method` (None for a non-diffusion baseline)."""
    spec = METHODS[method].pipeline
    return _load(spec) if spec is not None else None

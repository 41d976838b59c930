"""Degradation presets and one entry point for every pipeline: sample records, apply them, or both.

Presets (numbers from the papers' training configs):
    realesrgan  Real-ESRGAN x4plus, https://arxiv.org/abs/2107.10833
    stablesr    StableSR's milder second-order settings + no_degradation_prob 0.01,
                https://arxiv.org/abs/2305.07015
    ccsr        CCSR / DeeDSR: StableSR's numbers without USM or no-degradation draws,
                https://arxiv.org/abs/2401.00877
    bsrgan      BSRGAN's random-shuffle model, https://arxiv.org/abs/2103.14006
    bicubic     antialiased bicubic downsampling (MATLAB-imresize-like)

Typical use:
    settings = preset_settings("stablesr", overrides={"noise1": {"sigma_range": [1, 10]}})
    batch, records = degrade(gt, settings, generator=torch.Generator().manual_seed(0))
    again = apply_degradation(gt, records)            # identical LR, from the records alone
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from stablesr.data.bsrgan import BSRGANParams, BSRGANSettings, apply_bsrgan, sample_bsrgan_params
from stablesr.data.kernels import BlurSettings
from stablesr.data.ops import DegradedBatch, quantize_8bit, resize, upsample_to
from stablesr.data.realesrgan import (
    NoiseSettings,
    RealESRGANParams,
    RealESRGANSettings,
    ResizeSettings,
    apply_realesrgan,
    sample_realesrgan_params,
)
from stablesr.data.records import from_record, to_record, with_overrides

PresetName = Literal["realesrgan", "stablesr", "ccsr", "bsrgan", "bicubic"]


@dataclass(frozen=True)
class BicubicSettings:
    scale: int = 4


@dataclass(frozen=True)
class BicubicParams:
    scale: int
    pipeline: Literal["bicubic"] = "bicubic"


DegradationSettings = RealESRGANSettings | BSRGANSettings | BicubicSettings
DegradationParams = RealESRGANParams | BSRGANParams | BicubicParams


def _stablesr_settings() -> RealESRGANSettings:
    """StableSR v2 (512) config: milder ranges than Real-ESRGAN (StableSR issues #27, #76)."""
    blur = BlurSettings(sigma_range=(0.2, 1.5), betag_range=(0.5, 2.0), betap_range=(1.0, 1.5))
    return RealESRGANSettings(
        usm_gt=True,
        no_degradation_prob=0.01,
        blur1=blur,
        resize1=ResizeSettings(scale_range=(0.3, 1.5)),
        noise1=NoiseSettings(sigma_range=(1.0, 15.0), poisson_scale_range=(0.05, 2.0)),
        jpeg1_range=(60, 95),
        second_blur_prob=0.5,
        blur2=replace(blur, sigma_range=(0.2, 1.0)),
        resize2=ResizeSettings(probs=(0.3, 0.4, 0.3), scale_range=(0.6, 1.2)),
        noise2=NoiseSettings(sigma_range=(1.0, 12.0), poisson_scale_range=(0.05, 1.0)),
        jpeg2_range=(60, 100),
    )


PRESETS = {
    "realesrgan": RealESRGANSettings,
    "stablesr": _stablesr_settings,
    "ccsr": lambda: replace(_stablesr_settings(), usm_gt=False, no_degradation_prob=0.0),
    "bsrgan": BSRGANSettings,
    "bicubic": BicubicSettings,
}

_PARAMS_TYPES = {"realesrgan": RealESRGANParams, "bsrgan": BSRGANParams, "bicubic": BicubicParams}


def preset_settings(
    name: PresetName, *, scale: int | None = None, overrides: dict | None = None
) -> DegradationSettings:
    """Settings of a preset, with `scale` and nested `overrides` (e.g. from a YAML file) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown degradation preset {name!r}; choose from {sorted(PRESETS)}")
    settings = with_overrides(PRESETS[name](), overrides or {})
    return settings if scale is None else replace(settings, scale=scale)


def load_overrides(path: str | Path) -> dict:
    """Read a YAML or JSON file of nested overrides, e.g. `{noise1: {sigma_range: [1, 10]}}`."""
    import yaml

    text = Path(path).read_text()
    try:
        data = json.loads(text) if Path(path).suffix.lower() == ".json" else yaml.safe_load(text) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not valid {'JSON' if Path(path).suffix.lower() == '.json' else 'YAML'}: "
                         f"{' '.join(str(error).split())}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def sample_degradation_params(
    settings: DegradationSettings, *, batch_size: int, gt_size: tuple[int, int], generator: torch.Generator
) -> list[DegradationParams]:
    """Draw one record per image of a batch of GT size `gt_size` (H, W)."""
    if isinstance(settings, RealESRGANSettings):
        return sample_realesrgan_params(settings, batch_size=batch_size, generator=generator)
    if isinstance(settings, BSRGANSettings):
        return sample_bsrgan_params(settings, batch_size=batch_size, gt_size=gt_size, generator=generator)
    return [BicubicParams(scale=settings.scale) for _ in range(batch_size)]


def apply_bicubic(gt: torch.Tensor, params: Sequence[BicubicParams]) -> DegradedBatch:
    """Antialiased bicubic downsampling by the record's scale, rounded to 8 bits."""
    lr_size = (gt.shape[-2] // params[0].scale, gt.shape[-1] // params[0].scale)
    lr = quantize_8bit(resize(gt, size=lr_size, mode="bicubic", antialias=True))
    return DegradedBatch(gt=gt, lr=lr, lr_up=upsample_to(lr, gt))


def apply_degradation(gt: torch.Tensor, params: Sequence[DegradationParams]) -> DegradedBatch:
    """Rebuild the degradation of a batch from its records: gt (B, 3, H, W) in [0, 1]."""
    kinds = {p.pipeline for p in params}
    if len(kinds) != 1:
        raise ValueError(f"one batch must use one pipeline, got {sorted(kinds)}")
    apply = {"realesrgan": apply_realesrgan, "bsrgan": apply_bsrgan, "bicubic": apply_bicubic}[kinds.pop()]
    return apply(gt, params)


def degrade(
    gt: torch.Tensor, settings: DegradationSettings, *, generator: torch.Generator
) -> tuple[DegradedBatch, list[DegradationParams]]:
    """Sample records for gt (B, 3, H, W) and apply them; returns the batch and its records."""
    batch_size, gt_size = gt.shape[0], tuple(gt.shape[-2:])
    params = sample_degradation_params(settings, batch_size=batch_size, gt_size=gt_size, generator=generator)
    return apply_degradation(gt, params), params


def params_to_record(params: DegradationParams) -> dict:
    """A JSON-ready dict; its `pipeline` key tells `params_from_record` which record type it is."""
    return to_record(params)


def params_from_record(record: dict) -> DegradationParams:
    return from_record(_PARAMS_TYPES[record["pipeline"]], record)


def settings_to_record(settings: DegradationSettings) -> dict:
    return to_record(settings)

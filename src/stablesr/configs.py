"""Frozen, typed settings for an upscaling run (saved as JSON beside outputs; YAML/CLI only fill them)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

Sampler = Literal["ddpm", "ddim"]
ColorFix = Literal["adain", "wavelet", "none"]
Start = Literal["lr", "noise"]


@dataclass(frozen=True)
class UpscaleSettings:
    """Every knob of `StableSRPipeline.__call__` with the defaults of the official tile script
    (`sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`) except where noted.

    - `num_inference_steps` 200 respaced DDPM steps (README); the turbo preset uses 4.
    - `start` 'lr': x_T = q_sample(LR latent, t=999) as the tile script; 'noise' = pure N(0, I).
    - `color_fix` 'wavelet' (WebUI and turbo README default; the paper used 'adain').
    - `fidelity` the CFW weight w (None: 0.5 when the model has CFW weights, else 0).
    - `guidance_scale` 1 = no classifier-free guidance (official DDPM scripts); >1 uses the
      negative prompt (default: the official DDIM scripts' negative prompt).
    - `faithful` reproduces two official quirks exactly (tile-weight asymmetry, DDIM's mixed
      timestep grids, float32 respacing) for parity; the default is the corrected behaviour.
    """

    upscale: float = 4.0
    num_inference_steps: int = 200
    sampler: Sampler = "ddpm"
    eta: float = 0.0
    fidelity: float | None = None
    color_fix: ColorFix = "wavelet"
    tile_size: int = 64
    tile_overlap: int = 32
    tile_batch_size: int = 4
    vae_tile_size: int = 1024
    min_size: int | None = None
    start: Start = "lr"
    guidance_scale: float = 1.0
    prompt: str = ""
    negative_prompt: str | None = None
    faithful: bool = False

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> UpscaleSettings:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


PRESETS: dict[str, dict] = {
    # StableSR-Turbo: 4 DDPM steps at t = 999, 666, 333, 0 (README), CFW 0.5, wavelet.
    "turbo": {"num_inference_steps": 4, "sampler": "ddpm", "color_fix": "wavelet"},
    # The paper's main setting.
    "paper": {"num_inference_steps": 200, "sampler": "ddpm", "color_fix": "adain"},
    # The official 4K DDIM example (768v model): 20 steps, eta 1, CFG 7 with the negative prompt.
    "ddim-cfg": {"num_inference_steps": 20, "sampler": "ddim", "eta": 1.0, "guidance_scale": 7.0, "start": "noise"},
}

"""The bundled stablesr-nano: files as the model card lists them, loading by name, defaults, quality, CLI."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablesr.weights.bundled import BUNDLED_MODELS, default_model

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "docs" / "stablesr-nano.md"
EXAMPLE = ROOT / "examples" / "coffee_lr.png"  # held out: not in the training manifest
NANO = BUNDLED_MODELS["stablesr-nano"]


def card_files() -> dict[str, tuple[int, str]]:
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$", CARD.read_text(), flags=re.M)
    return {name: (int(size), digest) for name, size, digest in rows}


@pytest.fixture(scope="module")
def nano():
    from stablesr.pipelines.stablesr import StableSRPipeline

    pipe = StableSRPipeline.from_pretrained("stablesr-nano")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_files_and_hashes_match_the_model_card():
    listed = card_files()
    present = {p.relative_to(NANO).as_posix(): p for p in NANO.rglob("*") if p.is_file()}
    assert listed and set(listed) == set(present)
    for name, (size, digest) in listed.items():
        data = present[name].read_bytes()
        assert len(data) == size, name
        assert hashlib.sha256(data).hexdigest() == digest, name
    assert sum(size for size, _ in listed.values()) < 40 * 2**20


def test_weights_are_fp16_and_the_default_model_is_nano():
    from safetensors import safe_open

    files = sorted(NANO.rglob("*.safetensors"))
    assert {f.parent.name for f in files} >= {"unet", "vae", "sr_module"}
    for path in files:
        with safe_open(str(path), "pt") as handle:
            assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"F16"}, path
    assert default_model() == NANO


def test_loads_by_name_with_its_own_defaults(nano):
    from stablesr.configs import UpscaleSettings

    assert nano.upscale_defaults["num_inference_steps"] < UpscaleSettings().num_inference_steps
    settings = nano.resolve_settings()
    for name, value in nano.upscale_defaults.items():
        assert getattr(settings, name) == value
    assert nano.resolve_settings(num_inference_steps=7).num_inference_steps == 7  # a user's value wins
    assert nano.unet.dtype == torch.float32 and nano.config.cfw_trained


def niqe_of(image: Image.Image) -> float:
    from stablesr.metrics.niqe import niqe

    return float(niqe(np.asarray(image, dtype=np.float64)))


def test_upscaling_a_held_out_photo_improves_niqe_over_bicubic(nano):
    lr = Image.open(EXAMPLE).convert("RGB")
    sr = nano(lr, generator=torch.Generator().manual_seed(0)).images[0]
    assert sr.size == (4 * lr.width, 4 * lr.height)
    bicubic = lr.resize(sr.size, Image.BICUBIC)
    assert niqe_of(sr) < niqe_of(bicubic) - 0.2  # measured 6.80 vs 7.38
    # faithful to the input: the SR downscaled back stays close to the LR (PSNR > 25 dB)
    back = np.asarray(sr.resize(lr.size, Image.BICUBIC), dtype=np.float64)
    mse = np.mean((back - np.asarray(lr, dtype=np.float64)) ** 2)
    assert 10 * np.log10(255.0**2 / mse) > 25.0


def test_cli_without_model_uses_the_bundled_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stablesr", "upscale", str(EXAMPLE), "-o", str(tmp_path),
                             "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = Image.open(tmp_path / "coffee_lr.png")
    assert out.size == (600, 400) and out.mode == "RGB"

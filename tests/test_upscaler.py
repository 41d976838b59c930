"""The library's Upscaler: the policy of the CLI (fallback, alpha, 16-bit) for Python callers too."""

import numpy as np
import pytest
import torch
from PIL import Image

from stablesr.configs import SettingsError
from stablesr.upscaler import Upscaler

FAST = dict(num_inference_steps=2, tile_size=16, tile_overlap=8)


def photo(mode="RGB", size=(24, 16)):
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([xx * 9, yy * 13, (xx + yy) * 5], -1) % 256
    image = Image.fromarray(rgb.astype(np.uint8))
    if mode == "RGBA":
        image.putalpha(Image.fromarray((xx * 10 % 256).astype(np.uint8)))
    return image


def test_image_and_file_entries_agree_and_keep_alpha(tiny_model_dir, tmp_path):
    up = Upscaler.load(model=tiny_model_dir, progress=False, **FAST)
    assert up.settings.num_inference_steps == 2 and up.settings.fidelity == 0.5  # resolved against the model
    rgba = photo("RGBA")
    rgba.save(tmp_path / "in.png")
    from_pil = up.upscale_image(rgba, seed=3)
    assert from_pil.mode == "RGBA" and from_pil.size == (96, 64)
    up.upscale_file(tmp_path / "in.png", tmp_path / "out.png", seed=3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(from_pil))
    assert up.upscale_image(photo(), seed=3).mode == "RGB"


def test_sixteen_bit_files_stay_sixteen_bit(tiny_model_dir, tmp_path):
    up = Upscaler.load(model=tiny_model_dir, progress=False, **FAST)
    from stablesr.imaging import load_image, save_image_atomic

    rgb16 = (np.arange(16 * 24 * 3).reshape(16, 24, 3) * 97 % 65536).astype(np.uint16)
    save_image_atomic(rgb16, tmp_path / "in16.png", bit_depth=16)
    assert load_image(tmp_path / "in16.png").bit_depth == 16
    up.upscale_file(tmp_path / "in16.png", tmp_path / "out16.png", seed=0)
    assert load_image(tmp_path / "out16.png").bit_depth == 16


def test_half_precision_falls_back_to_float32_for_python_callers(tiny_model_dir, monkeypatch, capsys):
    from stablesr.pipelines.stablesr import NonFiniteOutputError, StableSRPipeline

    original, seen = StableSRPipeline._upscale_one, []

    def flaky(self, *args, **kwargs):
        seen.append(self.unet.dtype)
        if self.unet.dtype != torch.float32:
            raise NonFiniteOutputError("NaN in the sampled latent")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableSRPipeline, "_upscale_one", flaky)
    up = Upscaler.load(model=tiny_model_dir, dtype=torch.bfloat16, progress=False, **FAST)
    assert up.upscale_image(photo(), seed=0).size == (96, 64)
    assert up.upscale_image(photo(), seed=0).size == (96, 64)
    assert seen == [torch.bfloat16, torch.float32, torch.float32]  # switched once, for the rest of the run
    assert "switching to float32" in capsys.readouterr().err


def test_bad_settings_fail_before_loading_and_no_model_is_one_clear_error(tmp_path, monkeypatch):
    import stablesr.weights.bundled as bundled

    with pytest.raises(SettingsError, match="--tile-batch-size 0"):
        Upscaler.load(model=tmp_path / "absent", tile_batch_size=0)
    from stablesr.errors import WeightsNotFoundError

    monkeypatch.setattr(bundled, "default_model", lambda: None)  # an installation without the bundled model
    with pytest.raises(WeightsNotFoundError, match="stablesr_000117.ckpt"):
        Upscaler.load()

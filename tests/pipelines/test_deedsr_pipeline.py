"""DeeDSRPipeline on a tiny random model: sizes, folder round trip, settings, and noise guidance at the first step."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stablesr.configs import SettingsError
from stablesr.pipelines.deedsr import DeeDSRPipeline
from stablesr.sampling.samplers import default_noise_sampler
from stablesr.settings_deedsr import DeeDSRSettings
from stablesr.tiling.vae import encode_tiled

TRAINING_TESTS = Path(__file__).resolve().parents[1] / "training"


@pytest.fixture(scope="module")
def pipe():
    spec = importlib.util.spec_from_file_location("tiny_deedsr", TRAINING_TESTS / "tiny_deedsr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pipeline = module.make_tiny_deedsr_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_settings_defaults_and_checks():
    settings = DeeDSRSettings()
    assert (settings.num_inference_steps, settings.eta, settings.guided_steps) == (50, 1.0, 1)
    with pytest.raises(SettingsError, match="--guided-steps 5"):
        DeeDSRSettings(num_inference_steps=4, guided_steps=5)


def test_output_size_and_folder_round_trip(pipe, tmp_path):
    lr = torch.rand(1, 3, 10, 12)
    options = dict(num_inference_steps=3, tile_size=8, tile_overlap=4)
    out = pipe(lr, generator=torch.Generator().manual_seed(0), **options).images
    assert out.shape == (1, 3, 40, 48) and 0 <= out.min() and out.max() <= 1
    pipe.upscale_defaults = {"num_inference_steps": 3}
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    pipe.upscale_defaults = {}
    loaded = DeeDSRPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.upscale_defaults == {"num_inference_steps": 3}
    again = loaded(lr, generator=torch.Generator().manual_seed(0), tile_size=8, tile_overlap=4).images
    assert torch.equal(out, again)
    # the folder's weights are memory-mapped: streamed a layer at a time, the result is the same
    streamed = DeeDSRPipeline.from_pretrained(tmp_path / "model", resident=False)
    streamed.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # there are weights to stream: no "nothing to stream" warning
        third = streamed(lr, generator=torch.Generator().manual_seed(0), tile_size=8, tile_overlap=4,
                         stream_weights=True).images
    assert torch.equal(out, third)


def test_noise_guidance_makes_the_first_x0_estimate_the_lr_latent(pipe):
    lr = torch.rand(1, 3, 8, 8)
    seen = []
    pipe(lr, num_inference_steps=4, tile_size=8, tile_overlap=4, min_size=32, color_fix="none", progress=False,
         generator=torch.Generator().manual_seed(3), callback=lambda i, t, x, x0: seen.append((t, x0)))
    # the pipeline's first draw is the posterior sample of the upscaled (32 x 32 = one tile) LR image
    lr_up = F.interpolate(lr * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    posterior = encode_tiled(pipe.vae, lr_up, tile_size=1024, tile_overlap=128)
    draw = default_noise_sampler(torch.Generator().manual_seed(3))(posterior.mean)
    lr_latent = (posterior.mean + posterior.std * draw) * pipe.vae.config.scaling_factor
    assert [t for t, _ in seen] == [999, 666, 333, 0]
    assert torch.equal(seen[0][1], lr_latent)  # eq. 11: x0_hat = z_lr at the guided step
    assert not torch.allclose(seen[1][1], lr_latent)  # later steps: the network's estimate


def test_upscale_to_array_streams_the_same_integers(pipe):
    import numpy as np

    from stablesr.image_processor import tensor_to_pil

    lr = torch.rand(1, 3, 11, 13, generator=torch.Generator().manual_seed(6))  # 44x52, padded to 48x56
    options = dict(num_inference_steps=2, tile_size=8, tile_overlap=4, color_fix="wavelet", min_size=32)
    floats = pipe(lr, generator=torch.Generator().manual_seed(0), output_type="pt", **options).images
    array = pipe.upscale_to_array(lr, generator=torch.Generator().manual_seed(0), progress=False, **options)
    assert array.shape == (44, 52, 3) and np.array_equal(array, np.asarray(tensor_to_pil(floats)))

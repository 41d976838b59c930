"""CCSRPipeline on a tiny random model: the call equals its steps composed by hand, tiling, settings, save/load."""

import warnings

import pytest
import torch
from tiny_ccsr import make_tiny_ccsr_pipeline

from conftest import FLOAT32_REL, assert_close_scaled
from stablesr.color_fix import apply_color_fix
from stablesr.configs import SettingsError
from stablesr.configs_ccsr import CCSRSettings
from stablesr.imaging import postprocess_sr, preprocess_lr
from stablesr.models.controlnet import ControlledUNet
from stablesr.sampling.denoisers import EpsDenoiser
from stablesr.sampling.samplers import default_noise_sampler
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear
from stablesr.sampling.truncated import plan_ccsr_v1, sample_truncated


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_ccsr_pipeline()


def lr_image(size=(12, 16), seed=0):
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_call_equals_the_steps_composed_by_hand(pipe):
    lr = lr_image()
    visited = []
    out = pipe(lr, num_inference_steps=15, min_size=48, generator=torch.Generator().manual_seed(0), output_type="pt",
               callback=lambda k, t, x, x0: visited.append(t)).images
    assert visited == [999, 642, 571, 500, 428, 357]  # 6 model evaluations, output x0 at 357
    assert out.shape == (1, 3, 48, 64)
    # by hand, untiled (the 6x8 latent fits one tile, the image one VAE tile)
    pre = preprocess_lr(lr * 2 - 1, upscale=4.0, min_size=48, multiple=8)
    scaling = pipe.vae.config.scaling_factor
    cond = pipe.cond_encoder.encode(pre.image).latent_dist.mode() * scaling
    context = pipe.prompt_embeds.find("")
    controlled = ControlledUNet(pipe.unet, pipe.controlnet)

    def model(x, t):
        return controlled(x, torch.full((1,), t), context, cond)

    noise = default_noise_sampler(torch.Generator().manual_seed(0))
    x0 = sample_truncated(EpsDenoiser(model), noise(cond), alphas_cumprod_from_betas(betas_scaled_linear()),
                          plan_ccsr_v1(15), noise_sampler=noise)
    decoded = apply_color_fix(pipe.vae.decode(x0 / scaling).sample, pre.image, method="adain")
    expected = (postprocess_sr(decoded, pre) + 1) / 2
    assert_close_scaled(out, expected, FLOAT32_REL, "ccsr call")


@torch.no_grad()
def test_tiled_sampling_blends_tiles_close_to_one_tile(pipe):
    lr = lr_image((16, 24))
    common = dict(num_inference_steps=15, upscale=4.0, min_size=32, output_type="pt", progress=False)
    whole = pipe(lr, tile_size=64, tile_overlap=8, generator=torch.Generator().manual_seed(1), **common).images
    again = pipe(lr, tile_size=6, tile_overlap=2, generator=torch.Generator().manual_seed(1), **common).images
    assert whole.shape == again.shape == (1, 3, 64, 96)  # latent 8x12: one tile of 64 vs 3x2 tiles of 6
    assert 0 < (whole - again).abs().mean() < 0.2  # Gaussian-blended tiles: close to, not equal to, one tile


def test_settings_defaults_presets_and_errors(pipe):
    settings = pipe.resolve_settings()
    assert (settings.num_inference_steps, settings.t_max, settings.t_min, settings.color_fix) == (45, 0.6667, 0.3333,
                                                                                                   "adain")
    assert settings.min_size == 512 and pipe.plan(settings).num_evaluations == 16
    assert pipe.resolve_settings(preset="fast").num_inference_steps == 15
    with pytest.raises(SettingsError, match="--t-min"):
        CCSRSettings(t_min=0.7)
    with pytest.raises(SettingsError, match="--tile-overlap"):
        CCSRSettings(tile_size=8, tile_overlap=8)


def test_save_load_round_trip(pipe, tmp_path):
    from stablesr.pipelines.ccsr import CCSRPipeline

    pipe.upscale_defaults = {"num_inference_steps": 30}
    try:
        pipe.save_pretrained(tmp_path, safe_serialization=True)
    finally:
        pipe.upscale_defaults = {}
    loaded = CCSRPipeline.from_pretrained(tmp_path)
    assert loaded.resolve_settings().num_inference_steps == 30
    for name in ("unet", "controlnet", "cond_encoder", "vae"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the folder's weights are memory-mapped: streamed a layer at a time, the result is the same
    lr = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    options = dict(num_inference_steps=6, output_type="pt", progress=False)
    resident = loaded(lr, generator=torch.Generator().manual_seed(0), **options).images
    streamed = CCSRPipeline.from_pretrained(tmp_path, resident=False)
    streamed.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # there are weights to stream: no "nothing to stream" warning
        again = streamed(lr, generator=torch.Generator().manual_seed(0), stream_weights=True, **options).images
    assert torch.equal(resident, again)


@pytest.fixture(scope="module")
def pipe_v2():
    return make_tiny_ccsr_pipeline(version="v2")


@torch.no_grad()
@pytest.mark.parametrize(("preset", "visited"), [("v2-one-step", [999]), ("v2-multi-step", [999, 499])])
def test_v2_call_equals_the_steps_composed_by_hand(pipe_v2, preset, visited):
    from stablesr.configs_ccsr import V2_NEGATIVE_PROMPT, V2_PROMPT
    from stablesr.pipelines.ccsr import make_control_tile_fn
    from stablesr.sampling.samplers import q_sample
    from stablesr.sampling.truncated import plan_ccsr_v2

    pipe, lr, seen = pipe_v2, lr_image(), []
    settings = pipe.resolve_settings(preset=preset, min_size=48)
    out = pipe(lr, settings, generator=torch.Generator().manual_seed(0), output_type="pt",
               callback=lambda k, t, x, x0: seen.append(t)).images
    assert seen == visited and pipe.plan(settings).num_evaluations == len(visited)
    # by hand: posterior sample, x_T = q(c, 999), negative-only first evaluation, CFG afterwards, x0 output
    pre = preprocess_lr(lr * 2 - 1, upscale=4.0, min_size=48, multiple=8)
    scaling, noise = pipe.vae.config.scaling_factor, default_noise_sampler(torch.Generator().manual_seed(0))
    posterior = pipe.vae.encode(pre.image).latent_dist
    cond = (posterior.mean + posterior.std * noise(posterior.mean)) * scaling
    alphas = alphas_cumprod_from_betas(betas_scaled_linear())
    x_T = q_sample(cond, float(alphas[999]), noise(cond))
    controlled = ControlledUNet(pipe.unet, pipe.controlnet)
    positive, negative = pipe.prompt_embeds.find(V2_PROMPT), pipe.prompt_embeds.find(V2_NEGATIVE_PROMPT)
    main_fn = make_control_tile_fn(controlled, positive, negative if settings.guidance_scale != 1 else None, settings)
    first_fn = make_control_tile_fn(controlled, negative if settings.guidance_scale != 1 else positive, None, settings)
    x0 = sample_truncated(EpsDenoiser(lambda x, t: main_fn(x, cond, t)), x_T, alphas,
                          plan_ccsr_v2(settings.num_inference_steps, settings.t_max, settings.t_min),
                          first_denoiser=EpsDenoiser(lambda x, t: first_fn(x, cond, t)), noise_sampler=noise)
    decoded = apply_color_fix(pipe.vae.decode(x0 / scaling).sample, pre.image, method="adain")
    assert_close_scaled(out, (postprocess_sr(decoded, pre) + 1) / 2, FLOAT32_REL, preset)


def test_v1_refuses_v2_settings(pipe):
    with pytest.raises(SettingsError, match="--guidance-scale"):
        pipe.resolve_settings(guidance_scale=4.5)
    assert pipe.resolve_settings().prompt == ""


def test_v2_save_load_round_trip_without_condition_encoder(pipe_v2, tmp_path):
    from stablesr.pipelines.ccsr import CCSRPipeline

    pipe_v2.save_pretrained(tmp_path, safe_serialization=True)
    loaded = CCSRPipeline.from_pretrained(tmp_path)
    assert loaded.version == "v2" and loaded.cond_encoder is None
    a, b = pipe_v2.controlnet.state_dict(), loaded.controlnet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def test_upscale_to_array_streams_the_same_integers(pipe):
    """The shared last step (SRPipeline.finish_image): CCSR's decode streams into an integer array too."""
    import numpy as np

    from stablesr.image_processor import tensor_to_pil

    lr = lr_image((21, 29), seed=4)  # 84x116, padded to 88x120 (the crop matters), VAE windows of 64 px
    options = dict(num_inference_steps=15, min_size=32, color_fix="wavelet", vae_tile_size=64, progress=False)
    floats = pipe(lr, generator=torch.Generator().manual_seed(2), output_type="pt", **options).images
    for bit_depth in (8, 16):
        array = pipe.upscale_to_array(lr, bit_depth=bit_depth, generator=torch.Generator().manual_seed(2), **options)
        assert array.shape == (84, 116, 3)
        assert np.array_equal(array, np.asarray(tensor_to_pil(floats, bit_depth=bit_depth)))

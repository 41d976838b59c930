"""StableSRPipeline on a tiny seeded model: sizes, determinism, option effects, save/load identity."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_pipeline
from stablesr.errors import StableSRError
from stablesr.imaging import LazyUpsampled
from stablesr.tiling.vae import decode_tiled

FAST = dict(num_inference_steps=3, tile_size=16, tile_overlap=8, output_type="pt", progress=False)


def run(pipe, image, seed=0, **options):
    return pipe(image, generator=torch.Generator().manual_seed(seed), **{**FAST, **options}).images


@pytest.fixture(scope="module")
def lr_image():
    return torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))


def test_non_square_image_larger_than_one_tile(tiny_pipeline, lr_image):
    out = run(tiny_pipeline, lr_image)  # latent 20x28 with 16-px tiles -> 2 x 3 tiles
    assert out.shape == (1, 3, 160, 224)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_same_seed_same_output_different_seed_different_output(tiny_pipeline, lr_image):
    first, again = run(tiny_pipeline, lr_image, 0), run(tiny_pipeline, lr_image, 0)
    other = run(tiny_pipeline, lr_image, 1)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_fractional_scale_and_small_input_use_min_size_then_resize_back(tiny_pipeline):
    image = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(2))
    out = run(tiny_pipeline, image, upscale=2.5)  # 30x50 < min_size 128: upscaled more, then resized back
    assert out.shape == (1, 3, 30, 50)


@pytest.mark.parametrize("options", [dict(fidelity=0.0), dict(color_fix="adain"), dict(color_fix="none"),
                                     dict(start="noise"), dict(sampler="ddim", eta=0.0),
                                     dict(guidance_scale=3.0), dict(faithful=True)])
def test_every_option_changes_the_result(tiny_pipeline, lr_image, options):
    baseline = run(tiny_pipeline, lr_image)
    changed = run(tiny_pipeline, lr_image, **options)
    assert changed.shape == baseline.shape
    assert (changed - baseline).abs().max() > 1e-4, options


def test_ddim_eta_zero_ignores_the_seed_when_starting_from_a_fixed_latent(tiny_pipeline, lr_image):
    # With eta = 0 the only randomness is the posterior sample and x_T; fixing them via noise_sampler
    # makes DDIM deterministic while DDPM still draws per-step noise.
    draws = lambda like: torch.zeros_like(like)  # noqa: E731
    a = tiny_pipeline(lr_image, sampler="ddim", eta=0.0, noise_sampler=draws, **FAST).images
    b = tiny_pipeline(lr_image, sampler="ddim", eta=0.0, noise_sampler=draws, **FAST).images
    assert torch.equal(a, b)


def test_guidance_uses_the_cached_negative_prompt_and_rejects_unknown_prompts(tiny_pipeline, lr_image):
    with pytest.raises(StableSRError, match="no cached embedding"):
        run(tiny_pipeline, lr_image, guidance_scale=2.0, negative_prompt="blurry")
    with pytest.raises(StableSRError, match="no cached embedding"):
        run(tiny_pipeline, lr_image, prompt="a photo")


def test_pil_input_gives_pil_output_of_the_right_size(tiny_pipeline):
    image = Image.new("RGB", (30, 20), (120, 60, 30))
    out = tiny_pipeline(image, num_inference_steps=2, tile_size=16, tile_overlap=8, progress=False).images
    assert isinstance(out[0], Image.Image) and out[0].size == (120, 80)


def test_without_cfw_weights_fidelity_defaults_to_zero_and_positive_is_refused(lr_image):
    pipe = make_tiny_pipeline(0, cfw_trained=False)
    reference = make_tiny_pipeline(0)
    assert torch.equal(run(pipe, lr_image), run(reference, lr_image, fidelity=0.0))
    with pytest.raises(StableSRError, match="no trained CFW"):
        run(pipe, lr_image, fidelity=0.5)


@pytest.mark.parametrize("options, message", [(dict(upscale=0), "upscale"), (dict(tile_overlap=16), "tile_overlap"),
                                              (dict(fidelity=1.5), "fidelity"), (dict(sampler="euler"), "sampler"),
                                              (dict(num_inference_steps=0), "num_inference_steps")])
def test_bad_options_raise_one_clear_error(tiny_pipeline, lr_image, options, message):
    with pytest.raises(StableSRError, match=message):
        run(tiny_pipeline, lr_image, **options)


def test_save_and_load_round_trip_is_bit_identical_offline(tiny_pipeline, tiny_model_dir, lr_image, monkeypatch):
    from stablesr.weights.loading import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_pipeline(tiny_model_dir)
    assert type(loaded.vae).__name__ == "CFWAutoencoderKL" and type(loaded.sr_module).__name__ == "StableSRModule"
    assert torch.equal(run(loaded, lr_image), run(tiny_pipeline, lr_image))


def test_v_prediction_model_runs_through_the_same_sampler(lr_image):
    pipe = make_tiny_pipeline(0, prediction_type="v_prediction")
    eps = run(make_tiny_pipeline(0), lr_image)
    v = run(pipe, lr_image)
    assert (v - eps).abs().max() > 1e-4


MODEL_DEFAULTS = {"num_inference_steps": 2, "sampler": "ddim", "tile_size": 16, "tile_overlap": 8,
                  "color_fix": "none", "fidelity": 1.0}


@pytest.fixture(scope="module")
def model_dir_with_defaults(tmp_path_factory, tiny_model_dir):
    import json
    import shutil

    folder = tmp_path_factory.mktemp("with-defaults") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "upscale_defaults.json").write_text(json.dumps(MODEL_DEFAULTS))
    return folder


def test_official_folder_without_defaults_keeps_the_paper_defaults(tiny_model_dir):
    from stablesr.configs import UpscaleSettings
    from stablesr.weights.loading import load_pipeline

    pipe = load_pipeline(tiny_model_dir)
    assert pipe.upscale_defaults == {}
    settings = pipe.resolve_settings()
    assert settings.num_inference_steps == 200 and settings.sampler == "ddpm" and settings.color_fix == "wavelet"
    assert settings == UpscaleSettings(fidelity=0.5, min_size=64 * pipe.vae_scale_factor)


def test_model_defaults_are_used_unless_the_caller_overrides(model_dir_with_defaults, lr_image):
    from stablesr.configs import UpscaleSettings
    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.weights.loading import load_pipeline

    pipe = load_pipeline(model_dir_with_defaults)
    assert pipe.upscale_defaults == MODEL_DEFAULTS
    assert StableSRPipeline.from_pretrained(model_dir_with_defaults).upscale_defaults == MODEL_DEFAULTS
    settings = pipe.resolve_settings()
    assert (settings.num_inference_steps, settings.sampler, settings.tile_size) == (2, "ddim", 16)
    assert settings.fidelity == 1.0
    assert pipe.resolve_settings(num_inference_steps=3, preset="turbo").num_inference_steps == 3
    assert pipe.resolve_settings(preset="turbo").sampler == "ddpm"  # the preset beats the model default

    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    implicit = pipe(lr_image, generator=generator(), output_type="pt", progress=False).images
    explicit = pipe(lr_image, UpscaleSettings(**MODEL_DEFAULTS), generator=generator(), output_type="pt",
                    progress=False).images
    assert torch.equal(implicit, explicit)
    overridden = pipe(lr_image, color_fix="wavelet", generator=generator(), output_type="pt", progress=False).images
    assert (overridden - implicit).abs().max() > 1e-4


def test_save_pretrained_keeps_the_model_defaults(model_dir_with_defaults, tmp_path):
    from stablesr.weights.loading import load_pipeline

    load_pipeline(model_dir_with_defaults).save_pretrained(tmp_path / "again")
    assert load_pipeline(tmp_path / "again").upscale_defaults == MODEL_DEFAULTS


def test_settings_object_and_options_are_not_mixed(tiny_pipeline, lr_image):
    from stablesr.configs import UpscaleSettings

    with pytest.raises(StableSRError, match="either a settings object or keyword options"):
        tiny_pipeline(lr_image, UpscaleSettings(), num_inference_steps=2)


def test_a_vae_tile_size_that_is_not_a_multiple_of_64_runs_tiled(tiny_pipeline, lr_image):
    out = run(tiny_pipeline, lr_image, vae_tile_size=72)  # encode tiles 72 px with 8 px overlap; was 9 (refused)
    assert out.shape == (1, 3, 160, 224) and torch.isfinite(out).all()


def test_the_output_is_the_same_kind_as_the_input(tiny_pipeline):
    rgb = np.random.default_rng(5).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    options = dict(num_inference_steps=2, tile_size=16, tile_overlap=8, progress=False)
    as_array = tiny_pipeline(rgb.astype(np.float32) / 255, generator=torch.Generator().manual_seed(0), **options)
    as_tensor = tiny_pipeline(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
                              generator=torch.Generator().manual_seed(0), **options)
    as_pil = tiny_pipeline(Image.fromarray(rgb), generator=torch.Generator().manual_seed(0), **options)
    assert isinstance(as_array.images, np.ndarray) and as_array.images.shape == (1, 40, 56, 3)
    assert torch.is_tensor(as_tensor.images) and as_tensor.images.shape == (1, 3, 40, 56)
    assert isinstance(as_pil.images[0], Image.Image)
    assert np.array_equal(as_array.images[0], as_tensor.images[0].permute(1, 2, 0).numpy())
    assert np.array_equal(np.asarray(as_pil.images[0]), (as_array.images[0] * 255).round().astype(np.uint8))


def test_the_vae_tile_comes_from_the_budget_unless_given(tiny_pipeline):
    from stablesr.tiling.budget import MemoryBudgetError

    settings = tiny_pipeline.resolve_settings(max_memory="1TB")
    assert tiny_pipeline.plan_memory(300, 200, settings) == 1024  # plenty: the official tile
    roomy = tiny_pipeline.plan_memory(300, 200, tiny_pipeline.resolve_settings(max_memory="auto"))
    assert roomy % 64 == 0 and 64 <= roomy <= 1024
    assert tiny_pipeline.plan_memory(300, 200, tiny_pipeline.resolve_settings(max_memory="1TB", vae_tile_size=72)) == 72
    with pytest.raises(MemoryBudgetError, match=r"StableSR on 200x300 \(upsampled to 800x1200\) needs .* over the "
                                                r"budget of 1 MB \(--max-memory"):
        tiny_pipeline.plan_memory(300, 200, tiny_pipeline.resolve_settings(max_memory="1MB"))


@pytest.mark.parametrize("color_fix", ["wavelet", "none", "adain"])
def test_upscale_to_array_gives_the_integers_of_the_float_path(tiny_pipeline, color_fix, monkeypatch):
    """The streamed decode (tiles -> colour fix by bands -> crop -> integers) holds no output-sized float
    image and gives exactly what quantising the whole-image output gives, for 8 and 16 bits."""
    import stablesr.pipelines.stablesr as module
    from stablesr.image_processor import tensor_to_pil

    monkeypatch.setattr("stablesr.pipelines.base.COLOR_FIX_BAND_PIXELS", 152 * 32)  # colour-fix bands of 32 rows
    monkeypatch.setattr("stablesr.tiling.vae.EXACT_STATISTICS_MAX_WINDOWS", 0)  # one-pass statistics: quicker
    image = torch.rand(1, 3, 25, 37, generator=torch.Generator().manual_seed(3))  # 100x148, padded to 104x152
    options = dict(num_inference_steps=1, tile_size=8, tile_overlap=4, vae_tile_size=72, min_size=64,
                   color_fix=color_fix)  # VAE windows of 9 latent px: 2 x 3
    floats = run(tiny_pipeline, image, **options)
    seen, whole = [], []
    monkeypatch.setattr(module, "decode_tiled", lambda *a, **k: seen.append(k.get("sink")) or decode_tiled(*a, **k))
    materialize = LazyUpsampled.materialize
    monkeypatch.setattr(LazyUpsampled, "materialize", lambda self: whole.append(1) or materialize(self))
    for bit_depth in (8, 16):
        array = tiny_pipeline.upscale_to_array(image, bit_depth=bit_depth, generator=torch.Generator().manual_seed(0),
                                               progress=False, **options)
        assert array.dtype == (np.uint8 if bit_depth == 8 else np.uint16) and array.shape == (100, 148, 3)
        assert np.array_equal(array, np.asarray(tensor_to_pil(floats, bit_depth=bit_depth)))
    assert [sink is not None for sink in seen] == [color_fix != "adain"] * 2  # AdaIN needs the whole image
    assert len(whole) == (2 if color_fix == "adain" else 0)  # streamed: lr_up (lazy) is never made whole


def test_upscale_to_array_refuses_a_batch_and_odd_bit_depths(tiny_pipeline, lr_image):
    with pytest.raises(StableSRError, match="one image, got 2"):
        tiny_pipeline.upscale_to_array(torch.cat([lr_image, lr_image]), num_inference_steps=1, progress=False)
    with pytest.raises(StableSRError, match="bit_depth must be 8 or 16"):
        tiny_pipeline.upscale_to_array(lr_image, bit_depth=12)


def test_streaming_plans_for_fewer_image_sized_buffers(tiny_pipeline, monkeypatch):
    import stablesr.pipelines.stablesr as module
    from stablesr.tiling.budget import Budget, MemoryBudgetError

    # 1200x1600 upsampled, colour fix "none": 24 B/px streamed (~46 MB), 48 B/px whole (~92 MB)
    monkeypatch.setattr(module.Budget, "resolve", lambda *_: Budget(working=80 * 10**6, total=None, in_use=0))
    settings = tiny_pipeline.resolve_settings(color_fix="none")
    assert tiny_pipeline.plan_memory(300, 400, settings, streaming=True) >= 64
    with pytest.raises(MemoryBudgetError):
        tiny_pipeline.plan_memory(300, 400, settings)
    adain = tiny_pipeline.resolve_settings(color_fix="adain")  # no streaming with AdaIN
    with pytest.raises(MemoryBudgetError):
        tiny_pipeline.plan_memory(300, 400, adain, streaming=True)


def test_one_window_reuses_the_encoder_features_bit_identically(tiny_pipeline, lr_image, monkeypatch):
    """Untiled, the CFW features come from the encode pass (as in the official code), not a second encoder run."""
    vae = tiny_pipeline.vae
    calls = []
    original = type(vae).extract_enc_feats
    monkeypatch.setattr(vae, "extract_enc_feats", lambda image: calls.append(1) or original(vae, image))
    reused = run(tiny_pipeline, lr_image, fidelity=0.5)
    assert calls == []
    monkeypatch.setattr(vae, "encode_with_features", lambda image: (vae.encode(image).latent_dist, None))
    recomputed = run(tiny_pipeline, lr_image, fidelity=0.5)
    assert calls == [1] and torch.equal(reused, recomputed)


def test_cpu_kernels_swap_the_linear_layers_and_keep_the_result(lr_image, monkeypatch):
    from torch import nn

    from stablesr.models import cpu_kernels
    from stablesr.models.cpu_kernels import ConvLinear

    conv_calls = []
    original = cpu_kernels.conv_linear
    monkeypatch.setattr(cpu_kernels, "conv_linear", lambda *args: conv_calls.append(args[0].shape) or original(*args))
    pipe = make_tiny_pipeline(0)
    components = [pipe.unet, pipe.sr_module, pipe.vae]
    pipe.cpu_kernels = False
    plain = run(pipe, lr_image)
    assert not conv_calls and not any(type(m) is ConvLinear for c in components for m in c.modules())
    pipe.cpu_kernels = True
    fast = run(pipe, lr_image)
    kinds = [type(m) for c in components for m in c.modules() if isinstance(m, nn.Linear)]
    assert kinds and set(kinds) == {ConvLinear}
    assert conv_calls and all(shape[-2] >= cpu_kernels.MIN_ROWS for shape in conv_calls)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)  # another summation order: float rounding
    pipe.cpu_kernels = False
    conv_calls.clear()
    assert torch.equal(run(pipe, lr_image), plain) and not conv_calls  # torch's own linear layers again


def test_long_runs_pack_the_denoiser_weights_and_restore_them(lr_image, monkeypatch):
    from stablesr.models import cpu_kernels

    packed_calls = []
    original = cpu_kernels._packed_conv
    monkeypatch.setattr(cpu_kernels, "_packed_conv", lambda x, layer: packed_calls.append(layer) or original(x, layer))
    monkeypatch.setattr(cpu_kernels, "PACK_MIN_BYTES", 0)  # the tiny model's layers are all small
    pipe = make_tiny_pipeline(0)
    state = {key: value.clone() for key, value in pipe.unet.state_dict().items()}
    steps = cpu_kernels.PACK_MIN_STEPS
    pipe.cpu_kernels = False
    plain = run(pipe, lr_image, num_inference_steps=steps)
    assert not packed_calls
    pipe.cpu_kernels = True
    fast = run(pipe, lr_image, num_inference_steps=steps)
    packed_layers = {id(layer) for layer in packed_calls}
    assert packed_layers and all(id(m) not in packed_layers for m in pipe.vae.modules())  # the VAE stays plain
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
    assert all(torch.equal(pipe.unet.state_dict()[key], value) for key, value in state.items())
    packed_calls.clear()
    run(pipe, lr_image, num_inference_steps=steps - 1)  # a short run is not worth packing
    assert not packed_calls


def test_the_heap_is_trimmed_once_before_the_decode_on_cpu(tiny_pipeline, lr_image, monkeypatch):
    """The denoiser's freed working set must not stay resident under the decode (the budget does not count it)."""
    import stablesr.models.cpu_kernels as cpu_kernels
    import stablesr.pipelines.stablesr as module

    events = []
    monkeypatch.setattr(cpu_kernels, "release_free_memory", lambda: events.append("trim") or True)
    monkeypatch.setattr(module, "decode_tiled", lambda *a, **k: events.append("decode") or decode_tiled(*a, **k))
    run(tiny_pipeline, lr_image)
    assert events == ["trim", "decode"]

"""UpscaleSettings: validated once with errors naming the flag; one merge with a fixed precedence."""

import json

import pytest

from stablesr.configs import (
    SettingsError,
    UpscaleSettings,
    flag_of,
    read_upscale_defaults,
    resolve_settings,
)


@pytest.mark.parametrize("values, message", [
    (dict(tile_batch_size=0), r"--tile-batch-size 0 \(tile_batch_size\): must be >= 1"),
    (dict(vae_tile_size=1001), r"--vae-tile-size 1001 \(vae_tile_size\): must be a multiple of 8"),
    (dict(tile_size=16, tile_overlap=16), r"--tile-overlap 16 \(tile_overlap\): must be < the tile size 16"),
    (dict(upscale=0), r"--scale 0 \(upscale\): must be > 0"),
    (dict(num_inference_steps=0), r"--steps 0 \(num_inference_steps\)"),
    (dict(fidelity=1.5), r"--fidelity 1.5 \(fidelity\): must be in \[0, 1\]"),
    (dict(sampler="euler"), r"--sampler 'euler' \(sampler\): must be one of 'ddpm', 'ddim'"),
    (dict(num_inference_steps=2.5), r"--steps 2.5 \(num_inference_steps\): must be int"),
])
def test_bad_values_fail_at_construction_naming_the_flag(values, message):
    with pytest.raises(SettingsError, match=message):
        UpscaleSettings(**values)


def test_settings_are_frozen_and_round_trip_through_json(tmp_path):
    settings = UpscaleSettings(num_inference_steps=4, fidelity=1.0)
    with pytest.raises(AttributeError):
        settings.tile_size = 8
    settings.to_json(tmp_path / "s.json")
    assert UpscaleSettings.from_json(tmp_path / "s.json") == settings


def test_vae_tiles_are_derived_once_and_any_valid_size_works():
    assert UpscaleSettings().vae_encode_tiles == (1024, 128)  # the defaults are unchanged
    assert UpscaleSettings(vae_tile_size=1000).vae_encode_tiles == (1000, 120)  # was an overlap of 125 (not /8)
    assert UpscaleSettings().vae_decode_tiles(8) == (128, 32)
    assert UpscaleSettings(vae_tile_size=64).vae_decode_tiles(8) == (8, 2)


def test_precedence_class_then_model_then_preset_then_explicit():
    model = {"num_inference_steps": 4, "sampler": "ddim", "tile_size": 128, "color_fix": "wavelet", "fidelity": 1.0}
    assert resolve_settings(UpscaleSettings) == UpscaleSettings()
    merged = resolve_settings(UpscaleSettings, model_defaults=model)
    assert (merged.num_inference_steps, merged.sampler, merged.tile_size, merged.fidelity) == (4, "ddim", 128, 1.0)
    merged = resolve_settings(UpscaleSettings, model_defaults=model, preset="paper")
    assert (merged.num_inference_steps, merged.sampler, merged.color_fix) == (200, "ddpm", "adain")
    assert merged.tile_size == 128
    merged = resolve_settings(UpscaleSettings, model_defaults=model, preset="paper",
                              overrides={"num_inference_steps": 7, "tile_overlap": 96})
    assert (merged.num_inference_steps, merged.tile_overlap, merged.tile_size) == (7, 96, 128)  # valid with 128


def test_unknown_names_and_presets_are_refused():
    with pytest.raises(SettingsError, match="unknown setting.*steps"):
        resolve_settings(UpscaleSettings, overrides={"steps": 4})
    with pytest.raises(SettingsError, match="--preset 'fast'"):
        resolve_settings(UpscaleSettings, preset="fast")


def test_upscale_defaults_file_is_read_and_checked(tmp_path):
    assert read_upscale_defaults(tmp_path) == {}  # official weights: no file, the paper's defaults
    (tmp_path / "upscale_defaults.json").write_text(json.dumps({"num_inference_steps": 4, "tile_size": 128}))
    assert read_upscale_defaults(tmp_path) == {"num_inference_steps": 4, "tile_size": 128}
    (tmp_path / "upscale_defaults.json").write_text(json.dumps({"tile_batch_size": 0}))
    with pytest.raises(SettingsError, match="--tile-batch-size 0"):
        read_upscale_defaults(tmp_path)
    (tmp_path / "upscale_defaults.json").write_text(json.dumps({"tile": 3}))
    with pytest.raises(SettingsError, match="upscale_defaults.json: unknown setting"):
        read_upscale_defaults(tmp_path)


def test_flags_generated_from_the_fields_carry_their_help():
    import argparse

    from stablesr.cli.settings_flags import add_settings_arguments, overrides_from_args

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, UpscaleSettings)
    assert flag_of(UpscaleSettings, "num_inference_steps") == "--steps"
    assert flag_of(UpscaleSettings, "tile_batch_size") == "--tile-batch-size"
    text = parser.format_help()
    assert "latent tiles per UNet call (default 4)" in text and "--faithful, --no-faithful" in text
    args = parser.parse_args(["--steps", "4", "--color-fix", "none", "--faithful", "--preset", "turbo"])
    assert overrides_from_args(args, UpscaleSettings) == {"num_inference_steps": 4, "color_fix": "none",
                                                          "faithful": True}
    assert args.preset == "turbo"
    with pytest.raises(SystemExit):
        parser.parse_args(["--sampler", "euler"])


def test_max_memory_is_checked_once_and_the_vae_tile_defaults_to_the_budget():
    assert UpscaleSettings().max_memory == "auto" and UpscaleSettings().vae_tile_size is None
    assert UpscaleSettings(max_memory="6GB").max_memory == "6GB"
    with pytest.raises(SettingsError, match=r"--max-memory '6 gigs' \(max_memory\): must be a size such as 6GB"):
        UpscaleSettings(max_memory="6 gigs")

"""`stablesr upscale` end to end on a tiny random model folder (real components, CPU)."""


import warnings

import numpy as np
import pytest
from PIL import Image

from stablesr.cli.main import format_warning, main

FAST = ["--steps", "2", "--tile-size", "16", "--tile-overlap", "8", "--no-progress"]


def write_photo(path, size=(56, 40), mode="RGB"):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) % 256 + rng.integers(0, 20, (size[1], size[0], 3))
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray((xx * 4 % 256).astype(np.uint8)))
    image.save(path)
    return path


def test_upscales_a_non_square_image_larger_than_one_tile(tmp_path, tiny_model_dir):
    src = write_photo(tmp_path / "photo.png")  # 56x40 -> 224x160, latent 28x20: 3 x 2 tiles of 16
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), *FAST])
    assert code == 0
    out = Image.open(tmp_path / "out" / "photo.png")
    assert out.size == (224, 160) and out.mode == "RGB"


def test_existing_outputs_need_a_flag_and_bad_files_do_not_stop_the_rest(tmp_path, tiny_model_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_photo(inputs / "a.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    write_photo(inputs / "c.png", mode="RGBA")
    out = tmp_path / "out"
    args = ["upscale", str(inputs), "-o", str(out), "--model", str(tiny_model_dir), *FAST]
    assert main(args) == 1  # one bad file -> non-zero exit, the others written
    assert (out / "a.png").is_file() and (out / "c.png").is_file() and not (out / "broken.png").exists()
    assert "broken.png" in capsys.readouterr().out
    assert Image.open(out / "c.png").mode == "RGBA"  # alpha upscaled and re-attached
    before = (out / "a.png").read_bytes()
    assert main(args) == 2  # refuses to overwrite silently
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--skip-existing"]) == 1  # only the broken file is retried
    assert (out / "a.png").read_bytes() == before
    assert main([*args, "--overwrite", "--seed", "7"]) == 1
    assert (out / "a.png").read_bytes() != before


def test_runs_writes_seeded_samples_in_subfolders(tmp_path, tiny_model_dir):
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--runs", "2", *FAST]) == 0
    first, second = (np.asarray(Image.open(out / f"sample{k}" / "p.png")) for k in range(2))
    assert first.shape == (64, 96, 3) and not np.array_equal(first, second)


def test_without_any_model_one_clear_message_says_what_to_get(tmp_path, capsys, monkeypatch):
    """An installation without the bundled model (and no --model/--weights) names the weights to get."""
    import stablesr.weights.bundled as bundled

    monkeypatch.setattr(bundled, "default_model", lambda: None)
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    assert main(["upscale", str(src), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "stablesr_000117.ckpt" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "p.png").exists()


def test_missing_model_folder_is_reported_clearly(tmp_path, capsys):
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope"), *FAST]) == 2
    assert "model_index.json" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--faithful", "--preset=turbo"])
def test_sampling_flags_are_accepted(tmp_path, tiny_model_dir, flag):
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    args = ["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir), *FAST, flag]
    assert main(args) == 0


def test_stream_weights_gives_the_same_picture_and_warns_in_one_line_when_it_cannot(tmp_path, tiny_model_dir,
                                                                                   capsys):
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    common = ["upscale", str(src), "--model", str(tiny_model_dir), *FAST]
    assert main([*common, "-o", str(tmp_path / "resident")]) == 0
    assert main([*common, "-o", str(tmp_path / "streamed"), "--stream-weights"]) == 0
    assert "no weights to stream" not in capsys.readouterr().err  # the folder's fp32 weights are mapped: they stream
    resident, streamed = (np.asarray(Image.open(tmp_path / d / "p.png")) for d in ("resident", "streamed"))
    assert np.array_equal(resident, streamed)
    # converted to bf16 the weights are copies in memory: nothing to stream, and the user is told so, in
    # one line on the command line
    with pytest.warns(UserWarning, match="no weights to stream") as caught:
        assert main([*common, "-o", str(tmp_path / "bf16"), "--stream-weights", "--dtype", "bf16"]) == 0
    (warning,) = [w for w in caught if "no weights to stream" in str(w.message)]
    line = format_warning(warning.message, warning.category, warning.filename, warning.lineno)
    assert line.startswith("warning: stream_weights: no weights to stream") and line.count("\n") == 1
    assert warnings.formatwarning is not format_warning  # main() restored Python's own


def test_bf16_runs_and_stays_close_to_fp32(tmp_path, tiny_model_dir):
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    for dtype in ("fp32", "bf16"):
        args = ["upscale", str(src), "-o", str(tmp_path / dtype), "--model", str(tiny_model_dir), "--dtype", dtype]
        assert main([*args, *FAST, "--color-fix", "none"]) == 0
    fp32, bf16 = (np.asarray(Image.open(tmp_path / d / "p.png"), dtype=np.float64) for d in ("fp32", "bf16"))
    assert np.abs(fp32 - bf16).mean() < 25  # same picture, lower precision (8-bit levels)


def test_realesrgan_baseline_and_preclean(tmp_path, tiny_model_dir):
    from stablesr.errors import WeightsNotFoundError
    from stablesr.weights.realesrgan import find_realesrgan_ncnn_files

    try:
        find_realesrgan_ncnn_files()
    except WeightsNotFoundError as error:
        pytest.skip(str(error))
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    assert main(["upscale", str(src), "-o", str(tmp_path / "esr"), "--method", "realesrgan", "--no-progress"]) == 0
    assert Image.open(tmp_path / "esr" / "p.png").size == (96, 64)
    args = ["upscale", str(src), "-o", str(tmp_path / "pre"), "--model", str(tiny_model_dir),
            "--preclean", "realesrgan"]
    assert main([*args, *FAST]) == 0
    assert Image.open(tmp_path / "pre" / "p.png").size == (96, 64)


def test_half_precision_falls_back_to_fp32_when_non_finite_values_appear(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import torch

    from stablesr.pipelines.stablesr import NonFiniteOutputError, StableSRPipeline

    original = StableSRPipeline._upscale_one
    seen = []

    def flaky(self, *args, **kwargs):  # simulate fp16/bf16 overflow: NaN unless the UNet runs in fp32
        seen.append(self.unet.dtype)
        if self.unet.dtype != torch.float32:
            raise NonFiniteOutputError("NaN in the sampled latent")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableSRPipeline, "_upscale_one", flaky)
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    args = ["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir), "--dtype", "bf16", *FAST]
    assert main(args) == 0
    assert seen == [torch.bfloat16, torch.float32]
    assert "switching to float32" in capsys.readouterr().err
    assert Image.open(tmp_path / "o" / "p.png").size == (96, 64)


def test_bad_settings_fail_before_any_model_loads_naming_the_flag(tmp_path, capsys):
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    for flag, value in (("--tile-batch-size", "0"), ("--vae-tile-size", "1001")):
        args = ["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "absent"), flag, value]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{flag} {value}" in err and "model_index.json" not in err  # no model was looked for


def test_model_folder_defaults_apply_and_explicit_flags_win(tmp_path, tiny_model_dir):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "upscale_defaults.json").write_text(json.dumps({"num_inference_steps": 2, "tile_size": 16,
                                                             "tile_overlap": 8, "color_fix": "none"}))
    src = write_photo(tmp_path / "p.png", size=(24, 16))
    common = ["upscale", str(src), "--no-progress"]
    assert main([*common, "-o", str(tmp_path / "implicit"), "--model", str(model)]) == 0
    assert main([*common, "-o", str(tmp_path / "explicit"), "--model", str(tiny_model_dir), "--steps", "2",
                 "--tile-size", "16", "--tile-overlap", "8", "--color-fix", "none"]) == 0
    assert main([*common, "-o", str(tmp_path / "override"), "--model", str(model), "--color-fix", "wavelet"]) == 0
    implicit, explicit, override = (np.asarray(Image.open(tmp_path / d / "p.png")) for d in
                                    ("implicit", "explicit", "override"))
    assert np.array_equal(implicit, explicit) and not np.array_equal(implicit, override)

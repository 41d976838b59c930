"""`stablesr bench models` prints figures for a tiny configuration (no assertions on the numbers)."""

from stablesr.cli.main import main


def test_bench_models_tiny_prints_every_phase(capsys):
    assert main(["bench", "models", "--size", "tiny", "--image-sizes", "512,1024", "--decode-sizes", "64",
                 "--rounds", "1", "--dtypes", "fp32,bf16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("diffusers UNet step") == 2  # the baseline line and its row
    assert out.count("step 512 (1 tile)") == 2 and out.count("step 1024 (9 tiles) from batches") == 2  # per dtype
    assert out.count("decode 64 ") == 3  # the plain AutoencoderKL, the tiled CFW, CFW on the encode's features
    assert "decode 64 plain AutoencoderKL (no CFW)" in out and "features from the encode" in out
    assert "x baseline" in out and "bf16 step output vs fp32" in out and "peak MB" in out


def test_bench_metrics_prints_each_metric_against_niqe(capsys):
    import pytest

    assert main(["bench", "metrics", "--metrics", "psnr,brisque,lpips", "--width", "128", "--height", "96",
                 "--repeats", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("128x96 image, device cpu")
    assert [line.split()[0] for line in lines[1:]] == ["psnr", "brisque", "lpips"]  # the baseline is not asked for
    assert all("vs NIQE" in line and "MB" in line for line in lines[1:])
    with pytest.raises(SystemExit, match="does not know piqe"):
        main(["bench", "metrics", "--metrics", "psnr,piqe"])


def test_bench_metrics_image_pair_is_close_but_not_equal():
    import numpy as np

    from stablesr.bench.metrics import photo_like
    from stablesr.metrics.fidelity import psnr

    sr, gt = photo_like(96, 128)
    assert sr.shape == gt.shape == (96, 128, 3) and sr.dtype == np.uint8
    assert 30 < psnr(sr, gt, channel="rgb") < 40  # Gaussian noise of sigma 4: about 36 dB


def test_bench_official_names_what_is_missing(tmp_path, capsys):
    assert main(["bench", "official", "--official-repo", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "not a checkout of the official StableSR code" in error
    assert "openaimodel.py" in error and "v2-finetune_text_T_512.yaml" in error


def test_bench_official_rrdb_stand_in_is_the_published_block(monkeypatch):
    """The stand-in for BasicSR's RRDB (plain concatenations) computes what our RRDB computes, bit for bit."""
    import sys

    import torch

    from stablesr.bench.official import _install_basicsr_stand_in
    from stablesr.models.rrdb import RRDB

    for name in [name for name in sys.modules if name == "basicsr" or name.startswith("basicsr.")]:
        monkeypatch.delitem(sys.modules, name)
    _install_basicsr_stand_in()
    try:
        stand_in_class = sys.modules["basicsr.archs.rrdbnet_arch"].RRDB
        blocks = sys.modules["basicsr.archs.arch_util"].make_layer(stand_in_class, 2, num_feat=16, num_grow_ch=8)
    finally:
        for name in [name for name in sys.modules if name == "basicsr" or name.startswith("basicsr.")]:
            del sys.modules[name]
    ours = torch.nn.Sequential(RRDB(16, 8), RRDB(16, 8))
    ours.load_state_dict(blocks.state_dict())
    x = torch.randn(1, 16, 12, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(blocks(x), ours(x))
        assert not torch.equal(blocks(x), x)


def test_bench_random_model_writes_a_loadable_seeded_folder_and_never_overwrites(tmp_path, capsys):
    """The folder loads as a StableSRPipeline whose weights are exactly `build_random_pipeline(seed)`'s, a
    different seed gives different weights, `stablesr upscale` runs on it, and an existing folder is refused
    with nothing written."""
    import torch
    from PIL import Image

    from stablesr.bench.random_model import build_random_pipeline
    from stablesr.pipelines.stablesr import StableSRPipeline

    folder = tmp_path / "random"
    assert main(["bench", "random-model", "-o", str(folder), "--size", "tiny", "--seed", "3"]) == 0
    assert f"wrote {folder} (tiny, seed 3" in capsys.readouterr().out
    loaded = StableSRPipeline.from_pretrained(folder)
    expected, other = build_random_pipeline("tiny", 3), build_random_pipeline("tiny", 4)
    for name in ("unet", "sr_module", "vae", "prompt_embeds"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(expected, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    assert not torch.equal(loaded.unet.conv_in.weight, other.unet.conv_in.weight)
    assert loaded.prompt_embeds.get("null").shape == (1, 77, 64)
    assert [path.name for path in tmp_path.iterdir()] == ["random"]  # no staging folder left

    Image.new("RGB", (16, 12), (90, 140, 200)).save(tmp_path / "lr.png")
    assert main(["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"), "--model", str(folder),
                 "--steps", "1", "--no-progress", "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out" / "lr.png").size == (64, 48)

    before = sorted(path.relative_to(folder) for path in folder.rglob("*"))
    assert main(["bench", "random-model", "-o", str(folder), "--size", "tiny"]) == 2
    assert "exists" in capsys.readouterr().err
    assert sorted(path.relative_to(folder) for path in folder.rglob("*")) == before

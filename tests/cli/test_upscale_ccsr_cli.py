"""`stablesr upscale --method ccsr` end to end on a tiny random CCSR folder; method-specific flags."""

import numpy as np
import pytest
from PIL import Image
from tiny_ccsr import make_tiny_ccsr_pipeline

from stablesr.cli.main import main


@pytest.fixture(scope="module")
def ccsr_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-ccsr")
    make_tiny_ccsr_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def write_photo(path, size=(20, 12)):
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    Image.fromarray((np.stack([xx * 9, yy * 13, (xx + yy) * 5], -1) % 256).astype(np.uint8)).save(path)
    return path


def test_upscales_with_the_ccsr_method(tmp_path, ccsr_dir):
    src = write_photo(tmp_path / "p.png")  # 20x12 -> 80x48, latent 10x6: 2 x 1 tiles of 6
    args = ["upscale", str(src), "-o", str(tmp_path / "out"), "--method", "ccsr", "--model", str(ccsr_dir),
            "--steps", "15", "--t-max", "0.6667", "--control-strength", "0.8", "--tile-size", "6",
            "--tile-overlap", "2", "--min-size", "32", "--no-progress"]
    assert main(args) == 0
    out = Image.open(tmp_path / "out" / "p.png")
    assert out.size == (80, 48) and out.mode == "RGB"
    assert main([*args[:3], str(tmp_path / "again"), *args[4:]]) == 0  # same seed, same bytes
    assert (tmp_path / "again" / "p.png").read_bytes() == (tmp_path / "out" / "p.png").read_bytes()


def test_a_flag_of_another_method_is_refused_by_name(tmp_path, ccsr_dir, capsys):
    src = write_photo(tmp_path / "p.png")
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--method", "ccsr", "--model", str(ccsr_dir),
                 "--fidelity", "0.5"])
    assert code != 0 and "--fidelity" in capsys.readouterr().err
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--t-max", "0.5", "--model", str(ccsr_dir)])
    assert code != 0 and "--t-max does not apply to --method stablesr" in capsys.readouterr().err


def test_missing_model_names_what_to_convert(tmp_path, capsys):
    src = write_photo(tmp_path / "p.png")
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--method", "ccsr"]) != 0
    assert "real-world_ccsr.ckpt" in capsys.readouterr().err

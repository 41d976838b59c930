"""`stablesr degrade` end to end: outputs, byte-identical reruns, skipped files, sizes, console script."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablesr.cli.main import main
from stablesr.data.degradations import apply_degradation, params_from_record


@pytest.fixture
def hr_dir(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (height, width) in {"one": (150, 170), "two": (130, 128)}.items():
        y, x = np.mgrid[0:height, 0:width]
        gradient = np.stack([x / width, y / height, (x * y) / (height * width)], -1) * 220
        image = gradient + rng.normal(0, 5, (height, width, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writes_pairs_and_reruns_byte_identical(hr_dir, tmp_path, capsys):
    args = [str(hr_dir), "--preset", "ccsr", "--crop", "128", "--seed", "7", "--count", "2"]
    assert main(["degrade", *args, "-o", str(tmp_path / "a")]) == 0
    assert main(["degrade", *args, "-o", str(tmp_path / "b")]) == 0
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first == second
    assert sorted(first) == sorted(
        [f"{d}/{n}_{k:03d}.png" for d in ("hr", "lr") for n in ("one", "two") for k in range(2)] + ["params.jsonl"]
    )
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.jpg" in captured.err and "4 pairs" in captured.out
    records = [json.loads(line) for line in first["params.jsonl"].decode().splitlines()]
    assert [r["name"] for r in records] == ["one_000", "one_001", "two_000", "two_001"]
    # the record alone rebuilds the LR from the HR crop that was written (ccsr: no USM)
    record = records[0]
    hr = torch.from_numpy(np.array(Image.open(tmp_path / "a" / "hr" / "one_000.png"))).permute(2, 0, 1)[None] / 255.0
    lr = torch.from_numpy(np.array(Image.open(tmp_path / "a" / "lr" / "one_000.png"))).permute(2, 0, 1)[None] / 255.0
    assert lr.shape == (1, 3, 32, 32)
    assert torch.equal(apply_degradation(hr.float(), [params_from_record(record["params"])]).lr, lr.float())
    # the crop is the source pixels at the recorded corner
    top, left = record["crop_top_left"]
    source = np.array(Image.open(hr_dir / "one.png"))[top : top + 128, left : left + 128]
    assert np.array_equal(np.array(Image.open(tmp_path / "a" / "hr" / "one_000.png")), source)


def test_other_seed_differs_and_scale_two_sizes(hr_dir, tmp_path):
    main(["degrade", str(hr_dir / "one.png"), "-o", str(tmp_path / "a"), "--preset", "bicubic", "--crop", "0",
          "--scale", "2"])
    lr = Image.open(tmp_path / "a" / "lr" / "one.png")
    assert lr.size == (85, 75) and Image.open(tmp_path / "a" / "hr" / "one.png").size == (170, 150)
    main(["degrade", str(hr_dir / "one.png"), "-o", str(tmp_path / "s1"), "--preset", "stablesr", "--crop", "128",
          "--seed", "1"])
    main(["degrade", str(hr_dir / "one.png"), "-o", str(tmp_path / "s2"), "--preset", "stablesr", "--crop", "128",
          "--seed", "2"])
    assert _files(tmp_path / "s1")["lr/one.png"] != _files(tmp_path / "s2")["lr/one.png"]


def test_config_overrides_and_bad_arguments(hr_dir, tmp_path, capsys):
    config = tmp_path / "over.json"
    config.write_text(json.dumps({"jpeg2_range": [90, 90], "jpeg1_range": [70, 70]}))
    main(["degrade", str(hr_dir / "two.png"), "-o", str(tmp_path / "c"), "--preset", "stablesr", "--crop", "128",
          "--config", str(config)])
    record = json.loads((tmp_path / "c" / "params.jsonl").read_text())
    assert record["params"]["jpeg2_quality"] == 90 and record["params"]["jpeg1_quality"] == 70
    assert main(["degrade", str(hr_dir), "-o", str(tmp_path / "d"), "--crop", "130"]) == 2
    assert "multiple" in capsys.readouterr().err


def test_installed_console_script(hr_dir, tmp_path):
    script = shutil.which("stablesr") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "stablesr")
    if not Path(script).exists():
        pytest.skip("the stablesr console script is not installed")
    result = subprocess.run(
        [script, "degrade", str(hr_dir / "two.png"), "-o", str(tmp_path / "o"), "--preset", "bicubic", "--crop", "64"],
        capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "o" / "lr" / "two.png").size == (16, 16)

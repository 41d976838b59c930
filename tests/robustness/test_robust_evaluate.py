"""`stablesr evaluate` with unreadable images and unwritable result files: unreadable images are
left out and named, a bad destination is refused before any metric runs, a full disk at the end
exits 1 after the table."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from robust_helpers import bad_images, write_image


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    for index in range(3):
        write_image(tmp_path / "gt" / f"im{index}.png", size=(40, 32), seed=index)
        write_image(tmp_path / "pred" / f"im{index}.png", size=(40, 32), seed=index + 10)
    return tmp_path / "pred", tmp_path / "gt"


@pytest.mark.parametrize("side", ["pred", "gt"])
@pytest.mark.parametrize("kind", ["empty.png", "truncated.jpg", "header_only.png", "garbage.webp", "text.bmp"])
def test_an_unreadable_image_is_left_out_and_named(cli, folders, tmp_path, side, kind):
    pred, gt = folders
    name = Path(kind).stem
    bad = bad_images(tmp_path / "bad")[kind]
    (pred if side == "pred" else gt).joinpath(kind).write_bytes(bad.read_bytes())
    write_image((gt if side == "pred" else pred) / f"{name}.png", size=(40, 32))
    code, out, err = cli("evaluate", pred, "--gt", gt, "--metrics", "psnr", "--json", tmp_path / "r.json")
    assert code == 0 and "3 images, 1 run(s), 1 unreadable image(s) left out" in out
    assert f"skipped {name}" in err
    result = json.loads((tmp_path / "r.json").read_text())
    assert [row["name"] for row in result["rows"]] == ["im0", "im1", "im2"]
    assert len(result["summary"]["skipped"]) == 1 and result["summary"]["skipped"][0].startswith(f"{name}: ")


def test_all_unreadable_is_one_error(cli, tmp_path):
    bad_images(tmp_path / "pred")
    code, _, err = cli("evaluate", tmp_path / "pred", "--metrics", "niqe")
    assert code == 1 and "none of the 5 images could be read" in err


@pytest.mark.parametrize("flag", ["--json", "--csv", "--plot"])
def test_a_folder_as_result_file_is_refused_before_any_work(cli, folders, tmp_path, flag, monkeypatch):
    from stablesr.metrics import evaluate

    if flag == "--plot":
        pytest.importorskip("matplotlib")

    monkeypatch.setattr(evaluate, "_evaluate_folder", lambda *a: pytest.fail("metrics ran"))
    (tmp_path / "results").mkdir()
    for overwrite in ([], ["--overwrite"]):
        code, _, err = cli("evaluate", folders[0], "--gt", folders[1], flag, tmp_path / "results", *overwrite)
        assert code == 2 and f"{flag} {tmp_path / 'results'} is a folder" in err
    assert list((tmp_path / "results").iterdir()) == []


def test_a_file_in_place_of_the_result_folder_is_refused_before_any_work(cli, folders, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, out, err = cli("evaluate", folders[0], "--gt", folders[1], "--csv", tmp_path / "afile" / "r.csv")
    assert code == 1 and "cannot write" in err and out == "" and (tmp_path / "afile").read_text() == "x"


def test_a_full_disk_when_writing_results_exits_1_after_the_table(cli, folders, tmp_path, monkeypatch):
    import stablesr.imaging

    def full_disk(path, write, *, overwrite=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stablesr.imaging, "write_file_atomic", full_disk)
    code, out, err = cli("evaluate", folders[0], "--gt", folders[1], "--json", tmp_path / "r.json")
    assert code == 1 and "3 images, 1 run(s)" in out and f"cannot write {tmp_path / 'r.json'}" in err
    assert "No space left on device" in err and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv, expected_code, message", [
    (["--runs", "0"], 2, "--runs must be >= 1"),
    (["--crop-border", "-1"], 2, "--crop-border >= 0"),
    (["--metrics", "psnr,nonsense"], 1, "unknown metric nonsense"),
    (["--runs", "2"], 1, "needs folders sample0..sample1"),
])
def test_bad_arguments_are_one_line(cli, folders, argv, expected_code, message):
    code, _, err = cli("evaluate", folders[0], "--gt", folders[1], *argv)
    assert code == expected_code and message in err and err.count("\n") == 1, err


def test_device_cuda_without_cuda_is_one_line(cli, folders):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = cli("evaluate", folders[0], "--gt", folders[1], "--device", "cuda")
    assert code == 2 and err == "error: --device cuda requested but CUDA is not available\n"

"""CLI file layer: collecting inputs, naming outputs, skip/overwrite, and a run that survives bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stablesr.cli.files import (
    IMAGE_SUFFIXES,
    RunPlan,
    RunReport,
    collect_inputs,
    output_path_for,
    plan_outputs,
    process_files,
)
from stablesr.errors import StableSRError
from stablesr.imaging import load_image, save_image_atomic


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (value, value, value)).save(path)
    return path


@pytest.fixture()
def tree(tmp_path) -> Path:
    """in/ with b.png, a.JPG, notes.txt, .hidden.png, ._a.jpg (macOS), sub/c.webp, sub/.cache/d.png."""
    root = tmp_path / "in"
    for name in ("b.png", "a.JPG", ".hidden.png", "._a.jpg", "sub/c.webp", "sub/.cache/d.png"):
        _image(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def test_collect_folder_sorted_filtered(tree):
    assert collect_inputs([tree]) == [tree / "a.JPG", tree / "b.png"]
    assert collect_inputs([tree], recursive=True) == [tree / "a.JPG", tree / "b.png", tree / "sub" / "c.webp"]


def test_collect_files_and_duplicates(tree):
    again = tree / "sub" / ".." / "b.png"
    assert collect_inputs([tree / "b.png", tree, again]) == [tree / "a.JPG", tree / "b.png"]
    assert collect_inputs([str(tree / "sub" / "c.webp")]) == [tree / "sub" / "c.webp"]


def test_collect_errors(tree):
    with pytest.raises(StableSRError, match=r"input .*missing.png does not exist"):
        collect_inputs([tree / "b.png", tree / "missing.png"])
    with pytest.raises(StableSRError, match=r"notes.txt is not an image file"):
        collect_inputs([tree / "notes.txt"])


def test_output_path_for():
    assert output_path_for(Path("in/x.jpg"), output_dir=Path("out")) == Path("out/x.jpg")
    assert output_path_for(Path("in/x.jpg"), output_dir=Path("out"), suffix="PNG") == Path("out/x.png")
    assert output_path_for(Path("in/a/x.v2.jpg"), output_dir=Path("out"), suffix=".png", input_root=Path("in")) == Path(
        "out/a/x.v2.png"
    )
    with pytest.raises(StableSRError, match="output suffix 'gif'"):
        output_path_for(Path("x.jpg"), output_dir=Path("out"), suffix="gif")
    assert ".png" in IMAGE_SUFFIXES and ".jpeg" in IMAGE_SUFFIXES


def test_plan_keeps_relative_subpaths(tree, tmp_path):
    out = tmp_path / "out"
    plan = plan_outputs([tree], output_dir=out, suffix="png", recursive=True)
    assert plan == [
        (tree / "a.JPG", out / "a.png"),
        (tree / "b.png", out / "b.png"),
        (tree / "sub" / "c.webp", out / "sub" / "c.png"),
    ]
    assert plan.skipped == []


def test_plan_existing_output_error_skip_overwrite(tree, tmp_path):
    out = tmp_path / "out"
    _image(out / "b.png")
    message = r"output .*out/b.png already exists; pass --skip-existing .* or --overwrite"
    with pytest.raises(StableSRError, match=message):
        plan_outputs([tree], output_dir=out, suffix="png")
    skip = plan_outputs([tree], output_dir=out, suffix="png", skip_existing=True)
    assert skip == [(tree / "a.JPG", out / "a.png")] and skip.skipped == [tree / "b.png"]
    replace = plan_outputs([tree], output_dir=out, suffix="png", overwrite=True)
    assert [pair[1] for pair in replace] == [out / "a.png", out / "b.png"] and replace.skipped == []
    with pytest.raises(StableSRError, match="contradict"):
        plan_outputs([tree], output_dir=out, skip_existing=True, overwrite=True)


def test_plan_counts_more_existing(tree, tmp_path):
    out = tmp_path / "out"
    _image(out / "a.png"), _image(out / "b.png")
    with pytest.raises(StableSRError, match=r"a.png already exists \(and 1 more\)"):
        plan_outputs([tree], output_dir=out, suffix="png")


def test_plan_refuses_clashes(tmp_path):
    first, second = _image(tmp_path / "x" / "p.png"), _image(tmp_path / "y" / "p.jpg")
    with pytest.raises(StableSRError, match=r"inputs .*p.png and .*p.jpg would both be written to .*p.png"):
        plan_outputs([first, second], output_dir=tmp_path / "out", suffix="png")
    with pytest.raises(StableSRError, match="would replace its input"):
        plan_outputs([tmp_path / "x"], output_dir=tmp_path / "x", overwrite=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StableSRError, match="no images found in"):
        plan_outputs([tmp_path / "empty"], output_dir=tmp_path / "out")


def _invert(input_path: Path, output_path: Path) -> None:
    """A stand-in for the upscaler: reads, inverts, writes atomically."""
    loaded = load_image(input_path)
    inverted = Image.fromarray(255 - np.asarray(loaded.rgb))
    save_image_atomic(inverted, output_path, overwrite=True)


def test_process_files_continues_after_bad_file(tmp_path):
    good_a, good_b = _image(tmp_path / "in" / "a.png", 10), _image(tmp_path / "in" / "c.png", 30)
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG broken")
    plan = plan_outputs([tmp_path / "in"], output_dir=tmp_path / "out")
    report = process_files(plan, _invert, progress=False)
    assert report.done == [good_a, good_b]
    assert [file.name for file, _ in report.failed] == ["b.png"]
    assert "not a recognised image format" in report.failed[0][1]
    assert report.exit_code == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
    assert np.asarray(Image.open(tmp_path / "out" / "c.png"))[0, 0].tolist() == [225, 225, 225]
    assert report.summary().splitlines()[0] == "2 done, 0 skipped, 1 failed"
    assert report.summary().splitlines()[1].startswith(f"  failed: {tmp_path / 'in' / 'b.png'}: cannot read image")


def test_a_failed_call_never_removes_an_output_another_run_wrote(tmp_path):
    source = _image(tmp_path / "in" / "a.png")
    target = tmp_path / "out" / "a.png"

    def other_run_writes_then_this_one_fails(input_path: Path, output_path: Path) -> None:
        _image(output_path, 7)  # a concurrent run into the same folder finishes this file first
        raise OSError("device lost")

    report = process_files(RunPlan([(source, target)]), other_run_writes_then_this_one_fails, progress=False)
    assert report.failed == [(source, "device lost")] and report.exit_code == 1
    assert np.asarray(Image.open(target))[0, 0].tolist() == [7, 7, 7]  # kept: writes are atomic, nothing to undo

    def save_without_overwrite(input_path: Path, output_path: Path) -> None:
        save_image_atomic(Image.new("RGB", (4, 4), (1, 2, 3)), output_path, overwrite=False)

    report = process_files(RunPlan([(source, target)]), save_without_overwrite, progress=False)
    assert report.skipped == [source] and report.exit_code == 0  # appeared since planning: skipped, not replaced
    assert np.asarray(Image.open(target))[0, 0].tolist() == [7, 7, 7]


def test_no_clobber_save_is_atomic_against_a_racing_writer(tmp_path, monkeypatch):
    from stablesr.imaging import OutputExistsError

    target = tmp_path / "x.png"
    real_link = os.link

    def link_after_a_rival(src, dst):  # the rival's file lands between our check and our rename
        _image(Path(dst), 5)
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_a_rival)
    with pytest.raises(OutputExistsError, match="appeared"):
        save_image_atomic(Image.new("RGB", (4, 4), (1, 2, 3)), target, overwrite=False)
    assert np.asarray(Image.open(target))[0, 0].tolist() == [5, 5, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temporary file left behind


def test_process_files_bug_propagates(tmp_path):
    source = _image(tmp_path / "a.png")

    def buggy(input_path: Path, output_path: Path) -> None:
        raise KeyError("a bug, not a bad file")

    with pytest.raises(KeyError):
        process_files(RunPlan([(source, tmp_path / "o.png")]), buggy, progress=False)


def test_report_with_skips_and_progress(tree, tmp_path, capsys):
    out = tmp_path / "out"
    _image(out / "b.png")
    plan = plan_outputs([tree], output_dir=out, suffix="png", skip_existing=True)
    report = process_files(plan, _invert, progress=True)
    assert report.done == [tree / "a.JPG"] and report.skipped == [tree / "b.png"]
    assert process_files(list(plan), _invert, progress=False).skipped == []  # plain pairs carry no skips
    assert (report.exit_code, report.summary()) == (0, "1 done, 1 skipped, 0 failed")
    assert "1/1" in capsys.readouterr().err  # the tqdm bar went to stderr
    assert RunReport().exit_code == 0

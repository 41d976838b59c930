"""`stablesr degrade` under bad inputs, reruns, interruption and a full disk: params.jsonl keeps a
record for every finished pair, and nothing prints a traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from robust_helpers import bad_images, write_image

BICUBIC = ["--preset", "bicubic", "--crop", "64"]


@pytest.fixture
def hr_dir(tmp_path) -> Path:
    for index, name in enumerate(["a", "b", "c"]):
        write_image(tmp_path / "hr_in" / f"{name}.png", seed=index)
    return tmp_path / "hr_in"


def _names(folder: Path) -> list[str]:
    return [json.loads(line)["name"] for line in (folder / "params.jsonl").read_text().splitlines()]


def test_rerun_without_overwrite_keeps_every_record(cli, hr_dir, tmp_path):
    out = tmp_path / "pairs"
    assert cli("degrade", hr_dir, "-o", out, *BICUBIC)[0] == 0
    before = (out / "params.jsonl").read_bytes()
    code, _, err = cli("degrade", hr_dir, "-o", out, *BICUBIC, "--seed", "5")
    assert code == 1 and err.count("pass --overwrite") == 3
    assert (out / "params.jsonl").read_bytes() == before


def test_second_batch_appends_records(cli, hr_dir, tmp_path):
    out = tmp_path / "pairs"
    assert cli("degrade", hr_dir / "a.png", hr_dir / "b.png", "-o", out, *BICUBIC)[0] == 0
    assert cli("degrade", hr_dir / "c.png", "-o", out, *BICUBIC)[0] == 0
    assert _names(out) == ["a", "b", "c"]


def test_overwrite_keeps_the_newest_record_per_name(cli, hr_dir, tmp_path):
    out = tmp_path / "pairs"
    assert cli("degrade", hr_dir, "-o", out, *BICUBIC, "--seed", "1")[0] == 0
    first = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert cli("degrade", hr_dir / "b.png", "-o", out, *BICUBIC, "--seed", "2", "--overwrite")[0] == 0
    second = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert [r["name"] for r in second] == ["a", "b", "c"]
    assert second[0] == first[0] and second[2] == first[2] and second[1] != first[1]


def test_a_torn_last_line_is_ended_before_appending(cli, hr_dir, tmp_path):
    out = tmp_path / "pairs"
    assert cli("degrade", hr_dir / "a.png", "-o", out, *BICUBIC)[0] == 0
    with open(out / "params.jsonl", "a") as file:
        file.write('{"name": "torn", "sou')  # a run killed in the middle of a line
    assert cli("degrade", hr_dir / "b.png", "-o", out, *BICUBIC)[0] == 0
    lines = (out / "params.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["name"] == "b"


def test_full_disk_stops_with_exit_1_and_keeps_finished_records(cli, hr_dir, tmp_path, monkeypatch):
    from stablesr.cli import degrade

    real_save, calls = degrade._save, []

    def save_until_full(tensor, path, overwrite):
        calls.append(path)
        if len(calls) > 2:  # the second pair's HR image hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensor, path, overwrite)

    monkeypatch.setattr(degrade, "_save", save_until_full)
    code, _, err = cli("degrade", hr_dir, "-o", tmp_path / "pairs", *BICUBIC)
    assert code == 1 and "No space left on device" in err
    assert _names(tmp_path / "pairs") == ["a"]


def test_corrupt_images_are_skipped_and_named(cli, hr_dir, tmp_path):
    broken = bad_images(tmp_path / "hr_in" / "broken")
    code, out, err = cli("degrade", hr_dir, "-o", tmp_path / "pairs", *BICUBIC)
    assert code == 0 and f"wrote 3 pairs to {tmp_path / 'pairs'} ({len(broken)} image(s) skipped)" in out
    assert all(f"skipped {path}" in err for path in broken.values())
    assert _names(tmp_path / "pairs") == ["a", "b", "c"]


def test_only_corrupt_images_exit_1(cli, tmp_path):
    bad_images(tmp_path / "broken")
    code, out, _ = cli("degrade", tmp_path / "broken", "-o", tmp_path / "pairs", *BICUBIC)
    assert code == 1 and "wrote 0 pairs" in out


def _bad_argument_cases(tmp_path: Path) -> dict[str, tuple[list, int, str]]:
    configs = {"syntax.yaml": "noise1: [1, 2\n", "syntax.json": "{noise1: 1", "list.yaml": "- 1\n- 2\n",
               "section.yaml": "noise1: 5\n", "unknown.yaml": "no_such_setting: 1\n",
               "pair.yaml": "jpeg1_range: abc\n"}
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "afile").write_text("x")
    return {
        "yaml syntax": (["--config", tmp_path / "syntax.yaml"], 2, "syntax.yaml is not valid YAML"),
        "json syntax": (["--config", tmp_path / "syntax.json"], 2, "syntax.json is not valid JSON"),
        "yaml list": (["--config", tmp_path / "list.yaml"], 2, "must hold a mapping"),
        "section scalar": (["--config", tmp_path / "section.yaml", "--preset", "realesrgan"], 2, "noise1"),
        "unknown setting": (["--config", tmp_path / "unknown.yaml"], 2, "no_such_setting"),
        "pair as text": (["--config", tmp_path / "pair.yaml", "--preset", "stablesr"], 2, "a list of 2 values"),
        "missing config": (["--config", tmp_path / "absent.yaml"], 2, "absent.yaml"),
        "bad device": (["--device", "toaster"], 2, "'toaster' is not a torch device"),
        "cuda": (["--device", "cuda"], 2, "CUDA is not available"),
        "output is a file": (["-o", tmp_path / "afile"], 2, "is a file, not a folder"),
        "crop not multiple": (["--crop", "66"], 2, "multiple of --scale"),
    }


@pytest.mark.parametrize("case", ["yaml syntax", "json syntax", "yaml list", "section scalar", "unknown setting",
                                  "pair as text", "missing config", "bad device", "cuda", "output is a file",
                                  "crop not multiple"])
def test_bad_arguments_are_one_line(cli, hr_dir, tmp_path, case):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    extra, expected_code, message = _bad_argument_cases(tmp_path)[case]
    argv = ["degrade", hr_dir, "-o", tmp_path / "pairs", *BICUBIC, *extra]
    code, _, err = cli(*argv)
    assert code == expected_code and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "pairs").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_sigint_mid_run_keeps_a_record_for_every_finished_pair(tmp_path):
    for index in range(100):
        write_image(tmp_path / "many" / f"img{index:03d}.png", size=(160, 160), seed=index)
    out = tmp_path / "pairs"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "stablesr.cli.main", "degrade", str(tmp_path / "many"), "-o", str(out),
               "--preset", "realesrgan", "--crop", "128", "--count", "5"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # generous: a loaded 2-core machine starts torch slowly
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "params.jsonl").is_file() and len((out / "params.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)
    if process.returncode == 0:
        pytest.skip("all 500 pairs were written before the signal arrived")
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    pairs = sorted(p.stem for p in (out / "lr").glob("*.png"))
    assert 2 <= len(pairs) < 500 and sorted(p.stem for p in (out / "hr").glob("*.png")) == pairs
    assert not list(out.rglob("*.part"))  # no half-written image left behind
    assert set(_names(out)) == set(pairs) and len(_names(out)) == len(pairs)


def test_a_file_in_place_of_the_lr_folder_exits_1(cli, hr_dir, tmp_path):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "lr").write_text("not a folder")
    code, _, err = cli("degrade", hr_dir, "-o", tmp_path / "pairs", *BICUBIC)
    assert code == 1 and f"cannot write to {tmp_path / 'pairs'}" in err
    assert (tmp_path / "pairs" / "lr").read_text() == "not a folder"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_output_folder_exits_1_and_changes_nothing(cli, hr_dir, tmp_path):
    out = tmp_path / "pairs"
    assert cli("degrade", hr_dir / "a.png", "-o", out, *BICUBIC)[0] == 0
    before = (out / "params.jsonl").read_bytes()
    for folder in (out, out / "hr", out / "lr"):
        folder.chmod(0o555)
    (out / "params.jsonl").chmod(0o444)
    try:
        code, _, err = cli("degrade", hr_dir / "b.png", "-o", out, *BICUBIC)
    finally:
        for folder in (out, out / "hr", out / "lr"):
            folder.chmod(0o755)
    assert code == 1 and "cannot write" in err and (out / "params.jsonl").read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to the own process")
def test_ctrl_c_during_a_pair_write_waits_for_its_record():
    from stablesr.cli.degrade import interrupt_deferred

    handler, done = signal.getsignal(signal.SIGINT), []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("record written")
    assert done == ["record written"] and signal.getsignal(signal.SIGINT) is handler

"""`stablesr evaluate` end to end on small seeded image folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from stablesr.cli.main import main
from stablesr.metrics.fidelity import psnr


@pytest.fixture()
def pair_folders(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for run in range(2):
        sr = np.clip(gt.astype(int) + rng.integers(-5, 6, gt.shape), 0, 255).astype(np.uint8)
        (tmp_path / "pred" / f"sample{run}").mkdir(parents=True)
        Image.fromarray(sr).save(tmp_path / "pred" / f"sample{run}" / "img.png")
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "img.png")
    return tmp_path


def test_evaluate_prints_table_and_writes_rows(pair_folders, capsys):
    root = pair_folders
    code = main(["evaluate", str(root / "pred"), "--gt", str(root / "gt"), "--metrics", "psnr,ssim",
                 "--crop-border", "4", "--json", str(root / "out.json"), "--csv", str(root / "out.csv")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 images, 2 run(s)" in printed and "G-STD" in printed and "L-STD" in printed
    report = json.loads((root / "out.json").read_text())
    gt = np.asarray(Image.open(root / "gt" / "img.png"))
    expected = [
        psnr(np.asarray(Image.open(root / "pred" / f"sample{r}" / "img.png")), gt, crop_border=4) for r in (0, 1)
    ]
    assert report["summary"]["mean"]["psnr"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert report["summary"]["g_std"]["psnr"] == pytest.approx(np.std(expected), abs=1e-12)
    rows = list(csv.DictReader((root / "out.csv").open()))
    assert [(row["name"], row["run"]) for row in rows] == [("img", "0"), ("img", "1")]
    assert float(rows[1]["psnr"]) == pytest.approx(expected[1], abs=1e-9)


def test_evaluate_reports_missing_ground_truth(pair_folders, capsys):
    root = pair_folders
    (root / "gt" / "img.png").rename(root / "gt" / "other.png")
    assert main(["evaluate", str(root / "pred"), "--gt", str(root / "gt")]) == 1
    assert "no ground truth" in capsys.readouterr().err


def test_evaluate_no_reference_metrics_without_gt(tmp_path, capsys):
    from stablesr.metrics.niqe import niqe

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (96, 120, 3), dtype=np.uint8) for _ in range(2)]
    (tmp_path / "pred").mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "pred" / f"{index}.png")
    assert main(["evaluate", str(tmp_path / "pred"), "--metrics", "niqe,brisque",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert "2 images, 1 run(s)" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["mean"]["niqe"] == pytest.approx(np.mean([niqe(image) for image in images]), rel=1e-12)
    assert main(["evaluate", str(tmp_path / "pred"), "--metrics", "psnr"]) == 1
    assert "need ground truth" in capsys.readouterr().err


def test_evaluate_refuses_existing_outputs_before_any_work(pair_folders, capsys, monkeypatch):
    import stablesr.metrics.evaluate as evaluate_module

    root = pair_folders
    (root / "out.csv").write_text("keep me")
    calls = []
    monkeypatch.setattr(evaluate_module, "compute_metrics", lambda *args: calls.append(args) or {})
    code = main(["evaluate", str(root / "pred"), "--gt", str(root / "gt"), "--json", str(root / "out.json"),
                 "--csv", str(root / "out.csv")])
    assert code == 1 and "out.csv already exists" in capsys.readouterr().err
    assert calls == [] and (root / "out.csv").read_text() == "keep me" and not (root / "out.json").exists()
    monkeypatch.undo()
    assert main(["evaluate", str(root / "pred"), "--gt", str(root / "gt"), "--csv", str(root / "out.csv"),
                 "--overwrite"]) == 0
    assert (root / "out.csv").read_text().startswith("name,run,psnr,ssim")
    assert sorted(path.name for path in root.iterdir()) == ["gt", "out.csv", "pred"]  # no temporary files left


def test_evaluate_refuses_an_unwritable_output_folder(pair_folders, capsys):
    root = pair_folders
    (root / "blocker").write_text("a file where a folder is needed")
    code = main(["evaluate", str(root / "pred"), "--gt", str(root / "gt"), "--json", str(root / "blocker" / "r.json")])
    assert code == 1 and "cannot write" in capsys.readouterr().err


def test_evaluate_plot_draws_a_png(pair_folders):
    pytest.importorskip("matplotlib")
    root = pair_folders
    assert main(["evaluate", str(root / "pred"), "--gt", str(root / "gt"), "--metrics", "psnr,ssim",
                 "--plot", str(root / "dist.png")]) == 0
    with Image.open(root / "dist.png") as image:
        assert image.format == "PNG" and image.size == (600, 350)  # 3 in x 3.5 in per metric at 100 dpi


def test_evaluate_plot_without_matplotlib_fails_before_work(pair_folders, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    assert main(["evaluate", str(pair_folders / "pred"), "--plot", str(pair_folders / "p.png"),
                 "--metrics", "niqe"]) == 2
    assert "needs matplotlib" in capsys.readouterr().err and not (pair_folders / "p.png").exists()


def test_help_names_every_registered_metric(capsys):
    import re

    from stablesr.metrics.evaluate import METRICS, SET_METRICS

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    listed = set(re.findall(r"[a-z][a-z0-9_+]*", help_text))
    assert not {*METRICS, *SET_METRICS} - listed

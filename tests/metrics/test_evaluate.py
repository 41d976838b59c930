"""Folder evaluation: pairing by stem, runs layout, and the summary numbers against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stablesr.metrics.evaluate import EvaluationError, evaluate_folder
from stablesr.metrics.fidelity import psnr, ssim


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(0)
    gts = {name: rng.integers(0, 256, (24, 28, 3), dtype=np.uint8) for name in ("a", "b")}
    runs = []
    for run in range(3):
        outputs = {}
        for name, gt in gts.items():
            outputs[name] = np.clip(gt.astype(int) + rng.integers(-9, 10, gt.shape), 0, 255).astype(np.uint8)
            write(tmp_path / "pred" / f"sample{run}" / f"{name}.png", outputs[name])
        runs.append(outputs)
    for name, gt in gts.items():
        write(tmp_path / "gt" / f"{name}.png", gt)
    return tmp_path, gts, runs


def test_runs_summary_matches_direct_computation(folders):
    root, gts, runs = folders
    result = evaluate_folder(root / "pred", gt_dir=root / "gt", metrics=["psnr", "ssim"], crop_border=2)
    assert result.runs == 3 and len(result.rows) == 6
    values = np.array([[psnr(runs[r][n], gts[n], crop_border=2) for r in range(3)] for n in ("a", "b")])
    assert result.mean["psnr"] == pytest.approx(values.mean(), abs=1e-12)
    assert result.g_std["psnr"] == pytest.approx(values.std(axis=1).mean(), abs=1e-12)
    assert result.rows[1] == {"name": "a", "run": 1, "psnr": values[0, 1],
                              "ssim": ssim(runs[1]["a"], gts["a"], crop_border=2)}
    local = [np.std(np.stack([runs[r][n][2:-2, 2:-2] / 255.0 for r in range(3)]), axis=0).mean() for n in ("a", "b")]
    assert result.l_std == pytest.approx(np.mean(local), abs=1e-12)


def test_runs_limit_and_flat_folder(folders):
    root, gts, runs = folders
    two = evaluate_folder(root / "pred", gt_dir=root / "gt", metrics=["psnr_rgb"], runs=2)
    assert two.runs == 2 and len(two.rows) == 4
    flat = evaluate_folder(root / "pred" / "sample0", gt_dir=root / "gt", metrics=["psnr_rgb"])
    assert flat.runs == 1 and flat.g_std == {} and flat.l_std is None
    assert flat.mean["psnr_rgb"] == pytest.approx(np.mean([psnr(runs[0][n], gts[n], channel="rgb") for n in "ab"]))


def test_pairing_errors(folders, tmp_path):
    root, gts, _ = folders
    (root / "gt" / "b.png").unlink()
    with pytest.raises(EvaluationError, match="no ground truth .* for: b"):
        evaluate_folder(root / "pred", gt_dir=root / "gt")
    write(root / "gt" / "b.jpg", np.zeros((10, 10, 3), np.uint8))  # pairs by stem, wrong size
    with pytest.raises(EvaluationError, match="is 28x24 but its ground truth"):
        evaluate_folder(root / "pred", gt_dir=root / "gt")
    with pytest.raises(EvaluationError, match="missing sample3"):
        evaluate_folder(root / "pred", gt_dir=root / "gt", runs=4)
    with pytest.raises(EvaluationError, match="need ground truth"):
        evaluate_folder(root / "pred", metrics=["ssim"])
    with pytest.raises(EvaluationError, match="unknown metric fid"):
        evaluate_folder(root / "pred", metrics=["fid"])
    (root / "pred" / "sample1" / "a.png").unlink()
    with pytest.raises(EvaluationError, match="hold different images: a"):
        evaluate_folder(root / "pred", metrics=["brisque"])


def test_lpips_metric_uses_the_cached_backbone_and_crop(tmp_path, monkeypatch):
    import torch

    from stablesr.errors import WeightsNotFoundError
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.lpips import LPIPS

    rng = np.random.default_rng(1)
    gt = rng.integers(0, 256, (68, 68, 3), dtype=np.uint8)
    sr = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    write(tmp_path / "pred" / "a.png", sr)
    write(tmp_path / "gt" / "a.png", gt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    evaluate_module.lpips_model.cache_clear()
    with pytest.raises(WeightsNotFoundError, match="alexnet-owt-7be5be79.pth"):
        evaluate_folder(tmp_path / "pred", gt_dir=tmp_path / "gt", metrics=["lpips"])
    torch.manual_seed(0)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in LPIPS("alex").features.state_dict().items()},
               tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    evaluate_module.lpips_model.cache_clear()
    result = evaluate_folder(tmp_path / "pred", gt_dir=tmp_path / "gt", metrics=["lpips"], crop_border=2)
    model = LPIPS.from_files("alex")
    to_tensor = lambda im: torch.from_numpy(im[2:-2, 2:-2].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    expected = float(model(to_tensor(sr), to_tensor(gt))[0])
    assert result.rows[0]["lpips"] == pytest.approx(expected, rel=1e-6)
    evaluate_module.lpips_model.cache_clear()


def test_dists_and_no_reference_metrics_match_direct_calls(tmp_path, monkeypatch):
    import torch

    from stablesr.errors import WeightsNotFoundError
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.brisque import brisque
    from stablesr.metrics.dists import DISTS
    from stablesr.metrics.niqe import niqe

    rng = np.random.default_rng(2)
    gt = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    sr = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    write(tmp_path / "pred" / "a.png", sr)
    write(tmp_path / "gt" / "a.png", gt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    evaluate_module.dists_model.cache_clear()
    with pytest.raises(WeightsNotFoundError, match="DISTS needs .*vgg16-397923af.pth"):
        evaluate_folder(tmp_path / "pred", gt_dir=tmp_path / "gt", metrics=["dists"])
    torch.manual_seed(0)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in DISTS().features.state_dict().items()},
               tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")
    evaluate_module.dists_model.cache_clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # VGG on a shared 2-core machine
    try:
        result = evaluate_folder(tmp_path / "pred", gt_dir=tmp_path / "gt", metrics=["dists", "niqe", "niqe_y", "brisque"],
                                 crop_border=2)
        cropped = [torch.from_numpy(im[2:-2, 2:-2].copy()).permute(2, 0, 1)[None].float() / 255 for im in (sr, gt)]
        expected = float(DISTS.from_files()(*cropped)[0])
    finally:
        torch.set_num_threads(threads)
        evaluate_module.dists_model.cache_clear()
    row = result.rows[0]
    assert row["dists"] == pytest.approx(expected, rel=1e-6)
    assert row["niqe"] == niqe(sr) and row["niqe_y"] == niqe(sr, luma="y") and row["brisque"] == brisque(sr)

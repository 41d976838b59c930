"""Folder evaluation: pairing by stem, runs layout, and the summary numbers against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import FLOAT32_REL
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
    root, _, _ = folders
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
    with pytest.raises(EvaluationError, match="unknown metric piqe"):
        evaluate_folder(root / "pred", metrics=["piqe"])
    with pytest.raises(EvaluationError, match="fid need ground truth"):
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

    def to_tensor(im):
        return torch.from_numpy(im[2:-2, 2:-2].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1

    expected = float(model(to_tensor(sr), to_tensor(gt))[0])
    assert result.rows[0]["lpips"] == pytest.approx(expected, rel=FLOAT32_REL)
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
        result = evaluate_folder(tmp_path / "pred", gt_dir=tmp_path / "gt",
                                 metrics=["dists", "niqe", "niqe_y", "brisque"], crop_border=2)
        cropped = [torch.from_numpy(im[2:-2, 2:-2].copy()).permute(2, 0, 1)[None].float() / 255 for im in (sr, gt)]
        expected = float(DISTS.from_files()(*cropped)[0])
    finally:
        torch.set_num_threads(threads)
        evaluate_module.dists_model.cache_clear()
    row = result.rows[0]
    assert row["dists"] == pytest.approx(expected, rel=FLOAT32_REL)
    assert row["niqe"] == niqe(sr) and row["niqe_y"] == niqe(sr, luma="y") and row["brisque"] == brisque(sr)


def mean_colour(image: np.ndarray) -> np.ndarray:
    """A cheap 3-d stand-in for the Inception features (FID's sqrtm on 2048-d takes minutes on 2 cores)."""
    return image.reshape(-1, 3).mean(axis=0) / 255.0


def test_set_metric_gives_one_value_per_run_and_no_rows(folders, monkeypatch):
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.fid import fid_from_features

    root, gts, runs = folders
    write(root / "gt" / "c.png", np.full((24, 28, 3), 200, np.uint8))
    for run in range(3):
        runs[run]["c"] = np.full((24, 28, 3), 190 + run, np.uint8)
        write(root / "pred" / f"sample{run}" / "c.png", runs[run]["c"])
    gts["c"] = np.full((24, 28, 3), 200, np.uint8)
    fid = evaluate_module.SetMetric(mean_colour, fid_from_features, False)
    monkeypatch.setitem(evaluate_module.SET_METRICS, "fid", fid)
    result = evaluate_folder(root / "pred", gt_dir=root / "gt", metrics=["fid", "psnr"], crop_border=2)
    names = ("a", "b", "c")
    gt_features = np.stack([mean_colour(gts[n]) for n in names])
    expected = [fid_from_features(np.stack([mean_colour(runs[r][n]) for n in names]), gt_features) for r in range(3)]
    assert result.metrics == ("fid", "psnr")
    assert result.set_values == {"fid": expected} and expected[0] != expected[1]
    assert result.mean["fid"] == pytest.approx(np.mean(expected), abs=1e-15)
    assert "fid" not in result.g_std and "psnr" in result.g_std
    assert all(set(row) == {"name", "run", "psnr"} for row in result.rows) and len(result.rows) == 9
    from stablesr.cli.evaluate import format_table, write_csv

    assert f"fid        {np.mean(expected):>10.4f} {'-':>10}" in format_table(result).splitlines()
    write_csv(result, root / "rows.csv")
    assert (root / "rows.csv").read_text().splitlines()[0] == "name,run,psnr"
    identical = evaluate_folder(root / "gt", gt_dir=root / "gt", metrics=["fid"])  # a set against itself
    assert identical.runs == 1 and identical.rows == [{"name": n, "run": 0} for n in names]
    assert identical.set_values["fid"][0] == pytest.approx(0.0, abs=1e-8)  # sqrtm rounding is CPU-dependent
    (root / "gt" / "a.png").unlink()
    (root / "gt" / "b.png").unlink()
    with pytest.raises(EvaluationError, match="fid compare image sets and need at least 2 images, got 1"):
        evaluate_folder(root / "gt", gt_dir=root / "gt", metrics=["fid"])


def test_fid_metric_is_pool3_of_the_cached_inception(tmp_path, monkeypatch):
    import torch

    from stablesr.errors import WeightsNotFoundError
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.fid import WEIGHTS_FILE, FIDInceptionV3, fid_from_features

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    evaluate_module.fid_model.cache_clear()
    image = np.random.default_rng(3).integers(0, 256, (33, 45, 3), dtype=np.uint8)
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_FILE):
        evaluate_module.SET_METRICS["fid"].features(image)
    torch.manual_seed(0)
    donor = FIDInceptionV3().eval()
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(donor.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE)
    try:
        features = evaluate_module.SET_METRICS["fid"].features(image)
    finally:
        evaluate_module.fid_model.cache_clear()
    with torch.no_grad():
        expected = donor(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0].double().numpy()
    assert features.shape == (2048,)
    np.testing.assert_allclose(features, expected, rtol=FLOAT32_REL, atol=1e-6)
    assert evaluate_module.SET_METRICS["fid"].distance is evaluate_module.fid_distance
    small = np.random.default_rng(4).normal(size=(5, 3))
    assert evaluate_module.fid_distance(small, small + 1) == pytest.approx(fid_from_features(small, small + 1))


def test_clipiqa_vit_metric_scores_each_whole_image(tmp_path, monkeypatch):
    import torch

    transformers = pytest.importorskip("transformers")
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.clipiqa import CLIPIQA

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, projection_dim=256)).eval()
    prompt_features = torch.nn.functional.normalize(torch.randn(2, 256), dim=-1)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    metric = CLIPIQA(clip, prompt_features, processor)
    monkeypatch.setattr(evaluate_module, "clipiqa_vit_model", lambda: metric)
    rng = np.random.default_rng(5)
    images = {name: rng.integers(0, 256, (40, 44, 3), dtype=np.uint8) for name in ("a", "b")}
    for name, image in images.items():
        write(tmp_path / "pred" / f"{name}.png", image)
    result = evaluate_folder(tmp_path / "pred", metrics=["clipiqa_vit"], crop_border=4)  # no ground truth needed
    expected = metric.score_images([images["a"], images["b"]])  # uncropped: no-reference metrics see it all
    assert [row["clipiqa_vit"] for row in result.rows] == pytest.approx(list(expected), rel=FLOAT32_REL)
    assert result.mean["clipiqa_vit"] == pytest.approx(expected.mean(), rel=FLOAT32_REL)


def test_musiq_metric_scores_each_whole_image_with_the_cached_koniq_model(tmp_path, monkeypatch):
    import torch

    from stablesr.errors import WeightsNotFoundError
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.musiq import MUSIQ, TINY_CONFIG, WEIGHTS_FILES, score_image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    evaluate_module.musiq_model.cache_clear()
    rng = np.random.default_rng(6)
    images = {name: rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for name in ("a", "b")}
    for name, image in images.items():
        write(tmp_path / "pred" / f"{name}.png", image)
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_FILES["koniq"]):
        evaluate_folder(tmp_path / "pred", metrics=["musiq"])
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_FILES["ava"]):
        evaluate_folder(tmp_path / "pred", metrics=["musiq_ava"])
    torch.manual_seed(0)
    model = MUSIQ(TINY_CONFIG).eval()
    monkeypatch.setattr(evaluate_module, "musiq_model", lambda dataset: model if dataset == "koniq" else None)
    result = evaluate_folder(tmp_path / "pred", metrics=["musiq"], crop_border=4)
    expected = [score_image(model, images[name]) for name in ("a", "b")]  # uncropped: no-reference
    assert [row["musiq"] for row in result.rows] == expected
    assert len(set(expected)) == 2 and result.mean["musiq"] == pytest.approx(np.mean(expected), rel=1e-12)


def test_clipiqa_metric_is_pyiqas_rn50_on_each_whole_image(tmp_path, monkeypatch):
    import torch

    from stablesr.errors import WeightsNotFoundError
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.clip_resnet import ClipResNet, ClipResNetConfig
    from stablesr.metrics.clipiqa import CLIPIQAResNet, fixed_prompt_features, score_image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    evaluate_module.clipiqa_model.cache_clear()
    rng = np.random.default_rng(7)
    images = {name: rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for name in ("a", "b")}
    for name, image in images.items():
        write(tmp_path / "pred" / f"{name}.png", image)
    with pytest.raises(WeightsNotFoundError, match="RN50.pt"):
        evaluate_folder(tmp_path / "pred", metrics=["clipiqa"])
    torch.manual_seed(0)
    clip = ClipResNet(ClipResNetConfig.tiny()).eval()
    metric = CLIPIQAResNet(clip, fixed_prompt_features(clip, "pyiqa")).eval()
    monkeypatch.setattr(evaluate_module, "clipiqa_model", lambda: metric)
    result = evaluate_folder(tmp_path / "pred", metrics=["clipiqa"], crop_border=4)
    expected = [score_image(metric, images[name]) for name in ("a", "b")]  # uncropped: no-reference
    assert [row["clipiqa"] for row in result.rows] == expected and expected[0] != expected[1]


def test_maniqa_metric_scores_each_whole_image_and_names_each_variants_file(tmp_path, monkeypatch):
    import torch

    from stablesr.errors import WeightsNotFoundError
    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.maniqa import CHECKPOINTS, MANIQA, MANIQAConfig, score_image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    evaluate_module.maniqa_model.cache_clear()
    rng = np.random.default_rng(8)
    images = {name: rng.integers(0, 256, (230, 236, 3), dtype=np.uint8) for name in ("a", "b")}
    for name, image in images.items():
        write(tmp_path / "pred" / f"{name}.png", image)
    for metric, variant in (("maniqa", "koniq"), ("maniqa_kadid", "kadid"), ("maniqa_pipal", "pipal")):
        with pytest.raises(WeightsNotFoundError, match=CHECKPOINTS[variant][0]):
            evaluate_folder(tmp_path / "pred", metrics=[metric])
    torch.manual_seed(0)
    model = MANIQA(MANIQAConfig.tiny()).eval()
    monkeypatch.setattr(evaluate_module, "maniqa_model", lambda variant: model if variant == "koniq" else None)
    result = evaluate_folder(tmp_path / "pred", metrics=["maniqa"], crop_border=4)
    expected = [score_image(model, images[name]) for name in ("a", "b")]  # uncropped: no-reference
    assert [row["maniqa"] for row in result.rows] == expected and expected[0] != expected[1]


def test_learned_metrics_run_on_the_requested_device_only_during_the_evaluation(tmp_path, monkeypatch):
    import torch

    from stablesr.metrics import evaluate as evaluate_module
    from stablesr.metrics.musiq import MUSIQ, TINY_CONFIG

    moves = []

    class RecordingMUSIQ(MUSIQ):
        def to(self, *args, **kwargs):
            moves.append(args)
            return super().to("cpu")

    torch.manual_seed(0)
    model = RecordingMUSIQ(TINY_CONFIG).eval()
    monkeypatch.setattr(evaluate_module, "musiq_model", lambda dataset: model)
    write(tmp_path / "pred" / "a.png", np.random.default_rng(9).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    evaluate_folder(tmp_path / "pred", metrics=["musiq"], device="cuda:1")
    assert moves == [("cuda:1",)] and evaluate_module._DEVICE.get() == "cpu"

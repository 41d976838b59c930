"""Evaluate a folder of SR outputs: pair files by name, compute metrics per image (and per run), summarise.

Layouts of the prediction folder (what `stablesr upscale` writes):
    PRED/NAME.png                           one run
    PRED/sample0/NAME.png ... sampleK/...   N runs with different noise -> mean, G-STD per metric, L-STD

Stability follows CCSR (https://arxiv.org/abs/2401.00877), see `stability.py`. `crop_border` applies to
the full-reference metrics (PSNR, SSIM, LPIPS, DISTS) and to L-STD (as in the papers' scripts); no-reference metrics
see the whole image. Files pair by stem, so `0001.png` matches `0001.jpg`.

Set-level metrics (FID) compare the whole prediction folder with the whole ground-truth folder: features are
taken per image (each file read once, no border crop), and one value comes out per run, not per image.
Their mean is over runs; they have no per-image rows and no G-STD.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stablesr.errors import ImageReadError, StableSRError
from stablesr.metrics.brisque import brisque
from stablesr.metrics.fidelity import psnr, ssim
from stablesr.metrics.niqe import niqe
from stablesr.metrics.stability import global_std, local_std_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Metric:
    """One metric: `needs_gt` says whether it compares to ground truth; `higher_is_better` for tables."""

    compute: Callable[[np.ndarray, np.ndarray | None, int], float]
    needs_gt: bool
    higher_is_better: bool


@dataclass(frozen=True)
class SetMetric:
    """A metric of the prediction set against the ground-truth set: `features` maps one (H, W, 3) uint8 image to
    a (D,) vector, `distance` maps the (N, D) prediction and ground-truth features of one run to the value."""

    features: Callable[[np.ndarray], np.ndarray]
    distance: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool


_DEVICE: ContextVar[str] = ContextVar("metric_device", default="cpu")


def on_device(model):
    """`model` moved to the device of the running evaluation (`evaluate_folder(device=...)`, default cpu)."""
    return model.to(_DEVICE.get())


@lru_cache(maxsize=2)
def lpips_model(backbone: str):
    """LPIPS with its backbone from the torch hub cache (raises WeightsNotFoundError naming the file)."""
    from stablesr.metrics.lpips import LPIPS

    return LPIPS.from_files(backbone)


@lru_cache(maxsize=1)
def dists_model():
    """DISTS with VGG16 from the torch hub cache (raises WeightsNotFoundError naming the file)."""
    from stablesr.metrics.dists import DISTS

    return DISTS.from_files()


def tensor_pair(sr: np.ndarray, gt: np.ndarray, crop_border: int):
    """Two (H, W, 3) uint8 images, border cropped -> two (1, 3, H', W') float tensors in [0, 1]."""
    import torch

    pair = [image[crop_border : image.shape[0] - crop_border, crop_border : image.shape[1] - crop_border]
            for image in (sr, gt)]
    # (H, W, 3) uint8 -> (1, 3, H, W) in [0, 1]
    return [torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(_DEVICE.get()).float() / 255
            for image in pair]


def lpips_value(sr: np.ndarray, gt: np.ndarray, crop_border: int, backbone: str) -> float:
    """LPIPS of two (H, W, 3) uint8 images after the border crop (inputs scaled to [-1, 1])."""
    import torch

    sr_tensor, gt_tensor = tensor_pair(sr, gt, crop_border)
    with torch.no_grad():
        return float(on_device(lpips_model(backbone))(sr_tensor * 2 - 1, gt_tensor * 2 - 1)[0])


def dists_value(sr: np.ndarray, gt: np.ndarray, crop_border: int) -> float:
    """DISTS of two (H, W, 3) uint8 images after the border crop (inputs in [0, 1], no resizing)."""
    import torch

    sr_tensor, gt_tensor = tensor_pair(sr, gt, crop_border)
    with torch.no_grad():
        return float(on_device(dists_model())(sr_tensor, gt_tensor)[0])


@lru_cache(maxsize=1)
def clipiqa_model():
    """pyiqa's `clipiqa`: OpenAI CLIP RN50 (RN50.pt in $TORCH_HOME/hub/clip or ~/.cache/clip; see clipiqa.py)."""
    from stablesr.metrics.clipiqa import CLIPIQAResNet

    return CLIPIQAResNet.from_file()


@lru_cache(maxsize=1)
def clipiqa_plus_model():
    """pyiqa's `clipiqa+`: RN50.pt plus CLIP-IQA+_learned_prompts-603f3273.pth in $TORCH_HOME/hub/pyiqa."""
    from stablesr.metrics.clipiqa import CLIPIQAResNet

    return CLIPIQAResNet.from_files_learned()


def clipiqa_value(sr: np.ndarray, model) -> float:
    """CLIP-IQA (RN50, as pyiqa) of one (H, W, 3) uint8 image: the whole image at its own size."""
    from stablesr.metrics.clipiqa import score_image

    return score_image(on_device(model), sr)


@lru_cache(maxsize=1)
def clipiqa_vit_model():
    """CLIP-IQA on openai/clip-vit-base-patch32 from the Hugging Face cache (not pyiqa's numbers; see clipiqa.py)."""
    from stablesr.metrics.clipiqa import CLIPIQA

    return CLIPIQA.from_pretrained()


def clipiqa_vit_value(sr: np.ndarray) -> float:
    """CLIP-IQA (ViT-B/32) of one (H, W, 3) uint8 image (resized and centre-cropped by CLIP's processor)."""
    return float(on_device(clipiqa_vit_model()).score_images([sr])[0])


@lru_cache(maxsize=4)
def musiq_model(dataset: str = "koniq"):
    """MUSIQ trained on `dataset` (koniq = pyiqa's `musiq`) from $TORCH_HOME/hub/pyiqa (raises
    WeightsNotFoundError naming the file)."""
    from stablesr.metrics.musiq import MUSIQ

    return MUSIQ.from_file(dataset=dataset)


def musiq_value(sr: np.ndarray, dataset: str = "koniq") -> float:
    """MUSIQ of one (H, W, 3) uint8 image: the whole image at full size plus longer sides 224 and 384."""
    from stablesr.metrics.musiq import score_image

    return score_image(on_device(musiq_model(dataset)), sr)


@lru_cache(maxsize=3)
def maniqa_model(variant: str = "koniq"):
    """MANIQA trained on `variant` (koniq = pyiqa's `maniqa`, scale 0.8) from $TORCH_HOME/hub/pyiqa (raises
    WeightsNotFoundError naming the file)."""
    from stablesr.metrics.maniqa import MANIQA

    return MANIQA.from_file(variant=variant)


def maniqa_value(sr: np.ndarray, variant: str = "koniq") -> float:
    """MANIQA of one (H, W, 3) uint8 image: 20 uniform 224x224 crops of the whole image, as pyiqa >= 0.1.12."""
    from stablesr.metrics.maniqa import score_image

    return score_image(on_device(maniqa_model(variant)), sr)


@lru_cache(maxsize=1)
def fid_model():
    """FID InceptionV3 from the torch hub cache (raises WeightsNotFoundError naming the file)."""
    from stablesr.metrics.fid import FIDInceptionV3

    return FIDInceptionV3.from_file()


def fid_image_features(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (2048,) pool3 features of the FID Inception (whole image, resized to 299)."""
    from stablesr.metrics.fid import inception_features

    return inception_features(on_device(fid_model()), [image])[0]


def fid_distance(pred_features: np.ndarray, gt_features: np.ndarray) -> float:
    """FID of one run: (N, 2048) prediction features against (N, 2048) ground-truth features."""
    from stablesr.metrics.fid import fid_from_features

    return fid_from_features(pred_features, gt_features)


METRICS: dict[str, Metric] = {
    "psnr": Metric(lambda sr, gt, crop: psnr(sr, gt, crop_border=crop), True, True),
    "ssim": Metric(lambda sr, gt, crop: ssim(sr, gt, crop_border=crop), True, True),
    "psnr_rgb": Metric(lambda sr, gt, crop: psnr(sr, gt, crop_border=crop, channel="rgb"), True, True),
    "ssim_rgb": Metric(lambda sr, gt, crop: ssim(sr, gt, crop_border=crop, channel="rgb"), True, True),
    "niqe": Metric(lambda sr, gt, crop: niqe(sr), False, False),
    "niqe_y": Metric(lambda sr, gt, crop: niqe(sr, luma="y"), False, False),
    "brisque": Metric(lambda sr, gt, crop: brisque(sr), False, False),
    "lpips": Metric(lambda sr, gt, crop: lpips_value(sr, gt, crop, "alex"), True, False),
    "lpips_vgg": Metric(lambda sr, gt, crop: lpips_value(sr, gt, crop, "vgg"), True, False),
    "dists": Metric(lambda sr, gt, crop: dists_value(sr, gt, crop), True, False),
    "clipiqa": Metric(lambda sr, gt, crop: clipiqa_value(sr, clipiqa_model()), False, True),
    "clipiqa+": Metric(lambda sr, gt, crop: clipiqa_value(sr, clipiqa_plus_model()), False, True),
    "clipiqa_vit": Metric(lambda sr, gt, crop: clipiqa_vit_value(sr), False, True),
    "musiq": Metric(lambda sr, gt, crop: musiq_value(sr), False, True),
    "musiq_spaq": Metric(lambda sr, gt, crop: musiq_value(sr, "spaq"), False, True),
    "musiq_ava": Metric(lambda sr, gt, crop: musiq_value(sr, "ava"), False, True),
    "musiq_paq2piq": Metric(lambda sr, gt, crop: musiq_value(sr, "paq2piq"), False, True),
    "maniqa": Metric(lambda sr, gt, crop: maniqa_value(sr), False, True),
    "maniqa_kadid": Metric(lambda sr, gt, crop: maniqa_value(sr, "kadid"), False, True),
    "maniqa_pipal": Metric(lambda sr, gt, crop: maniqa_value(sr, "pipal"), False, True),
}

SET_METRICS: dict[str, SetMetric] = {
    "fid": SetMetric(fid_image_features, fid_distance, False),
}


class EvaluationError(StableSRError):
    """The prediction / ground-truth folders do not pair up, or a pair cannot be compared."""


@dataclass(frozen=True)
class Evaluation:
    """Per-image rows and the summary.

    rows: one dict per (image, run): {"name", "run", metric: value} for the per-image metrics.
    mean: metric -> mean over images and runs (set metrics: over runs).
    g_std: per-image metric -> G-STD (only with 2+ runs).  l_std: L-STD over the set (only with 2+ runs).
    set_values: set metric (FID) -> one value per run.
    skipped: images left out because a prediction or the ground truth could not be read.
    """

    metrics: tuple[str, ...]
    runs: int
    rows: list[dict]
    mean: dict[str, float]
    g_std: dict[str, float]
    l_std: float | None
    set_values: dict[str, list[float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "name: reason" of images left out as unreadable


def image_files(folder: Path) -> dict[str, Path]:
    """Image files directly in `folder`, keyed by stem; two files with one stem are an error."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise EvaluationError(
                    f"{folder}: two images named {path.stem!r} ({files[path.stem].name}, {path.name})")
            files[path.stem] = path
    return files


def run_folders(pred_dir: Path, runs: int | None) -> list[Path]:
    """[PRED] for a flat folder, else [PRED/sample0, ..., PRED/sample{N-1}]."""
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder {pred_dir} does not exist")
    if runs is None:
        runs = 0
        while (pred_dir / f"sample{runs}").is_dir():
            runs += 1
        if runs == 0:
            return [pred_dir]
    missing = [f"sample{n}" for n in range(runs) if not (pred_dir / f"sample{n}").is_dir()]
    if missing:
        raise EvaluationError(f"{pred_dir}: --runs {runs} needs folders sample0..sample{runs - 1}; "
                              f"missing {', '.join(missing)}")
    return [pred_dir / f"sample{n}" for n in range(runs)]


def pair_files(run_dirs: Sequence[Path], gt_dir: Path | None) -> list[tuple[str, list[Path], Path | None]]:
    """(name, [prediction per run], ground truth or None) for every image, checked for completeness."""
    per_run = [image_files(folder) for folder in run_dirs]
    names = sorted(per_run[0])
    if not names:
        raise EvaluationError(f"no images in {run_dirs[0]}")
    for folder, files in zip(run_dirs[1:], per_run[1:]):
        if sorted(files) != names:
            different = sorted(set(files) ^ set(names))
            raise EvaluationError(f"{folder} and {run_dirs[0]} hold different images: {', '.join(different[:5])}")
    if gt_dir is not None and not gt_dir.is_dir():
        raise EvaluationError(f"ground-truth folder {gt_dir} does not exist")
    gt_files = image_files(gt_dir) if gt_dir is not None else {}
    missing = [name for name in names if gt_dir is not None and name not in gt_files]
    if missing:
        raise EvaluationError(f"no ground truth in {gt_dir} for: {', '.join(missing[:10])}")
    return [(name, [files[name] for files in per_run], gt_files.get(name)) for name in names]


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, read with the project's loader (EXIF orientation, any Pillow mode)."""
    from stablesr.imaging import load_image

    return np.asarray(load_image(path).rgb)


def evaluate_folder(
    pred_dir: str | Path,
    *,
    gt_dir: str | Path | None = None,
    metrics: Sequence[str] = ("psnr", "ssim"),
    runs: int | None = None,
    crop_border: int = 0,
    read: Callable[[Path], np.ndarray] = read_rgb,
    progress: bool = False,
    device: str = "cpu",
) -> Evaluation:
    """Compute `metrics` for every prediction in `pred_dir` (flat, or `sampleK/` runs) against `gt_dir`;
    `progress` shows a bar over the images on stderr; the learned metrics run on `device` ("cpu", "cuda", ...)."""
    token = _DEVICE.set(device)
    try:
        return _evaluate_folder(pred_dir, gt_dir, metrics, runs, crop_border, read, progress)
    finally:
        _DEVICE.reset(token)


def _evaluate_folder(pred_dir, gt_dir, metrics, runs, crop_border, read, progress) -> Evaluation:
    unknown = [name for name in metrics if name not in METRICS and name not in SET_METRICS]
    if unknown:
        raise EvaluationError(f"unknown metric {', '.join(unknown)}; available: {', '.join([*METRICS, *SET_METRICS])}")
    image_metrics = [name for name in metrics if name in METRICS]
    set_metrics = [name for name in metrics if name in SET_METRICS]
    needing_gt = [name for name in metrics if name in SET_METRICS or METRICS[name].needs_gt]
    if gt_dir is None and needing_gt:
        raise EvaluationError(f"{', '.join(needing_gt)} need ground truth: pass --gt")
    run_dirs = run_folders(Path(pred_dir), runs)
    pairs = pair_files(run_dirs, None if gt_dir is None else Path(gt_dir))
    if set_metrics and len(pairs) < 2:
        raise EvaluationError(
            f"{', '.join(set_metrics)} compare image sets and need at least 2 images, got {len(pairs)}")
    rows, local_stds, skipped = [], [], []
    features = {metric: ([], [[] for _ in run_dirs]) for metric in set_metrics}  # metric -> (gt, per run)
    for name, pred_paths, gt_path in tqdm(pairs, desc="evaluate", unit="image", disable=not progress):
        try:
            gt = None if gt_path is None else read(gt_path)
            outputs = [read(path) for path in pred_paths]
        except (ImageReadError, OSError) as error:  # one unreadable file leaves out its image, not the evaluation
            skipped.append(f"{name}: {error}")
            tqdm.write(f"skipped {name}: {error}", file=sys.stderr)
            continue
        for run, sr in enumerate(outputs):
            if gt is not None and sr.shape != gt.shape:
                raise EvaluationError(f"{pred_paths[run]} is {sr.shape[1]}x{sr.shape[0]} but its ground truth "
                                      f"{gt_path} is {gt.shape[1]}x{gt.shape[0]}")
            rows.append({"name": name, "run": run,
                         **compute_metrics(image_metrics, sr, gt, crop_border, pred_paths[run])})
        collect_set_features(features, gt, outputs)
        if len(outputs) > 1:
            local_stds.append(local_std_image(crop_stack(outputs, crop_border, pred_paths)))
    if len(skipped) == len(pairs):
        raise EvaluationError(f"none of the {len(pairs)} images could be read (first: {skipped[0]})")
    if set_metrics and len(pairs) - len(skipped) < 2:
        raise EvaluationError(f"{', '.join(set_metrics)} need at least 2 readable images, got 1")
    evaluation = summarise(tuple(image_metrics), len(run_dirs), rows, local_stds)
    return replace(add_set_metrics(evaluation, tuple(metrics), features), skipped=skipped)


def collect_set_features(features: dict[str, tuple[list, list[list]]], gt: np.ndarray,
                         outputs: list[np.ndarray]) -> None:
    """Append one image's features: the ground truth once, each run's prediction to its run."""
    for metric, (gt_features, run_features) in features.items():
        gt_features.append(SET_METRICS[metric].features(gt))
        for run, sr in enumerate(outputs):
            run_features[run].append(SET_METRICS[metric].features(sr))


def add_set_metrics(evaluation: Evaluation, metrics: tuple[str, ...],
                    features: dict[str, tuple[list, list[list]]]) -> Evaluation:
    """One value per run for each set metric; its mean over runs joins `mean`; `metrics` back in user order."""
    set_values = {
        metric: [SET_METRICS[metric].distance(np.stack(run), np.stack(gt_features)) for run in run_features]
        for metric, (gt_features, run_features) in features.items()
    }  # N x (D,) -> (N, D) per run
    mean = {**evaluation.mean, **{metric: float(np.mean(values)) for metric, values in set_values.items()}}
    return replace(evaluation, metrics=metrics, mean=mean, set_values=set_values)


def compute_metrics(metrics: Sequence[str], sr: np.ndarray, gt: np.ndarray | None, crop_border: int,
                    path: Path) -> dict[str, float]:
    """metric -> value for one output; a metric's ValueError becomes an error naming the file."""
    try:
        return {metric: METRICS[metric].compute(sr, gt, crop_border) for metric in metrics}
    except ValueError as error:
        raise EvaluationError(f"{path}: {error}") from error


def crop_stack(outputs: list[np.ndarray], crop_border: int, paths: list[Path]) -> np.ndarray:
    """N outputs of one image -> (N, H, W, 3) in [0, 1] with the border cropped."""
    if len({sr.shape for sr in outputs}) > 1:
        raise EvaluationError(f"the runs of {paths[0].name} differ in size: {[sr.shape for sr in outputs]}")
    stack = np.stack(outputs).astype(np.float64) / 255.0  # N x (H, W, 3) -> (N, H, W, 3)
    return stack[:, crop_border : stack.shape[1] - crop_border, crop_border : stack.shape[2] - crop_border]


def summarise(metrics: tuple[str, ...], runs: int, rows: list[dict], local_stds: list[float]) -> Evaluation:
    """Means over images and runs; G-STD per metric and L-STD when there are 2+ runs."""
    mean, g_std = {}, {}
    for metric in metrics:
        values = np.array([row[metric] for row in rows]).reshape(-1, runs)  # (images * runs,) -> (images, runs)
        mean[metric] = float(values.mean())
        if runs > 1:
            g_std[metric] = global_std(values)
    l_std = float(np.mean(local_stds)) if runs > 1 else None
    return Evaluation(metrics, runs, rows, mean, g_std, l_std)

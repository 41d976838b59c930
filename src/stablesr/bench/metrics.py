"""`stablesr bench metrics`: seconds per image and peak memory of each metric (figures, not asserts).

The learned metrics run full-size networks with random weights (the cost does not depend on the
weights), so no file is needed. Figures are also given as a ratio against NIQE, the classic
no-reference metric, measured in the same run on the same image.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEFAULT_METRICS = "psnr,ssim,niqe,brisque,lpips,lpips_vgg,dists,fid,clipiqa,musiq,maniqa"
BASELINE = "niqe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma list (default {DEFAULT_METRICS})")
    parser.add_argument("--width", type=int, default=512, help="image width in pixels (default 512)")
    parser.add_argument("--height", type=int, default=384, help="image height in pixels (default 384)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per metric, after one warm-up")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def photo_like(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random (H, W, 3) uint8 image with texture, and a noisy copy of it (the 'prediction')."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
    gt = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    sr = np.clip(gt + rng.normal(0, 4, gt.shape), 0, 255).astype(np.uint8)
    return sr, gt


def build_metric(name: str, device) -> Callable[[np.ndarray, np.ndarray], float]:
    """metric name -> f(sr, gt) computing it once; learned networks are full size with random weights."""
    import torch

    from stablesr.metrics.brisque import brisque
    from stablesr.metrics.fidelity import psnr, ssim
    from stablesr.metrics.niqe import niqe

    classic = {"psnr": lambda sr, gt: psnr(sr, gt), "ssim": lambda sr, gt: ssim(sr, gt),
               "niqe": lambda sr, gt: niqe(sr), "brisque": lambda sr, gt: brisque(sr)}
    if name in classic:
        return classic[name]
    torch.manual_seed(0)
    return LEARNED[name](device)


def _pair_tensors(sr: np.ndarray, gt: np.ndarray, device):
    import numpy as np
    import torch

    # (H, W, 3) uint8 -> (1, 3, H, W) in [0, 1]
    return [torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(device).float() / 255 for image in (sr, gt)]


def _lpips(backbone: str):
    def build(device):
        from stablesr.metrics.lpips import LPIPS

        model = LPIPS(backbone).eval().to(device)
        return lambda sr, gt: float(model(*(x * 2 - 1 for x in _pair_tensors(sr, gt, device)))[0])
    return build


def _dists(device):
    from stablesr.metrics.dists import DISTS

    model = DISTS().eval().to(device)
    return lambda sr, gt: float(model(*_pair_tensors(sr, gt, device))[0])


def _fid(device):
    from stablesr.metrics.fid import FIDInceptionV3, inception_features

    model = FIDInceptionV3().eval().to(device)
    return lambda sr, gt: float(inception_features(model, [sr])[0, 0])  # the per-image part: pool3 features


def _clipiqa(device):
    from stablesr.metrics.clip_resnet import ClipResNet, ClipResNetConfig
    from stablesr.metrics.clipiqa import CLIPIQAResNet, fixed_prompt_features, score_image

    clip = ClipResNet(ClipResNetConfig()).eval()
    model = CLIPIQAResNet(clip, fixed_prompt_features(clip, "pyiqa")).eval().to(device)
    return lambda sr, gt: score_image(model, sr)


def _musiq(device):
    from stablesr.metrics.musiq import MUSIQ, MUSIQConfig, score_image

    model = MUSIQ(MUSIQConfig()).eval().to(device)
    return lambda sr, gt: score_image(model, sr)


def _maniqa(device):
    from stablesr.metrics.maniqa import MANIQA, MANIQAConfig, score_image

    model = MANIQA(MANIQAConfig()).eval().to(device)
    return lambda sr, gt: score_image(model, sr)


LEARNED = {"lpips": _lpips("alex"), "lpips_vgg": _lpips("vgg"), "dists": _dists, "fid": _fid, "clipiqa": _clipiqa,
           "musiq": _musiq, "maniqa": _maniqa}


def run(args: argparse.Namespace) -> int:
    import torch

    from stablesr.bench.memory import PeakMemory, synchronize
    from stablesr.cli.common import resolve_device

    names = [name.strip() for name in args.metrics.split(",") if name.strip()]
    unknown = [name for name in names if name not in LEARNED and name not in ("psnr", "ssim", "niqe", "brisque")]
    if unknown:
        raise SystemExit(f"error: bench metrics does not know {', '.join(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sr, gt = photo_like(args.height, args.width)
    print(f"{args.width}x{args.height} image, device {device}, {torch.get_num_threads()} CPU threads; "
          f"learned metrics: full-size networks, random weights")
    seconds = {}
    for name in [BASELINE] + [name for name in names if name != BASELINE]:
        metric = build_metric(name, device)
        with torch.no_grad():
            metric(sr, gt)  # warm-up
            with PeakMemory(device) as memory:
                synchronize(device)
                start = time.perf_counter()
                for _ in range(args.repeats):
                    metric(sr, gt)
                synchronize(device)
        seconds[name] = (time.perf_counter() - start) / args.repeats
        if name in names:
            print(f"{name:<10} {seconds[name]:9.3f} s/image  x{seconds[name] / seconds[BASELINE]:8.2f} vs NIQE  "
                  f"peak {memory.peak_mb:8.0f} MB", flush=True)
    return 0

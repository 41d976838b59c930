"""Stability of a diffusion SR method over N runs with different noise: G-STD and L-STD (CCSR).

Sun et al., "Improving the Stability and Efficiency of Diffusion Models for Content Consistent
Super-Resolution" (CCSR), https://arxiv.org/abs/2401.00877

Symbols (M images, N runs):
    m[i, n]          a metric (PSNR, SSIM, LPIPS, ...) of image i in run n
    mean  = mean_i mean_n m[i, n]
    G-STD = mean_i std_n m[i, n]                       (population std, ddof = 0)
    L-STD = mean_i mean_{c,h,w} std_n x[i, n, h, w, c]  (SR outputs as RGB in [0, 1], border cropped)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def global_std(metric_runs: np.ndarray) -> float:
    """G-STD: metric values (M images, N runs) -> mean over images of the std over runs (ddof 0)."""
    metric_runs = np.asarray(metric_runs, dtype=np.float64)
    if metric_runs.ndim != 2:
        raise ValueError(f"expected metric values shaped (images, runs), got {metric_runs.shape}")
    return float(np.std(metric_runs, axis=1).mean())


def mean_over_runs(metric_runs: np.ndarray) -> float:
    """Mean of a metric over images and runs: (M, N) -> mean_i mean_n."""
    return float(np.asarray(metric_runs, dtype=np.float64).mean())


def local_std_image(sample_runs: np.ndarray) -> float:
    """Per-image L-STD: (N, H, W, C) outputs in [0, 1] -> mean over pixels and channels of the std over N."""
    sample_runs = np.asarray(sample_runs, dtype=np.float64)
    if sample_runs.ndim != 4:
        raise ValueError(f"expected samples shaped (runs, H, W, C), got {sample_runs.shape}")
    return float(np.std(sample_runs, axis=0).mean())


def local_std(per_image: Sequence[float]) -> float:
    """L-STD of a set: mean over images of `local_std_image`."""
    return float(np.mean(per_image))

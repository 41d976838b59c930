"""NIQE: the no-reference Natural Image Quality Evaluator (lower is better), as the LIVE MATLAB release computes it.

Mittal, Soundararajan & Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
IEEE Signal Processing Letters 2013, https://doi.org/10.1109/LSP.2012.2227726

Steps (the release's `computequality`, blocks 96x96, no overlap):
    1. one grey plane in 0..255, rounded to integers: MATLAB rgb2gray ('gray', the release and pyiqa)
       or Y of BT.601 YCbCr ('y', BasicSR); cropped to a multiple of 96 in both directions;
    2. at scale 1 and at scale 1/2 (MATLAB bicubic imresize): MSCN map with replicate padding, then
       18 features per block (96 / scale pixels) -> (blocks, 36):
           AGGD fit of the MSCN values          -> alpha, (beta_l + beta_r) / 2
           AGGD fit of each neighbour product   -> alpha, (beta_r - beta_l) G(2/a) / G(1/a), beta_l, beta_r
       with beta = std * sqrt(G(1/a) / G(3/a)) the AGGD scale (G = gamma function);
    3. Gaussian of the block features: column means ignoring NaNs, covariance of the rows without NaN;
    4. NIQE = sqrt((mu_p - mu_d)^T pinv((cov_p + cov_d) / 2) (mu_p - mu_d)) against the pristine model.

The pristine model (`data/niqe_pristine_params.npz`) is the release's `modelparameters.mat`;
source and licence in `data/README.md`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.special import gamma as gamma_fn

from stablesr.metrics.brisque import rgb_to_gray_matlab
from stablesr.metrics.fidelity import rgb_to_y_bt601
from stablesr.metrics.nss import fit_aggd, imresize_half, mscn, neighbour_products

BLOCK_SIZE = 96
NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
Luma = Literal["gray", "y"]
_PARAMS_FILE = Path(__file__).parent / "data" / "niqe_pristine_params.npz"


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray]:
    """(mu (36,), cov (36, 36)) of the pristine-image feature Gaussian."""
    params = np.load(_PARAMS_FILE)
    return params["mu_pris_param"], params["cov_pris_param"]


def aggd_scales(values: np.ndarray) -> tuple[float, float, float]:
    """AGGD fit -> (alpha, beta_l, beta_r), the scales being the side stds times sqrt(G(1/a) / G(3/a))."""
    alpha, left_std, right_std = fit_aggd(values)
    factor = np.sqrt(gamma_fn(1 / alpha) / gamma_fn(3 / alpha))
    return alpha, float(left_std * factor), float(right_std * factor)


def block_features(block: np.ndarray) -> np.ndarray:
    """The 18 NIQE features of one MSCN block (h, w)."""
    alpha, beta_left, beta_right = aggd_scales(block.ravel())
    features = [alpha, (beta_left + beta_right) / 2]
    for products in neighbour_products(block, NEIGHBOUR_SHIFTS):
        alpha, beta_left, beta_right = aggd_scales(products)
        mean = (beta_right - beta_left) * gamma_fn(2 / alpha) / gamma_fn(1 / alpha)
        features += [alpha, mean, beta_left, beta_right]
    return np.array(features)


def scale_features(plane: np.ndarray, block: int) -> np.ndarray:
    """Features of every non-overlapping block of one MSCN plane: (H, W) -> (blocks, 18)."""
    rows, columns = plane.shape[0] // block, plane.shape[1] // block
    return np.stack(
        [
            block_features(plane[r * block : (r + 1) * block, c * block : (c + 1) * block])
            for r in range(rows)
            for c in range(columns)
        ]
    )


def niqe_features(luma: np.ndarray) -> np.ndarray:
    """Block features at two scales of a (H, W) luminance plane in 0..255 -> (blocks, 36)."""
    height = luma.shape[0] // BLOCK_SIZE * BLOCK_SIZE
    width = luma.shape[1] // BLOCK_SIZE * BLOCK_SIZE
    luma = luma[:height, :width]
    scale1 = scale_features(mscn(luma, padding="replicate"), BLOCK_SIZE)
    scale2 = scale_features(mscn(imresize_half(luma), padding="replicate"), BLOCK_SIZE // 2)
    return np.concatenate([scale1, scale2], axis=1)


def niqe_from_features(features: np.ndarray) -> float:
    """Distance of the features' Gaussian (blocks, 36) from the pristine Gaussian (MATLAB nanmean / nancov)."""
    mu_pristine, cov_pristine = pristine_model()
    mu_image = np.nanmean(features, axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    cov_image = np.cov(complete, rowvar=False) if len(complete) > 1 else np.zeros_like(cov_pristine)
    difference = mu_pristine - mu_image
    return float(np.sqrt(difference @ np.linalg.pinv((cov_pristine + cov_image) / 2) @ difference))


def niqe(image: np.ndarray, *, luma: Luma = "gray") -> float:
    """NIQE of an (H, W, 3) RGB image with values 0..255, at least 96x96 pixels (lower is better).

    `luma` picks the grey plane: 'gray' (MATLAB rgb2gray, as the LIVE release and pyiqa) or 'y'
    (Y of BT.601 YCbCr, as BasicSR); both are rounded to integers.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < BLOCK_SIZE:
        raise ValueError(f"NIQE needs an (H, W, 3) RGB image of at least 96x96 pixels, got shape {image.shape}")
    if luma not in ("gray", "y"):
        raise ValueError(f"luma must be 'gray' or 'y', got {luma!r}")
    plane = rgb_to_gray_matlab(image) if luma == "gray" else np.round(rgb_to_y_bt601(image))
    return niqe_from_features(niqe_features(plane))

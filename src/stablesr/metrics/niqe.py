"""NIQE: the no-reference Natural Image Quality Evaluator (lower is better), as the LIVE MATLAB release computes it.

Mittal, Soundararajan & Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
IEEE Signal Processing Letters 2013, https://doi.org/10.1109/LSP.2012.2227726

Steps (MATLAB `computequality`, blocks 96x96, no overlap, no sharpness selection at test time):
    1. luminance plane (Y of BT.601 YCbCr in 0..255, as the SR papers' toolboxes use), cropped to a
       multiple of 96 in both directions;
    2. at scale 1 and at scale 1/2 (MATLAB bicubic imresize): MSCN map with replicate padding, then
       the 18 NSS features (see `nss.py`; the GGD spread as a std) of every block (96 / scale
       pixels) -> (blocks, 36);
    3. fit a Gaussian (mean, covariance) to the block features, dropping blocks with a NaN feature;
    4. NIQE = sqrt((mu_p - mu_d)^T pinv((cov_p + cov_d) / 2) (mu_p - mu_d)) against the pristine model.

The pristine model (`data/niqe_pristine_params.npz`) is the LIVE `modelparameters.mat`, as shipped
in the Apache-2.0 `basicsr==1.4.2` sdist; source and licence in `data/README.md`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from stablesr.metrics.fidelity import rgb_to_y_bt601
from stablesr.metrics.nss import imresize_half, mscn, nss_features

BLOCK_SIZE = 96
_PARAMS_FILE = Path(__file__).parent / "data" / "niqe_pristine_params.npz"


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray]:
    """(mu (36,), cov (36, 36)) of the pristine-image feature Gaussian."""
    params = np.load(_PARAMS_FILE)
    return params["mu_pris_param"], params["cov_pris_param"]


def block_features(plane: np.ndarray, block: int) -> np.ndarray:
    """18 NSS features of every non-overlapping block of one MSCN plane: (H, W) -> (blocks, 18).

    Unlike BRISQUE, NIQE keeps the GGD spread as a standard deviation (column 1), not a variance.
    """
    rows, columns = plane.shape[0] // block, plane.shape[1] // block
    features = np.stack(
        [
            nss_features(plane[r * block : (r + 1) * block, c * block : (c + 1) * block])
            for r in range(rows)
            for c in range(columns)
        ]
    )
    features[:, 1] = np.sqrt(features[:, 1])
    return features


def niqe_features(luma: np.ndarray) -> np.ndarray:
    """Block features at two scales of a (H, W) luminance plane in 0..255 -> (blocks, 36)."""
    height = luma.shape[0] // BLOCK_SIZE * BLOCK_SIZE
    width = luma.shape[1] // BLOCK_SIZE * BLOCK_SIZE
    luma = luma[:height, :width]
    scale1 = block_features(mscn(luma, padding="replicate"), BLOCK_SIZE)
    scale2 = block_features(mscn(imresize_half(luma), padding="replicate"), BLOCK_SIZE // 2)
    return np.concatenate([scale1, scale2], axis=1)


def niqe_from_features(features: np.ndarray) -> float:
    """Distance of the features' Gaussian (blocks, 36) from the pristine Gaussian."""
    features = features[~np.isnan(features).any(axis=1)]
    mu_pristine, cov_pristine = pristine_model()
    mu_image = features.mean(axis=0)
    cov_image = np.cov(features, rowvar=False) if len(features) > 1 else np.zeros_like(cov_pristine)
    difference = mu_pristine - mu_image
    return float(np.sqrt(difference @ np.linalg.pinv((cov_pristine + cov_image) / 2) @ difference))


def niqe(image: np.ndarray) -> float:
    """NIQE of an (H, W, 3) RGB image with values 0..255, at least 96x96 pixels (lower is better)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < BLOCK_SIZE:
        raise ValueError(f"NIQE needs an (H, W, 3) RGB image of at least 96x96 pixels, got shape {image.shape}")
    return niqe_from_features(niqe_features(rgb_to_y_bt601(image)))

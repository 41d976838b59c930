"""BRISQUE: Blind/Referenceless Image Spatial Quality Evaluator (lower is better), as the LIVE MATLAB release.

Mittal, Moorthy & Bovik, "No-Reference Image Quality Assessment in the Spatial Domain",
IEEE TIP 2012, https://doi.org/10.1109/TIP.2012.2214050

Steps (MATLAB `brisquescore`):
    1. grey plane: MATLAB `rgb2gray` of the uint8 image, rounded to integers;
    2. at scale 1 and at scale 1/2 (MATLAB bicubic imresize): MSCN map with zero padding, the 18 NSS
       features of the whole map (see `nss.py`) -> 36 features;
    3. scale each feature to [-1, 1] with the training set's min / max (libsvm `svm-scale`);
    4. score = sum_i coef_i exp(-gamma |x - sv_i|^2) - rho (libsvm epsilon-SVR with an RBF kernel).

The SVR and the scaling ranges (`data/brisque_svr_live.npz`, trained on LIVE IQA) are the MATLAB
release's `allmodel` (774 support vectors) and `allrange`; source and licence in `data/README.md`.
Features:
    MSCN map       GGD fit -> alpha, variance
    each product   AGGD fit -> alpha, (right_std - left_std) G(2/a) / sqrt(G(1/a) G(3/a)), left_std^2, right_std^2
    (G = gamma function; products with the neighbours at shifts (0,1), (1,0), (1,1), (-1,1)).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.special import gamma as gamma_fn

from stablesr.metrics.nss import fit_aggd, fit_ggd, imresize_half, mscn, neighbour_products

NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))
# MATLAB rgb2gray: the first row of the inverse of the NTSC (YIQ) transform.
_GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
_MODEL_FILE = Path(__file__).parent / "data" / "brisque_svr_live.npz"


@lru_cache(maxsize=1)
def svr_model() -> dict[str, np.ndarray]:
    """support_vectors (774, 36), dual_coefs (770,), rho, gamma, feature_min / feature_max (36,)."""
    with np.load(_MODEL_FILE) as model:
        return {name: model[name] for name in model.files}


def rgb_to_gray_matlab(rgb: np.ndarray) -> np.ndarray:
    """MATLAB rgb2gray of a uint8 image: (H, W, 3) 0..255 -> (H, W) float64 integers 0..255."""
    return np.round(np.asarray(rgb, dtype=np.float64) @ _GRAY_WEIGHTS)


def map_features(mscn_map: np.ndarray) -> np.ndarray:
    """The 18 BRISQUE features of one MSCN map (H, W)."""
    features = list(fit_ggd(mscn_map.ravel()))
    for products in neighbour_products(mscn_map, NEIGHBOUR_SHIFTS):
        alpha, left_std, right_std = fit_aggd(products)
        mean = (right_std - left_std) * gamma_fn(2 / alpha) / np.sqrt(gamma_fn(1 / alpha) * gamma_fn(3 / alpha))
        features += [alpha, mean, left_std**2, right_std**2]
    return np.array(features)


def brisque_features(gray: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a (H, W) grey plane in 0..255 (18 at full, 18 at half size)."""
    full = map_features(mscn(gray, padding="zero"))
    half = map_features(mscn(imresize_half(gray), padding="zero"))
    return np.concatenate([full, half])


def brisque_from_features(features: np.ndarray) -> float:
    """libsvm-scaled features (36,) -> epsilon-SVR prediction."""
    model = svr_model()
    low, high = model["feature_min"], model["feature_max"]
    scaled = -1.0 + 2.0 * (features - low) / (high - low)
    squared_distances = ((model["support_vectors"] - scaled) ** 2).sum(axis=1)
    kernel = np.exp(-model["gamma"] * squared_distances)
    return float(model["dual_coefs"] @ kernel - model["rho"])


def brisque(image: np.ndarray) -> float:
    """BRISQUE of an (H, W, 3) RGB image with values 0..255 (lower is better)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 16:
        raise ValueError(f"BRISQUE needs an (H, W, 3) RGB image of at least 16x16 pixels, got shape {image.shape}")
    return brisque_from_features(brisque_features(rgb_to_gray_matlab(image)))

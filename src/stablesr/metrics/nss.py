"""Natural-scene statistics shared by NIQE and BRISQUE: MSCN coefficients, GGD / AGGD fits, MATLAB imresize.

Mittal, Moorthy & Bovik, "No-Reference Image Quality Assessment in the Spatial Domain" (BRISQUE),
IEEE TIP 2012, https://doi.org/10.1109/TIP.2012.2214050

Symbols:
    mscn       (I - mu) / (sigma + 1), mu and sigma from a 7x7 Gaussian window (sigma 7/6), I in 0..255
    alpha      GGD / AGGD shape, found on the grid 0.2:0.001:10 by moment matching as in the MATLAB code
    left_std   sqrt(mean(x^2 | x < 0)), right_std likewise for x > 0
    features   [alpha, variance] of the MSCN map, then for the four neighbour products
               (shifts (0,1), (1,0), (1,1), (-1,1)): [alpha, mean, left_std^2, right_std^2]  -> 18 values
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import correlate
from scipy.special import gamma as gamma_fn

from stablesr.metrics.fidelity import gaussian_kernel_1d

_SHAPE_GRID = np.arange(0.2, 10.0 + 5e-4, 0.001)
_GGD_RATIO = gamma_fn(1 / _SHAPE_GRID) * gamma_fn(3 / _SHAPE_GRID) / gamma_fn(2 / _SHAPE_GRID) ** 2
_AGGD_RATIO = 1.0 / _GGD_RATIO
NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))

Padding = Literal["replicate", "zero"]


def mscn(image: np.ndarray, *, padding: Padding) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a (H, W) float64 plane in 0..255.

    `padding` is MATLAB's border rule: 'replicate' (imfilter, NIQE) or 'zero' (filter2, BRISQUE).
    """
    taps = gaussian_kernel_1d(7, 7 / 6)
    window = np.outer(taps, taps)
    mode = "nearest" if padding == "replicate" else "constant"
    mu = correlate(image, window, mode=mode, cval=0.0)
    sigma = np.sqrt(np.abs(correlate(image * image, window, mode=mode, cval=0.0) - mu * mu))
    return (image - mu) / (sigma + 1.0)


def fit_ggd(values: np.ndarray) -> tuple[float, float]:
    """Generalised Gaussian fit of zero-mean samples -> (alpha, variance)."""
    variance = np.mean(values**2)
    rho = variance / np.mean(np.abs(values)) ** 2
    return float(_SHAPE_GRID[np.argmin(np.abs(rho - _GGD_RATIO))]), float(variance)


def fit_aggd(values: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian fit -> (alpha, mean, left_std^2, right_std^2)."""
    left_std = np.sqrt(np.mean(values[values < 0] ** 2))
    right_std = np.sqrt(np.mean(values[values > 0] ** 2))
    gamma_hat = left_std / right_std
    r_hat = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = _SHAPE_GRID[np.argmin((_AGGD_RATIO - r_hat_norm) ** 2)]
    mean = (right_std - left_std) * gamma_fn(2 / alpha) / np.sqrt(gamma_fn(1 / alpha) * gamma_fn(3 / alpha))
    return float(alpha), float(mean), float(left_std**2), float(right_std**2)


def nss_features(mscn_map: np.ndarray) -> np.ndarray:
    """The 18 BRISQUE/NIQE features of one MSCN map (H, W); neighbours wrap around (MATLAB circshift)."""
    features = list(fit_ggd(mscn_map.ravel()))
    for shift in NEIGHBOUR_SHIFTS:
        products = mscn_map * np.roll(mscn_map, shift, axis=(0, 1))
        features.extend(fit_aggd(products.ravel()))
    return np.array(features)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (MATLAB imresize 'bicubic')."""
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def imresize_weights(in_length: int, scale: float) -> np.ndarray:
    """(out, in) matrix of MATLAB imresize bicubic with antialiasing, mirrored borders, for scale <= 1."""
    out_length = int(np.ceil(in_length * scale))
    width = 4.0 / scale
    centres = np.arange(1, out_length + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinates
    first = np.floor(centres - width / 2)
    taps = int(np.ceil(width)) + 2
    indices = first[:, None] + np.arange(taps)[None, :]  # (out, taps), 1-based
    weights = scale * _cubic(scale * (centres[:, None] - indices))
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])  # 0-based, symmetric
    columns = mirror[(indices.astype(int) - 1) % (2 * in_length)]
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), columns.ravel()), weights.ravel())
    return matrix


def imresize_half(image: np.ndarray) -> np.ndarray:
    """MATLAB `imresize(image, 0.5)` of a (H, W) float64 plane -> (ceil(H/2), ceil(W/2))."""
    rows = imresize_weights(image.shape[0], 0.5)
    columns = imresize_weights(image.shape[1], 0.5)
    return rows @ image @ columns.T

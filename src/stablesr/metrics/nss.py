"""Natural-scene statistics shared by NIQE and BRISQUE: MSCN coefficients, GGD / AGGD fits, MATLAB imresize.

Mittal, Moorthy & Bovik, "No-Reference Image Quality Assessment in the Spatial Domain" (BRISQUE),
IEEE TIP 2012, https://doi.org/10.1109/TIP.2012.2214050

Symbols (both LIVE MATLAB releases compute them the same way):
    window     MATLAB fspecial('gaussian', 7, 7/6): exp(-(x^2 + y^2) / (2 sigma^2)) normalised to sum 1
    mscn       (I - mu) / (sigma + 1), mu and sigma from `window`, I in 0..255
    alpha      GGD / AGGD shape, found on the grid 0.2:0.001:10 by moment matching
    ggd        rho = E[x^2] / E[|x|]^2 matched to G(1/a) G(3/a) / G(2/a)^2 (G = gamma function)
    aggd       left_std = sqrt(mean(x^2 | x < 0)), right_std likewise for x > 0 (exact zeros in neither);
               r = E[|x|]^2 / E[x^2] corrected by the std ratio and matched to G(2/a)^2 / (G(1/a) G(3/a))
    products   the MSCN map times itself circularly shifted (MATLAB circshift) to four neighbours
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import correlate, maximum_filter, minimum_filter
from scipy.special import gamma as gamma_fn

SHAPE_GRID = np.arange(200, 10001) / 1000  # 0.2:0.001:10
_GGD_RATIO = gamma_fn(1 / SHAPE_GRID) * gamma_fn(3 / SHAPE_GRID) / gamma_fn(2 / SHAPE_GRID) ** 2
_AGGD_RATIO = 1.0 / _GGD_RATIO

Padding = Literal["replicate", "zero"]


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """MATLAB fspecial('gaussian', size, sigma): (size, size) taps summing to 1."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    return window / window.sum()


def mscn(image: np.ndarray, *, padding: Padding) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a (H, W) float64 plane in 0..255.

    `padding` is MATLAB's border rule: 'replicate' (imfilter, NIQE) or 'zero' (filter2, BRISQUE).
    Where the 7x7 neighbourhood is constant the exact value, 0, is returned instead of the filter's
    rounding noise (about 1e-14), whose sign would otherwise decide the AGGD side of those pixels.
    """
    window = gaussian_window()
    mode = "nearest" if padding == "replicate" else "constant"
    mu = correlate(image, window, mode=mode, cval=0.0)
    sigma = np.sqrt(np.abs(correlate(image * image, window, mode=mode, cval=0.0) - mu * mu))
    flat = maximum_filter(image, size=7, mode=mode, cval=0.0) == minimum_filter(image, size=7, mode=mode, cval=0.0)
    return np.where(flat, 0.0, (image - mu) / (sigma + 1.0))


def fit_ggd(values: np.ndarray) -> tuple[float, float]:
    """Generalised Gaussian fit of zero-mean samples -> (alpha, variance)."""
    variance = np.mean(values**2)
    rho = variance / np.mean(np.abs(values)) ** 2
    return float(SHAPE_GRID[np.argmin(np.abs(rho - _GGD_RATIO))]), float(variance)


def fit_aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit -> (alpha, left_std, right_std)."""
    left_std = np.sqrt(np.mean(values[values < 0] ** 2))
    right_std = np.sqrt(np.mean(values[values > 0] ** 2))
    gamma_hat = left_std / right_std
    r_hat = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = SHAPE_GRID[np.argmin((_AGGD_RATIO - r_hat_norm) ** 2)]
    return float(alpha), float(left_std), float(right_std)


def neighbour_products(mscn_map: np.ndarray, shifts: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """MSCN map times its circular shift (MATLAB circshift(map, shift)) for each shift, flattened."""
    return [(mscn_map * np.roll(mscn_map, shift, axis=(0, 1))).ravel() for shift in shifts]


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

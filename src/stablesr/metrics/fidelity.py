"""PSNR and SSIM with the BasicSR / MATLAB convention of the SR papers (Y of BT.601 YCbCr, border crop).

SSIM: Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004, https://doi.org/10.1109/TIP.2003.819861

Convention (as in the StableSR / CCSR / DeeDSR tables):
    images are 0..255 values, float64, no rounding after the colour conversion;
    Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B in [0, 1]  (ITU-R BT.601, studio range);
    `crop_border` pixels are removed on each side before measuring;
    PSNR = 10 log10(255^2 / MSE), +inf for identical images;
    SSIM uses an 11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01 * 255)^2,
    C2 = (0.03 * 255)^2; the RGB variant averages the three per-channel SSIMs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import correlate1d

from stablesr.data.ops import gaussian_kernel_1d

Channel = Literal["y", "rgb"]

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2


def rgb_to_y_bt601(rgb: np.ndarray) -> np.ndarray:
    """Luma of BT.601 YCbCr: (H, W, 3) RGB in 0..255 -> (H, W) float64 Y in 16..235."""
    return 16.0 + np.asarray(rgb, dtype=np.float64) @ _Y_WEIGHTS


def prepare_pair(
    pred: np.ndarray, gt: np.ndarray, *, crop_border: int, channel: Channel
) -> tuple[np.ndarray, np.ndarray]:
    """Check a pair, convert to float64 (H, W, C) with C = 1 (Y) or 3 (RGB), crop the border."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"expected two (H, W, 3) RGB images of one size, got {pred.shape} and {gt.shape}")
    if channel not in ("y", "rgb"):
        raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}")
    if 2 * crop_border >= min(pred.shape[:2]):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {pred.shape[1]}x{pred.shape[0]} image")
    pair = []
    for image in (pred, gt):
        image = image.astype(np.float64)
        if channel == "y":
            image = rgb_to_y_bt601(image)[..., None]  # (H, W, 3) -> (H, W, 1)
        if crop_border:
            image = image[crop_border:-crop_border, crop_border:-crop_border]
        pair.append(image)
    return pair[0], pair[1]


def psnr(pred: np.ndarray, gt: np.ndarray, *, crop_border: int = 0, channel: Channel = "y") -> float:
    """PSNR in dB of two (H, W, 3) RGB images with values 0..255; +inf when they are equal."""
    pred, gt = prepare_pair(pred, gt, crop_border=crop_border, channel=channel)
    mse = np.mean((pred - gt) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """SSIM index map of two (H, W) float64 planes (0..255): (H - 10, W - 10), 'valid' windows."""
    taps = gaussian_kernel_1d(11, 1.5).numpy()  # (11,) float64, as MATLAB fspecial / cv2

    def blur(plane: np.ndarray) -> np.ndarray:
        full = correlate1d(correlate1d(plane, taps, axis=0), taps, axis=1)
        return full[5:-5, 5:-5]  # keep only windows that lie inside the image

    mu_pred, mu_gt = blur(pred), blur(gt)
    var_pred = blur(pred * pred) - mu_pred**2
    var_gt = blur(gt * gt) - mu_gt**2
    covariance = blur(pred * gt) - mu_pred * mu_gt
    numerator = (2 * mu_pred * mu_gt + _SSIM_C1) * (2 * covariance + _SSIM_C2)
    denominator = (mu_pred**2 + mu_gt**2 + _SSIM_C1) * (var_pred + var_gt + _SSIM_C2)
    return numerator / denominator


def ssim(pred: np.ndarray, gt: np.ndarray, *, crop_border: int = 0, channel: Channel = "y") -> float:
    """SSIM of two (H, W, 3) RGB images with values 0..255 (mean over channels for 'rgb')."""
    pred, gt = prepare_pair(pred, gt, crop_border=crop_border, channel=channel)
    if min(pred.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {pred.shape[1]}x{pred.shape[0]}")
    per_channel = [ssim_map(pred[..., c], gt[..., c]).mean() for c in range(pred.shape[2])]
    return float(np.mean(per_channel))

"""The one place where images change representation (as diffusers' VaeImageProcessor).

The public API works in [0, 1]: PIL images, (B, 3, H, W) / (3, H, W) tensors or (B, H, W, 3) /
(H, W, 3) numpy arrays go in, and the same kind comes out. Only the autoencoder sees [-1, 1]:
`to_model_range` on the way in, `to_unit_range` on the way out, once each per call.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from stablesr.errors import StableSRError

OutputType = Literal["pil", "pt", "np"]
ImageInput = PIL.Image.Image | list[PIL.Image.Image] | Tensor | np.ndarray


def to_model_range(x: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1] (what the VAE encoder expects)."""
    return x * 2 - 1


def to_unit_range(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped (what the VAE decoder gives back, as a picture)."""
    return ((x + 1) / 2).clamp(0, 1)


def pil_to_tensor(image: PIL.Image.Image) -> Tensor:
    """RGB PIL image (H, W) -> (1, 3, H, W) float32 in [0, 1]."""
    if image.mode != "RGB":
        raise ValueError(f"pil_to_tensor expects an RGB image, got mode {image.mode!r} (use load_image)")
    array = torch.from_numpy(np.array(image, dtype=np.float32))
    return array.permute(2, 0, 1).unsqueeze(0) / 255  # (H, W, 3) -> (1, 3, H, W)


def tensor_to_pil(x: Tensor, *, bit_depth: Literal[8, 16] = 8) -> PIL.Image.Image | np.ndarray:
    """(1, 3, H, W) in [0, 1] -> RGB PIL image (bit_depth 8), or an (H, W, 3) uint16 array for bit_depth 16
    (Pillow has no 16-bit RGB mode; `stablesr.imaging.save_image_atomic` writes either)."""
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"tensor_to_pil expects a (1, 3, H, W) tensor, got {tuple(x.shape)}")
    levels = 255 if bit_depth == 8 else 65535
    array = (x.detach().float().cpu().clamp(0, 1)[0].permute(1, 2, 0) * levels).round().numpy()  # -> (H, W, 3)
    if bit_depth == 16:
        return array.astype(np.uint16)
    return PIL.Image.fromarray(array.astype(np.uint8), mode="RGB")


def input_kind(image: ImageInput) -> OutputType:
    """The output type that gives back the same kind of object as `image`."""
    if torch.is_tensor(image):
        return "pt"
    return "np" if isinstance(image, np.ndarray) else "pil"


def preprocess_images(image: ImageInput) -> list[Tensor]:
    """PIL image(s), a tensor or an array in [0, 1] -> a list of (1, 3, H, W) float32 tensors in [0, 1].

    uint8 arrays are read as 0..255. Other ranges are refused (a [-1, 1] tensor would silently
    give a darker picture).
    """
    if isinstance(image, PIL.Image.Image):
        return [pil_to_tensor(image.convert("RGB"))]
    if isinstance(image, (list, tuple)) and all(isinstance(im, PIL.Image.Image) for im in image):
        return [pil_to_tensor(im.convert("RGB")) for im in image]
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise StableSRError(f"an image array must be (H, W, 3) or (B, H, W, 3), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    if torch.is_tensor(image):
        batch = image[None] if image.ndim == 3 else image
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise StableSRError(f"an image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        batch = batch.float()
        if batch.numel() and (batch.min() < 0 or batch.max() > 1):
            raise StableSRError("image values must be in [0, 1] (PIL images, tensors and float arrays alike)")
        return [x[None] for x in batch]
    raise StableSRError("image must be a PIL image, a list of them, a (B, 3, H, W) tensor or a (B, H, W, 3) array "
                        "in [0, 1]")


def postprocess_images(images: list[Tensor], output_type: OutputType) -> list[PIL.Image.Image] | Tensor | np.ndarray:
    """(1, 3, H, W) tensors in [0, 1] -> PIL images, one (B, 3, H, W) tensor, or one (B, H, W, 3) array.

    Tensors and arrays of different sizes stay lists.
    """
    if output_type == "pt":
        return torch.cat(images) if len({o.shape for o in images}) == 1 else images
    if output_type == "np":
        arrays = [o[0].permute(1, 2, 0).numpy() for o in images]  # (1, 3, H, W) -> (H, W, 3)
        return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays
    if output_type == "pil":
        return [tensor_to_pil(o) for o in images]
    raise StableSRError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")

"""Datasets: HR folders degraded on the fly (training) and LR/HR folder pairs (evaluation).

The HR-folder dataset follows Real-ESRGAN's / StableSR's data side
(https://arxiv.org/abs/2107.10833, https://arxiv.org/abs/2305.07015): filter out images that are
too small, random-crop (or reflect-pad) to the crop size, flip, then degrade with a preset. Every
item's randomness comes from a generator seeded by (seed, epoch, index), so items do not depend
on the number of DataLoader workers. Items are dicts of tensors in [0, 1]; `params` is the JSON
text of the item's degradation record (strings collate into a list).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from stablesr.data.degradations import DegradationSettings, degrade, params_to_record
from stablesr.errors import StableSRError
from stablesr.imaging import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under the given folders."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            found.append(path)
    return found


def read_rgb(path: str | Path) -> torch.Tensor:
    """An image file as (3, H, W) float32 in [0, 1] (16-bit sources keep their precision)."""
    loaded = load_image(path)
    array = loaded.rgb_float if loaded.rgb_float is not None else np.asarray(loaded.rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()  # (H, W, 3) -> (3, H, W)


def item_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed from a base seed and integer keys (epoch, index, ...)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def crop_or_pad(
    image: torch.Tensor, *, size: int, crop: Literal["random", "center"], generator: torch.Generator
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(3, H, W) -> (3, size, size): reflect-pad bottom/right when smaller, then crop.

    Returns the crop and its (top, left) in the padded image.
    """
    pad_bottom, pad_right = max(0, size - image.shape[1]), max(0, size - image.shape[2])
    if pad_bottom or pad_right:
        image = torch.nn.functional.pad(image[None], (0, pad_right, 0, pad_bottom), mode="reflect")[0]
    spare_h, spare_w = image.shape[1] - size, image.shape[2] - size
    if crop == "center":
        top, left = spare_h // 2, spare_w // 2
    else:
        top = int(torch.randint(0, spare_h + 1, (), generator=generator))
        left = int(torch.randint(0, spare_w + 1, (), generator=generator))
    return image[:, top : top + size, left : left + size], (top, left)


def _big_enough(path: Path, min_size: int, min_bytes: int) -> bool:
    """Header-only check of the pixel size and the file size; unreadable files are left out."""
    try:
        with Image.open(path) as image:
            return min(image.size) >= min_size and path.stat().st_size >= min_bytes
    except (OSError, ValueError):
        return False


class HRFolderDataset(torch.utils.data.Dataset):
    """HR images -> {"gt": (3, S, S), "lr": (3, S/s, S/s), "lr_up": (3, S, S), "params": str, "path": str}.

    With `degradation=None` the items hold only "gt" and "path", for degrading whole batches on
    the GPU with `BatchDegrader`. Images whose short side is under `min_size` pixels or whose
    file is under `min_bytes` are left out (StableSR: 384 px and 100 KB for 512 crops).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        crop_size: int = 512,
        min_size: int | None = None,
        min_bytes: int = 0,
        crop: Literal["random", "center"] = "random",
        hflip: bool = True,
        degradation: DegradationSettings | None = None,
        seed: int = 0,
        repeats: int = 1,
        cache_images: bool = False,
        mild_degradation: DegradationSettings | None = None,
        mild_fraction: float = 0.0,
    ):
        min_size = crop_size // 2 + 1 if min_size is None else min_size
        if min_size <= crop_size // 2:
            raise ValueError(f"min_size must exceed crop_size / 2 = {crop_size // 2} so reflect padding works")
        missing = [str(path) for path in map(Path, paths) if not path.exists()]
        if missing:
            raise ValueError(f"image folder(s) not found: {', '.join(missing)}")
        candidates = list_images(paths)
        self.files = [p for p in candidates if _big_enough(p, min_size, min_bytes)]
        if not self.files:
            raise ValueError(f"no usable images (>= {min_size} px, >= {min_bytes} bytes) among the "
                             f"{len(candidates)} image file(s) in {list(map(str, paths))}")
        self.left_out_files = sorted(set(candidates) - set(self.files))
        self.left_out = len(self.left_out_files)
        if repeats < 1 or not 0.0 <= mild_fraction <= 1.0:
            raise ValueError(f"need repeats >= 1 and mild_fraction in [0, 1], got {repeats} and {mild_fraction}")
        self.crop_size, self.crop, self.hflip = crop_size, crop, hflip
        self.degradation, self.seed, self.epoch = degradation, seed, 0
        self.repeats, self.mild_degradation, self.mild_fraction = repeats, mild_degradation, mild_fraction
        # Decoded once as uint8 (small photo pools on CPU: decoding a PNG costs more than a training crop).
        self._cache = [self._read_uint8(p) for p in self.files] if cache_images else None

    @staticmethod
    def _read_uint8(path: Path) -> torch.Tensor | None:
        try:
            return (read_rgb(path) * 255.0).round().to(torch.uint8)
        except (StableSRError, OSError, ValueError):
            return None  # reported by `read` when the item is drawn

    def _image(self, file_index: int) -> torch.Tensor:
        if self._cache is None or self._cache[file_index] is None:
            return read_rgb(self.files[file_index])
        return self._cache[file_index].float() / 255.0

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops and degradations for the next epoch."""
        self.epoch = epoch

    def read(self, index: int) -> tuple[torch.Tensor, Path]:
        """The image at `index`, or (with a warning) the next readable one when it cannot be decoded (a
        truncated file whose header looked fine), so one bad file never stops a run."""
        for offset in range(len(self.files)):
            file_index = (index + offset) % len(self.files)
            path = self.files[file_index]
            try:
                return self._image(file_index), path
            except (StableSRError, OSError, ValueError) as error:
                warnings.warn(f"skipped unreadable training image {path}: {error}", stacklevel=2)
        raise StableSRError(f"none of the {len(self.files)} training images can be read")

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index))
        image, path = self.read(index % len(self.files))
        gt, _ = crop_or_pad(image, size=self.crop_size, crop=self.crop, generator=generator)
        if self.hflip and torch.rand((), generator=generator) < 0.5:
            gt = gt.flip(-1)
        item = {"gt": gt, "path": str(path)}
        if self.degradation is None:
            return item
        settings = self.degradation
        if self.mild_degradation is not None and torch.rand((), generator=generator) < self.mild_fraction:
            settings = self.mild_degradation
        batch, params = degrade(gt[None], settings, generator=generator)
        return {**item, "gt": batch.gt[0], "lr": batch.lr[0], "lr_up": batch.lr_up[0],
                "params": json.dumps(params_to_record(params[0]))}


class PairedFolderDataset(torch.utils.data.Dataset):
    """LR and HR folders matched by file stem -> {"lr": (3, h, w), "gt": (3, H, W), "name": str}.

    With `scale` given, every pair must satisfy H = scale h and W = scale w.
    """

    def __init__(self, lr_dir: str | Path, hr_dir: str | Path, *, scale: int | None = None):
        lr_files = {p.stem: p for p in list_images([lr_dir])}
        hr_files = {p.stem: p for p in list_images([hr_dir])}
        self.names = sorted(set(lr_files) & set(hr_files))
        if not self.names:
            raise ValueError(f"no file stems in common between {lr_dir} and {hr_dir}")
        self.lr_files, self.hr_files, self.scale = lr_files, hr_files, scale

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        lr, gt = read_rgb(self.lr_files[name]), read_rgb(self.hr_files[name])
        if self.scale is not None and tuple(gt.shape[1:]) != (lr.shape[1] * self.scale, lr.shape[2] * self.scale):
            raise ValueError(f"pair {name}: HR {tuple(gt.shape[1:])} is not {self.scale}x LR {tuple(lr.shape[1:])}")
        return {"lr": lr, "gt": gt, "name": name}

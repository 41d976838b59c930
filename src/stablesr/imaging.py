"""Image files in and out: loading every Pillow mode (EXIF, alpha, 16-bit, CMYK), atomic saving,
tensor conversion, and StableSR's LR preprocessing (https://arxiv.org/abs/2305.07015, IJCV 2024).

Preprocessing follows the official tile script: the short side is brought up to `min_size` when
`upscale` alone would leave it smaller, the image is padded to a multiple of the latent stride,
and `postprocess_sr` undoes both so the output is exactly `int(H * upscale) x int(W * upscale)`.
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError
from torch import Tensor

from stablesr.errors import ImageReadError, StableSRError
from stablesr.image_processor import pil_to_tensor, tensor_to_pil, to_model_range, to_unit_range

# 300 MP: larger than any camera frame (200 MP phone sensors, 8K x 8K = 67 MP) or the stitched
# panoramas users feed in, yet it caps a decompression bomb (a few-KB PNG can declare
# 100k x 100k pixels) at about 0.9 GB of RGB bytes, 3.6 GB as a float32 tensor.
DEFAULT_MAX_PIXELS = 300_000_000

SAVE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
_ICC_FORMATS = {"PNG", "JPEG", "WEBP", "TIFF"}
_SIXTEEN_BIT_FORMATS = {"PNG"}  # Pillow cannot write 16-bit RGB; PNG has our own small writer
_SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}

# 16-bit RGB(A) rawmodes Pillow reduces to their high byte; the swapped one yields the low byte.
_SWAPPED_RAWMODE = {
    "RGB;16B": "RGB;16L", "RGB;16L": "RGB;16B", "RGBA;16B": "RGBA;16L", "RGBA;16L": "RGBA;16B",
    "RGB;16N": "RGB;16B" if np.little_endian else "RGB;16L",
    "RGBA;16N": "RGBA;16B" if np.little_endian else "RGBA;16L",
}
_GRAY_16BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# EXIF orientation -> numpy op on (H, W, ...) arrays (the inverse of how the camera stored it).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, k=1),
}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_PILLOW_LIMIT_LOCK = threading.Lock()


class OutputExistsError(StableSRError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image, upright, split into colour and alpha.

    rgb: mode "RGB" (8-bit view, EXIF orientation applied). alpha: mode "L" or None.
    bit_depth: 8, or 16 for 16-bit / integer / float sources. rgb_float: (H, W, 3) float32 in
    [0, 1] with the full source precision, only when bit_depth is 16. icc_profile: the embedded
    profile the pixels are in (None for sRGB, also after a CMYK conversion).
    """

    rgb: Image.Image
    alpha: Image.Image | None
    bit_depth: int
    icc_profile: bytes | None
    source_mode: str
    rgb_float: np.ndarray | None = None

    def to_unit_tensor(self) -> Tensor:
        """(1, 3, H, W) float32 in [0, 1], from the full-precision data when there is some."""
        if self.rgb_float is None:
            return pil_to_tensor(self.rgb)
        return torch.from_numpy(self.rgb_float).permute(2, 0, 1).unsqueeze(0)  # (H, W, 3) -> (1, 3, H, W)

    def to_tensor(self) -> Tensor:
        """(1, 3, H, W) float32 in [-1, 1] (the autoencoder's range); see `to_unit_tensor`."""
        return to_model_range(self.to_unit_tensor())


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file; raises ImageReadError naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"cannot read image {path}: {'it is a folder' if path.is_dir() else 'no such file'}")
    try:
        with _pillow_size_check_off(), Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"cannot read image {path}: {width}x{height} is {width * height / 1e6:.0f} MP, over the "
                    f"limit of {max_pixels / 1e6:.0f} MP (raise max_pixels if the file is trusted)"
                )
            return _decode(image, path)
    except UnidentifiedImageError as error:
        raise ImageReadError(f"cannot read image {path}: not a recognised image format") from error
    except _DECODE_ERRORS as error:
        reason = "the file is truncated" if "truncated" in str(error) else f"corrupt or unsupported ({error})"
        raise ImageReadError(f"cannot read image {path}: {reason}") from error


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header only (nothing decoded); ImageReadError when unreadable."""
    try:
        with _pillow_size_check_off(), Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {path}: corrupt or unsupported ({error})") from error


@contextmanager
def _pillow_size_check_off():
    """Pillow's global decompression-bomb limit (89 MP) is replaced by our own `max_pixels`."""
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode(image: Image.Image, path: Path) -> LoadedImage:
    mode, rawmode = image.mode, _rawmode(image)  # before anything loads the pixels and clears the tiles
    icc_profile = image.info.get("icc_profile") or None
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    rgb_float, alpha = None, None
    if mode == "CMYK":
        rgb, icc_profile = _cmyk_to_rgb(image, icc_profile), None
    elif rawmode in _SWAPPED_RAWMODE:
        rgb_float, alpha = _read_rgb16(image, path, swapped=_SWAPPED_RAWMODE[rawmode])
    elif mode in _GRAY_16BIT_MODES:
        rgb_float = _gray_to_float(image)
    elif "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        rgb, alpha = rgba[..., :3], rgba[..., 3]
    else:
        rgb = np.asarray(image.convert("RGB"))
    if rgb_float is not None:
        rgb = np.round(rgb_float * 255).astype(np.uint8)
    orient = _ORIENT.get(orientation, lambda a: a)
    return LoadedImage(
        rgb=Image.fromarray(np.ascontiguousarray(orient(rgb)), mode="RGB"),
        alpha=None if alpha is None else Image.fromarray(np.ascontiguousarray(orient(alpha)), mode="L"),
        bit_depth=8 if rgb_float is None else 16,
        icc_profile=icc_profile,
        source_mode=mode,
        rgb_float=None if rgb_float is None else np.ascontiguousarray(orient(rgb_float)),
    )


def _rawmode(image: Image.Image) -> str | None:
    """The decoder's raw pixel layout (e.g. "RGB;16B"), before Pillow narrows it to its mode."""
    if not image.tile:
        return None
    args = image.tile[0].args
    return args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)


def _read_rgb16(image: Image.Image, path: Path, *, swapped: str) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit RGB(A): Pillow keeps only the high byte, so decode again with the byte order
    swapped to get the low byte, and join them. Returns ((H, W, 3) float32 in [0, 1], alpha)."""
    high = np.asarray(image).astype(np.uint16)
    with Image.open(path) as low_image:
        low_image.tile = [tile._replace(args=_with_rawmode(tile.args, swapped)) for tile in low_image.tile]
        low = np.asarray(low_image).astype(np.uint16)
    rgb16 = (high[..., :3] << 8) | low[..., :3]
    alpha = high[..., 3].astype(np.uint8) if high.shape[-1] == 4 else None
    return rgb16.astype(np.float32) / 65535, alpha


def _with_rawmode(args, rawmode: str):
    return rawmode if isinstance(args, str) else (rawmode, *args[1:])


def _gray_to_float(image: Image.Image) -> np.ndarray:
    """16-bit and integer modes are read as 0..65535, float ("F") as 0..1. -> (H, W, 3) float32."""
    gray = np.asarray(image).astype(np.float32)
    gray = np.clip(gray, 0, 1) if image.mode == "F" else np.clip(gray, 0, 65535) / 65535
    return np.repeat(gray[..., None], 3, axis=2)  # (H, W) -> (H, W, 3)


def _cmyk_to_rgb(image: Image.Image, icc_profile: bytes | None) -> np.ndarray:
    """Through the embedded ICC profile into sRGB when there is a usable one, else Pillow's formula."""
    if icc_profile is not None:
        try:
            source = ImageCms.ImageCmsProfile(BytesIO(icc_profile))
            srgb = ImageCms.createProfile("sRGB")
            return np.asarray(ImageCms.profileToProfile(image, source, srgb, outputMode="RGB"))
        except ImageCms.PyCMSError:
            pass  # a broken or mismatched profile: the plain conversion below still gives an image
    return np.asarray(image.convert("RGB"))


def image_to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image (H, W) -> (1, 3, H, W) float32 in [-1, 1] (the autoencoder's range).

    The [0, 1] conversions of the public API live in `stablesr.image_processor`; this composes them."""
    if image.mode != "RGB":
        raise ValueError(f"image_to_tensor expects an RGB image, got mode {image.mode!r} (use load_image)")
    return to_model_range(pil_to_tensor(image))


def tensor_to_image(x: Tensor, *, bit_depth: Literal[8, 16] = 8) -> Image.Image | np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> RGB PIL image (bit_depth 8), or an (H, W, 3) uint16 array for
    bit_depth 16, since Pillow has no 16-bit RGB mode; `save_image_atomic` writes either."""
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"tensor_to_image expects a (1, 3, H, W) tensor, got {tuple(x.shape)}")
    return tensor_to_pil(to_unit_range(x.detach().float().cpu()), bit_depth=bit_depth)


def save_image_atomic(
    image: Image.Image | np.ndarray,
    path: str | Path,
    *,
    overwrite: bool = False,
    alpha: Image.Image | None = None,
    icc_profile: bytes | None = None,
    bit_depth: Literal[8, 16] = 8,
) -> Path:
    """Write `image` (PIL, or an (H, W, 3) uint16 array from `tensor_to_image`) in the format of
    the suffix, through a temporary file in the same folder renamed into place, so `path` is
    never half-written. 16 bits are kept where the format allows (PNG), alpha and the ICC
    profile where it supports them. Raises OutputExistsError unless `overwrite`."""
    path = Path(path)
    file_format = SAVE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise StableSRError(f"cannot save {path}: unknown image suffix (use one of {', '.join(SAVE_FORMATS)})")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; kept it (pass --overwrite / overwrite=True to replace it)")
    size = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    if alpha is not None and alpha.size != size:
        raise ValueError(f"alpha size {alpha.size} differs from the image size {size} (use resize_alpha)")
    return write_file_atomic(
        path, lambda file: _write(file, image, file_format, alpha=alpha, icc_profile=icc_profile, bit_depth=bit_depth),
        overwrite=overwrite)


def check_output_path(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse an existing `path` (OutputExistsError unless `overwrite`) and an unwritable folder (StableSRError),
    so a long job can fail before its work rather than after it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (pass --overwrite to replace it)")
    _create_temp(path).unlink()
    return path


def write_file_atomic(path: str | Path, write: Callable[[BinaryIO], None], *, overwrite: bool = False) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place, so `path` is never
    half-written; an existing `path` raises OutputExistsError unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    temp_path = _create_temp(path)
    try:
        with open(temp_path, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temp_path, path)
        else:
            _link_no_clobber(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)
    return path


def _link_no_clobber(temp_path: Path, path: Path) -> None:
    """Put `temp_path` at `path` only if nothing is there, atomically (a hard link fails on an existing
    name), so a file that appeared since the run began (another run into the same folder) is never replaced."""
    try:
        os.link(temp_path, path)
    except FileExistsError as error:
        raise OutputExistsError(f"{path} appeared while this run was working; kept it (pass --overwrite to "
                                "replace outputs)") from error
    except OSError:  # a filesystem without hard links: the closest check-then-rename
        if path.exists():
            raise OutputExistsError(f"{path} appeared while this run was working; kept it") from None
        os.replace(temp_path, path)


def _create_temp(path: Path) -> Path:
    """An empty hidden file beside `path`; a clear StableSRError when the folder is not writable."""
    temp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_path.open("xb").close()
    except OSError as error:
        reason = error.strerror or error
        raise StableSRError(f"cannot write {path}: folder {path.parent} is not writable ({reason})") from error
    return temp_path


def _write(file, image, file_format: str, *, alpha, icc_profile, bit_depth: int) -> None:
    if isinstance(image, np.ndarray) and bit_depth == 16 and file_format in _SIXTEEN_BIT_FORMATS:
        _write_png16(file, image, alpha=alpha, icc_profile=icc_profile)
        return
    if isinstance(image, np.ndarray):  # uint16 (H, W, 3) into a format without 16 bits
        image = Image.fromarray(np.round(image / 257).astype(np.uint8), mode="RGB")
    if alpha is not None and file_format in _ALPHA_FORMATS:
        image = image.convert("RGB")
        image.putalpha(alpha)
    options = dict(_SAVE_OPTIONS.get(file_format, {}))
    if icc_profile is not None and file_format in _ICC_FORMATS:
        options["icc_profile"] = icc_profile
    image.save(file, format=file_format, **options)


def _write_png16(file, rgb16: np.ndarray, *, alpha: Image.Image | None, icc_profile: bytes | None) -> None:
    """A 16-bit RGB (colour type 2) or RGBA (6) PNG with unfiltered rows."""
    pixels = rgb16.astype(np.uint16)
    if alpha is not None:
        alpha16 = np.asarray(alpha).astype(np.uint16) * 257
        pixels = np.concatenate([pixels, alpha16[..., None]], axis=2)  # (H, W, 3) -> (H, W, 4)
    pixels = pixels.astype(">u2")  # PNG stores big-endian samples
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).view(np.uint8)  # (H, W, C) -> (H, 2WC) bytes
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter byte 0
    file.write(b"\x89PNG\r\n\x1a\n")
    _write_chunk(file, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6 if alpha is not None else 2, 0, 0, 0))
    if icc_profile is not None:
        _write_chunk(file, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))
    _write_chunk(file, b"IDAT", zlib.compress(scanlines.tobytes(), 6))
    _write_chunk(file, b"IEND", b"")


def _write_chunk(file, kind: bytes, data: bytes) -> None:
    file.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))


def resize_alpha(alpha: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Bicubic resize of an "L" alpha channel to `size` in PIL order (width, height), e.g. sr.size."""
    return alpha.resize(size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Preprocessed:
    """image: (B, 3, Hp, Wp) in [-1, 1], padded. crop: (top, left, height, width) of the valid
    region in it. output_size: (H, W) of the final output, int(H_lr * upscale) x int(W_lr * upscale)."""

    image: Tensor
    crop: tuple[int, int, int, int]
    output_size: tuple[int, int]


MAX_OUTPUT_PIXELS = 2**28  # 268 MP (16384 x 16384): beyond it an output is refused before any work


def check_output_size(height: int, width: int, upscale: float) -> tuple[int, int]:
    """(H_out, W_out) = (int(H * s), int(W * s)); StableSRError when empty or over MAX_OUTPUT_PIXELS."""
    out_h, out_w = int(height * upscale), int(width * upscale)
    if out_h < 1 or out_w < 1:
        raise StableSRError(f"--scale {upscale:g} turns a {width}x{height} image into an empty {out_w}x{out_h} one")
    if out_h * out_w > MAX_OUTPUT_PIXELS:
        raise StableSRError(f"--scale {upscale:g} turns a {width}x{height} image into {out_w}x{out_h} "
                            f"({out_h * out_w / 1e6:.0f} MP), over the {MAX_OUTPUT_PIXELS / 1e6:.0f} MP limit")
    return out_h, out_w


def preprocess_lr(lr: Tensor, *, upscale: float, min_size: int = 512, multiple: int = 8,
                  lazy: bool = False) -> Preprocessed:
    """Bicubic-upscale the LR image (B, 3, H, W) in [-1, 1] by s = max(min_size / min(H, W), upscale)
    to (int(H*s), int(W*s)) (round down, as the official script: a 49-px side gives 511, not 512),
    clamp, and reflect-pad bottom/right to a multiple of `multiple` (replicate when the pad is
    larger than reflection allows). Example: (1, 3, 37, 50), upscale 4 -> image (1, 3, 152, 200),
    crop (0, 0, 148, 200), output_size (148, 200). lazy: at a power-of-two scale, `image` is a
    `LazyUpsampled` (crops computed on demand, bitwise the same) instead of a tensor."""
    if lr.ndim != 4 or lr.shape[1] != 3:
        raise ValueError(f"preprocess_lr expects a (B, 3, H, W) tensor, got {tuple(lr.shape)}")
    if upscale <= 0 or min_size < 1 or multiple < 1:
        raise ValueError(f"need upscale > 0, min_size >= 1, multiple >= 1; got {upscale}, {min_size}, {multiple}")
    height, width = lr.shape[-2:]
    check_output_size(height, width, upscale)
    scale = max(min_size / min(height, width), upscale)
    resized_size = (int(height * scale), int(width * scale))
    pad_bottom, pad_right = (-resized_size[0]) % multiple, (-resized_size[1]) % multiple
    reflect_ok = pad_bottom < resized_size[0] and pad_right < resized_size[1]
    output_size = (int(height * upscale), int(width * upscale))
    if lazy and scale in (2, 4, 8, 16):  # power-of-two factors: crops are exact (see LazyUpsampled)
        image = LazyUpsampled(lr, int(scale), resized_size, (resized_size[0] + pad_bottom, resized_size[1] + pad_right),
                              reflect=reflect_ok)
        return Preprocessed(image=image, crop=(0, 0, *resized_size), output_size=output_size)
    resized = F.interpolate(lr, size=resized_size, mode="bicubic", align_corners=False).clamp_(-1, 1)
    padded = F.pad(resized, (0, pad_right, 0, pad_bottom), mode="reflect" if reflect_ok else "replicate")
    return Preprocessed(image=padded, crop=(0, 0, *resized_size), output_size=output_size)


class LazyUpsampled:
    """`preprocess_lr(...).image` computed crop by crop from the LR image, never whole: the bicubic
    upsampling by an integer power of two, clamped to [-1, 1], reflect-padded bottom/right.

    `image[..., rows, cols]` (slices, step 1) is a tensor equal to the same crop of the whole image,
    bitwise: each crop interpolates the LR rows and columns under it plus 2 px of real context, and at
    a power-of-two scale torch's source positions (dst + 0.5) / s - 0.5 are exact, so every output
    pixel has the same taps and weights. Memory: the LR image and one crop. `shape`, `dtype`, `device`
    and `to(device, dtype)` behave like a tensor's; `materialize()` gives the whole image.
    """

    CONTEXT = 2  # LR pixels of context on each side of a crop (bicubic reaches 2 source pixels)

    def __init__(self, lr: Tensor, factor: int, resized: tuple[int, int], padded: tuple[int, int], *,
                 reflect: bool, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        self.lr, self.factor, self.resized, self.padded, self.reflect = lr, factor, resized, padded, reflect
        self.dtype = dtype or lr.dtype
        self.device = torch.device(device) if device is not None else lr.device

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.lr.shape[:2], *self.padded))

    def to(self, device=None, dtype: torch.dtype | None = None) -> LazyUpsampled:
        return LazyUpsampled(self.lr, self.factor, self.resized, self.padded, reflect=self.reflect,
                             dtype=dtype or self.dtype, device=device or self.device)

    def float(self) -> Tensor:
        return self.materialize().float()

    def materialize(self) -> Tensor:
        return self[..., 0 : self.padded[0], 0 : self.padded[1]]

    def __getitem__(self, key) -> Tensor:
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] is Ellipsis):
            raise TypeError(f"index a LazyUpsampled as image[..., rows, cols], got {key!r}")
        rows, cols = (self._source(index, axis) for axis, index in enumerate(key[1:]))
        (lr_rows, out_rows), (lr_cols, out_cols) = rows, cols
        crop = self.lr[..., lr_rows, lr_cols].to(self.device)
        size = ((lr_rows.stop - lr_rows.start) * self.factor, (lr_cols.stop - lr_cols.start) * self.factor)
        up = F.interpolate(crop, size=size, mode="bicubic", align_corners=False).clamp_(-1, 1)
        return up.index_select(-2, out_rows.to(self.device)).index_select(-1, out_cols.to(self.device)).to(self.dtype)

    def _source(self, index: slice, axis: int) -> tuple[slice, Tensor]:
        """(LR slice to interpolate, indices of the padded positions in that slice's upsampling)."""
        start, stop, step = index.indices(self.padded[axis])
        if step != 1 or stop <= start:
            raise ValueError(f"need a non-empty slice with step 1, got {index}")
        size = self.resized[axis]
        positions = torch.arange(start, stop)
        over = positions >= size  # the padding: reflected (or replicated) resized positions
        mirrored = 2 * (size - 1) - positions if self.reflect else torch.full_like(positions, size - 1)
        positions = torch.where(over, mirrored, positions)
        low = max(int(positions.min()) // self.factor - self.CONTEXT, 0)
        high = min(int(positions.max()) // self.factor + 1 + self.CONTEXT, self.lr.shape[-2 + axis])
        return slice(low, high), positions - low * self.factor


def postprocess_sr(sr: Tensor, pre: Preprocessed) -> Tensor:
    """(B, 3, Hp, Wp) model output on the padded grid -> (B, 3, *pre.output_size) in [-1, 1]:
    crop the padding, then bicubic-resize when the input was brought up to min_size."""
    top, left, height, width = pre.crop
    sr = sr[..., top : top + height, left : left + width]
    if (height, width) != pre.output_size:
        sr = F.interpolate(sr, size=pre.output_size, mode="bicubic", align_corners=False)
    return sr.clamp(-1, 1)

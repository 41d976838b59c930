"""Image I/O and LR preprocessing, on real files written with Pillow / numpy in tmp_path."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms

from stablesr.errors import ImageReadError, StableSRError
from stablesr.imaging import (
    OutputExistsError,
    image_to_tensor,
    load_image,
    postprocess_sr,
    preprocess_lr,
    resize_alpha,
    save_image_atomic,
    tensor_to_image,
)


def _pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# --- modes -------------------------------------------------------------------------------------


def test_rgb_png_round_trip_and_tensor_values(tmp_path):
    pixels = _pattern(5, 7)
    pixels[0, 0] = (0, 51, 255)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert (loaded.source_mode, loaded.bit_depth, loaded.alpha) == ("RGB", 8, None)
    x = loaded.to_tensor()
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, -0.6, 1.0], abs=1e-7)
    assert np.array_equal(np.asarray(tensor_to_image(x)), pixels)


def test_tensor_to_image_rounds_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0 / 255, 5.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert np.asarray(tensor_to_image(x))[0, :, 0].tolist() == [0, 0, 128, 128, 255]  # 127.5 -> 128, 128.0 -> 128
    assert tensor_to_image(x, bit_depth=16)[0, :, 0].tolist() == [0, 0, 32768, 32896, 65535]


def test_rgba_alpha_split_and_reattached(tmp_path):
    rgba = np.concatenate([_pattern(4, 6), np.arange(24, dtype=np.uint8).reshape(4, 6, 1) * 10], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.rgb.mode == "RGB" and loaded.alpha.mode == "L"
    assert np.array_equal(np.asarray(loaded.rgb), rgba[..., :3])
    assert np.array_equal(np.asarray(loaded.alpha), rgba[..., 3])

    big_alpha = resize_alpha(loaded.alpha, (12, 8))
    assert big_alpha.size == (12, 8)
    sr = loaded.rgb.resize((12, 8), Image.Resampling.NEAREST)
    save_image_atomic(sr, tmp_path / "sr.png", alpha=big_alpha)
    again = load_image(tmp_path / "sr.png")
    assert np.array_equal(np.asarray(again.alpha), np.asarray(big_alpha))
    assert np.array_equal(np.asarray(again.rgb), np.asarray(sr))
    save_image_atomic(sr, tmp_path / "sr.jpg", alpha=big_alpha)  # JPEG has no alpha: dropped
    assert Image.open(tmp_path / "sr.jpg").mode == "RGB"
    with pytest.raises(ValueError, match="alpha size"):
        save_image_atomic(sr, tmp_path / "bad.png", alpha=loaded.alpha)


def test_la_gray_with_alpha(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    alpha = 255 - gray
    Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.source_mode == "LA"
    assert np.array_equal(np.asarray(loaded.rgb), np.repeat(gray[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(loaded.alpha), alpha)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (3, 2))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putdata([0, 1, 1, 0, 0, 1])
    image.save(tmp_path / "a.png", transparency=1)
    loaded = load_image(tmp_path / "a.png")
    assert loaded.source_mode == "P"
    assert np.asarray(loaded.alpha).tolist() == [[255, 0, 0], [255, 255, 0]]
    assert np.asarray(loaded.rgb)[0].tolist() == [[10, 20, 30], [200, 100, 50], [200, 100, 50]]


def test_palette_without_transparency_has_no_alpha(tmp_path):
    Image.fromarray(_pattern(4, 4)).convert("P").save(tmp_path / "a.gif")
    loaded = load_image(tmp_path / "a.gif")
    assert loaded.alpha is None and loaded.rgb.mode == "RGB"


def test_cmyk_plain_and_with_unusable_profile(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 255, 255, 0]]], dtype=np.uint8)
    image = Image.fromarray(cmyk, mode="CMYK")
    image.save(tmp_path / "plain.tif")
    expected = [[[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 0, 0]]]
    loaded = load_image(tmp_path / "plain.tif")
    assert loaded.source_mode == "CMYK" and loaded.icc_profile is None
    assert np.asarray(loaded.rgb).tolist() == expected
    # An RGB profile cannot convert CMYK pixels: the plain formula is used and the image still loads.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(tmp_path / "tagged.tif", icc_profile=srgb)
    tagged = load_image(tmp_path / "tagged.tif")
    assert np.asarray(tagged.rgb).tolist() == expected and tagged.icc_profile is None


def test_icc_profile_kept_and_written(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_pattern(3, 3)).save(tmp_path / "a.png", icc_profile=srgb)
    loaded = load_image(tmp_path / "a.png")
    assert loaded.icc_profile == srgb
    for name in ("b.png", "b.jpg", "b.webp", "b.tif"):
        save_image_atomic(loaded.rgb, tmp_path / name, icc_profile=loaded.icc_profile)
        assert Image.open(tmp_path / name).info.get("icc_profile") == srgb, name


def test_grayscale_and_one_bit(tmp_path):
    gray = np.array([[0, 1, 254, 255]], dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "l.png")
    assert np.asarray(load_image(tmp_path / "l.png").rgb).tolist() == [[[v] * 3 for v in gray[0]]]
    Image.fromarray(np.array([[True, False, True]])).save(tmp_path / "bits.png")
    loaded = load_image(tmp_path / "bits.png")
    assert loaded.source_mode == "1"
    assert np.asarray(loaded.rgb).tolist() == [[[255] * 3, [0] * 3, [255] * 3]]


@pytest.mark.parametrize("name", ["g16.png", "g16.tif"])
def test_16bit_gray_keeps_low_byte(tmp_path, name):
    values = np.array([[1000, 1001, 65535, 0]], dtype=np.uint16)  # 0x03E8 / 0x03E9 share the high byte
    Image.fromarray(values).save(tmp_path / name)
    loaded = load_image(tmp_path / name)
    assert loaded.bit_depth == 16 and loaded.source_mode.startswith("I;16")
    x = loaded.to_tensor()
    expected = torch.tensor(values[0] / 65535 * 2 - 1, dtype=torch.float32)
    assert torch.allclose(x[0, 0, 0], expected, atol=1e-6) and torch.equal(x[0, 0], x[0, 2])
    assert x[0, 0, 0, 0] != x[0, 0, 0, 1]
    assert np.asarray(loaded.rgb)[0, :, 0].tolist() == [4, 4, 255, 0]  # round(v / 65535 * 255)


def _rgb16_values() -> np.ndarray:
    values = np.random.default_rng(3).integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    values[0, 0], values[0, 1] = (0x1234, 0x1234, 0x1234), (0x1235, 0x1200, 0x12FF)  # same high byte
    return values


def test_16bit_rgb_png_written_and_read_back(tmp_path):
    values = _rgb16_values()
    alpha = Image.fromarray(np.full((4, 5), 77, np.uint8), mode="L")
    save_image_atomic(values, tmp_path / "rgb16.png", bit_depth=16, alpha=alpha)
    loaded = load_image(tmp_path / "rgb16.png")
    assert loaded.bit_depth == 16 and loaded.source_mode == "RGBA"
    assert np.array_equal(np.round(loaded.rgb_float * 65535).astype(np.uint16), values)
    assert np.asarray(loaded.alpha).tolist() == [[77] * 5] * 4
    x = loaded.to_tensor()
    assert x[0, 0, 0, 0] != x[0, 0, 0, 1] and x[0, 1, 0, 0] != x[0, 1, 0, 1]
    assert np.array_equal(tensor_to_image(x, bit_depth=16), values)
    save_image_atomic(values, tmp_path / "rgb8.jpg", bit_depth=16)  # JPEG: 8 bits only
    assert Image.open(tmp_path / "rgb8.jpg").mode == "RGB"


@pytest.mark.parametrize("name", ["cv.png", "cv.tif"])
def test_16bit_rgb_from_another_writer(tmp_path, name):
    cv2 = pytest.importorskip("cv2", reason="OpenCV writes the independent 16-bit RGB files")
    values = _rgb16_values()
    assert cv2.imwrite(str(tmp_path / name), values[..., ::-1])  # OpenCV stores BGR
    loaded = load_image(tmp_path / name)
    assert loaded.bit_depth == 16
    assert np.array_equal(np.round(loaded.rgb_float * 65535).astype(np.uint16), values)
    if name.endswith(".png"):
        save_image_atomic(tensor_to_image(loaded.to_tensor(), bit_depth=16), tmp_path / "out.png", bit_depth=16)
        assert np.array_equal(cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)[..., ::-1], values)


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])  # 6: rotate 90 CW to view, 8: CCW
def test_exif_orientation_applied(tmp_path, orientation, turns):
    stored = _pattern(2, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "a.png", exif=exif)
    loaded = load_image(tmp_path / "a.png")
    upright = np.asarray(loaded.rgb)
    assert upright.shape == (3, 2, 3)
    assert np.array_equal(upright, np.rot90(stored, k=turns))
    corner = (0, 1) if orientation == 6 else (2, 0)  # where the stored top-left pixel ends up
    assert np.array_equal(upright[corner], stored[0, 0])


# --- bad files ---------------------------------------------------------------------------------


def _write_valid(tmp_path, name: str) -> bytes:
    Image.fromarray(_pattern(64, 64)).save(tmp_path / name)
    return (tmp_path / name).read_bytes()


@pytest.mark.parametrize("name", ["t.jpg", "t.png"])
def test_truncated_file(tmp_path, name):
    data = _write_valid(tmp_path, name)
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"{name}.*truncated"):
        load_image(tmp_path / name)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("noise.png", np.random.default_rng(0).bytes(4000), "not a recognised image format"),
        ("empty.jpg", b"", "not a recognised image format"),
        ("notes.png", b"this is a text file\n", "not a recognised image format"),
    ],
)
def test_unreadable_files(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=rf"{name}: {reason}"):
        load_image(tmp_path / name)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png: no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="it is a folder"):
        load_image(tmp_path)


def test_content_decides_not_the_suffix(tmp_path):
    Image.fromarray(_pattern(3, 3)).save(tmp_path / "really_png.jpg", format="PNG")
    assert np.array_equal(np.asarray(load_image(tmp_path / "really_png.jpg").rgb), _pattern(3, 3))


def test_pixel_limit(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # declares 10 GP, holds nothing
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b""))
    with pytest.raises(ImageReadError, match=r"bomb.png: 100000x100000 is 10000 MP, over the limit of 300 MP"):
        load_image(tmp_path / "bomb.png")
    Image.fromarray(_pattern(20, 20)).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(tmp_path / "small.png", max_pixels=399)
    assert load_image(tmp_path / "small.png", max_pixels=400).rgb.size == (20, 20)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own global is restored


# --- saving ------------------------------------------------------------------------------------


def test_existing_output_refused_then_overwritten(tmp_path):
    first, second = Image.fromarray(_pattern(4, 4, seed=1)), Image.fromarray(_pattern(4, 4, seed=2))
    path = save_image_atomic(first, tmp_path / "out.png")
    with pytest.raises(OutputExistsError, match="out.png already exists") as caught:
        save_image_atomic(second, path)
    assert isinstance(caught.value, FileExistsError) and isinstance(caught.value, StableSRError)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(first))
    save_image_atomic(second, path, overwrite=True)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(second))
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary files left


def test_failed_write_keeps_original_and_leaves_no_temp(tmp_path, monkeypatch):
    original = Image.fromarray(_pattern(4, 4))
    path = save_image_atomic(original, tmp_path / "out.png")
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_image_atomic(original, path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_formats_and_nested_folders(tmp_path):
    pixels = _pattern(8, 8)
    for name in ("a.png", "a.bmp", "a.tif", "a.tiff", "deep/er/a.png"):
        save_image_atomic(Image.fromarray(pixels), tmp_path / name)
        assert np.array_equal(np.asarray(Image.open(tmp_path / name).convert("RGB")), pixels), name
    save_image_atomic(Image.fromarray(pixels), tmp_path / "a.jpeg")
    assert Image.open(tmp_path / "a.jpeg").format == "JPEG"
    save_image_atomic(Image.fromarray(pixels), tmp_path / "a.webp")
    assert Image.open(tmp_path / "a.webp").format == "WEBP"
    with pytest.raises(StableSRError, match="unknown image suffix"):
        save_image_atomic(Image.fromarray(pixels), tmp_path / "a.xyz")


def test_unwritable_folder(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StableSRError, match=r"cannot write .*out.png: folder .*file is not writable"):
        save_image_atomic(Image.new("RGB", (2, 2)), tmp_path / "file" / "out.png")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(StableSRError, match="is not writable"):
            save_image_atomic(Image.new("RGB", (2, 2)), folder / "out.png")
    finally:
        folder.chmod(0o700)


def test_image_to_tensor_wants_rgb():
    with pytest.raises(ValueError, match="expects an RGB image"):
        image_to_tensor(Image.new("L", (2, 2)))


# --- LR preprocessing --------------------------------------------------------------------------


def _lr(height: int, width: int) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize(
    ("size", "upscale", "min_size", "padded", "crop", "output_size"),
    [
        ((37, 50), 4.0, 64, (152, 200), (0, 0, 148, 200), (148, 200)),  # upscale wins; pad 4 rows
        ((100, 150), 4.0, 512, (512, 768), (0, 0, 512, 768), (400, 600)),  # s = 5.12 from min_size
        ((30, 45), 2.0, 100, (104, 152), (0, 0, 100, 150), (60, 90)),  # s = 10/3; pad 4 and 2
        ((49, 60), 4.0, 512, (512, 632), (0, 0, 511, 626), (196, 240)),  # int(49 * 512/49) = 511
    ],
)
def test_preprocess_sizes(size, upscale, min_size, padded, crop, output_size):
    pre = preprocess_lr(_lr(*size), upscale=upscale, min_size=min_size)
    assert tuple(pre.image.shape) == (1, 3, *padded)
    assert pre.crop == crop and pre.output_size == output_size


def test_preprocess_values_pad_and_identity_postprocess():
    lr = _lr(37, 50)
    pre = preprocess_lr(lr, upscale=4.0, min_size=64)
    resized = F.interpolate(lr, size=(148, 200), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(pre.image[..., :148, :], resized)
    assert pre.image.abs().max() <= 1
    assert torch.equal(pre.image[..., 148:, :], resized[..., [146, 145, 144, 143], :])  # reflect
    assert torch.equal(postprocess_sr(pre.image, pre), resized)  # identity "model" -> exact upscale


def test_postprocess_scales_back_down_when_min_size_applied():
    lr = _lr(30, 45)
    pre = preprocess_lr(lr, upscale=2.0, min_size=100)
    out = postprocess_sr(pre.image, pre)
    assert out.shape == (1, 3, 60, 90)
    resized = F.interpolate(lr, size=(100, 150), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(out, F.interpolate(resized, size=(60, 90), mode="bicubic", align_corners=False).clamp(-1, 1))


def test_preprocess_replicates_when_reflect_cannot():
    pre = preprocess_lr(_lr(2, 2), upscale=1.5, min_size=1)  # 3x3 padded to 8x8: pad 5 > 2
    assert pre.image.shape == (1, 3, 8, 8) and pre.crop == (0, 0, 3, 3)
    assert torch.equal(pre.image[..., 3:, :3], pre.image[..., 2:3, :3].expand(1, 3, 5, 3))
    assert torch.equal(pre.image[..., :, 3:], pre.image[..., :, 2:3].expand(1, 3, 8, 5))


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        preprocess_lr(torch.zeros(3, 8, 8), upscale=2.0)
    with pytest.raises(ValueError, match="upscale > 0"):
        preprocess_lr(torch.zeros(1, 3, 8, 8), upscale=0.0)


@pytest.mark.parametrize("size, scale", [((37, 50), 4), ((25, 37), 4), ((9, 13), 2), ((64, 47), 8), ((1, 3), 4),
                                         ((3, 2), 4)])
def test_lazy_upsampling_gives_every_crop_of_the_whole_image_bitwise(size, scale):
    """Crops interpolate only the LR pixels under them (+2 px context): at power-of-two scales the source
    positions are exact, so each crop equals the same crop of the whole upsampled, padded image."""
    from stablesr.imaging import LazyUpsampled, preprocess_lr

    lr = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(sum(size))) * 2.4 - 1.2  # clamped too
    whole = preprocess_lr(lr, upscale=scale, min_size=1, multiple=8).image
    lazy = preprocess_lr(lr, upscale=scale, min_size=1, multiple=8, lazy=True)
    assert isinstance(lazy.image, LazyUpsampled) and lazy.image.shape == whole.shape
    assert torch.equal(lazy.image.materialize(), whole)
    height, width = whole.shape[-2:]
    for rows in ((0, height), (3, min(height, 17)), (height - 5, height), (height // 2, height)):
        for cols in ((0, width), (width - 7, width), (1, max(2, width // 3))):
            crop = lazy.image[..., slice(*rows), slice(*cols)]
            assert torch.equal(crop, whole[..., slice(*rows), slice(*cols)]), (rows, cols)
    assert lazy.image.to(dtype=torch.float64)[..., 0:2, 0:2].dtype == torch.float64


def test_lazy_upsampling_only_at_power_of_two_scales_and_with_slices():
    from stablesr.imaging import LazyUpsampled, preprocess_lr

    lr = torch.zeros(1, 3, 10, 12)
    assert torch.is_tensor(preprocess_lr(lr, upscale=3, min_size=1, lazy=True).image)  # inexact positions
    lazy = preprocess_lr(lr, upscale=4, min_size=1, lazy=True).image
    assert isinstance(lazy, LazyUpsampled)
    with pytest.raises(TypeError, match=r"image\[\.\.\., rows, cols\]"):
        lazy[0]
    with pytest.raises(ValueError, match="step 1"):
        lazy[..., 0:10:2, :]

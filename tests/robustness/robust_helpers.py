"""Bad inputs of the robustness suite, built on the spot (nothing is stored or downloaded).

Every case runs a subcommand in-process through the `cli` fixture (tests/conftest.py), which asserts
that an exit code comes back and no traceback is printed; the cases assert the exit code (2 usage,
1 runtime failure), the one error line, and that nothing was lost or overwritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (96, 80), seed: int = 0) -> Path:
    """A seeded noisy gradient (width, height) as PNG/JPEG by suffix."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200
    image = gradient + rng.normal(0, 8, (height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


def bad_images(folder: Path) -> dict[str, Path]:
    """Files with image suffixes that no decoder should accept: empty, truncated, garbage, a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    good_jpeg = write_image(folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    files = {
        "empty.png": b"",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 3],
        "header_only.png": b"\x89PNG\r\n\x1a\n",
        "garbage.webp": bytes(range(256)) * 4,
        "text.bmp": b"not an image at all\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}

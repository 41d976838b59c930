"""`stablesr bench nano`: the bundled model end to end against the Real-ESRGAN x4plus baseline.

Each case is the user's command (`stablesr upscale IN -o OUT`, default settings, model loading
included) run in a child process; wall time and the child's peak resident memory (sampled every
20 ms) are printed with their ratio to Real-ESRGAN on the same input, measured in the same run.
Inputs are centre crops of the bundled example photo, resized to the LR side when it is larger.
Never asserts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "coffee_lr.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="128,1024", help="LR sides to run (output is 4x), comma-separated")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled stablesr-nano)")
    parser.add_argument("--image", type=Path, default=None, help="photo the LR input is made from")
    parser.add_argument("--no-realesrgan", action="store_true", help="skip the baseline")


def run(args: argparse.Namespace) -> int:
    import torch

    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"stablesr upscale end to end (child process, default settings), CPU, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for size in sizes:
            lr_path = make_input(args.image or EXAMPLE, size, scratch / f"lr{size}.png")
            model = ["--model", args.model] if args.model else []
            nano = measure(["upscale", str(lr_path), "-o", str(scratch / "nano"), "--overwrite", "--no-progress",
                            *model])
            label = f"{size}x{size} -> {4 * size}x{4 * size}"
            print_row(f"stablesr-nano {label}", nano)
            if not args.no_realesrgan:
                baseline = measure(["upscale", str(lr_path), "-o", str(scratch / "esrgan"), "--overwrite",
                                    "--no-progress", "--method", "realesrgan"])
                print_row(f"Real-ESRGAN   {label}", baseline)
                print(f"  ratio nano / Real-ESRGAN: time {nano[0] / baseline[0]:.2f}, "
                      f"peak memory {nano[1] / baseline[1]:.2f}")
    return 0


def make_input(image: Path, size: int, target: Path) -> Path:
    from PIL import Image

    photo = Image.open(image).convert("RGB")
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC).save(target)
    return target


def measure(command: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit code) of `python -m stablesr COMMAND...`."""
    import psutil

    start = time.perf_counter()
    child = psutil.Popen([sys.executable, "-m", "stablesr", *command], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, child.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        print(f"  failed ({child.returncode}): {child.stderr.read().decode().strip()[-300:]}")
    return seconds, peak / 2**20, child.returncode


def print_row(name: str, result: tuple[float, float, int]) -> None:
    seconds, peak_mib, code = result
    status = "" if code == 0 else f"  (exit {code})"
    print(f"  {name:<44} {seconds:8.2f} s  peak {peak_mib:8.0f} MiB{status}")

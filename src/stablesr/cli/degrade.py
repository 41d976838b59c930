"""`stablesr degrade`: synthesise LR/HR pairs from HR images with a degradation preset.

Writes OUT/hr/NAME.png (the GT crop the preset trains on, USM-sharpened where the preset says
so), OUT/lr/NAME.png and OUT/params.jsonl with one record per pair. Each pair draws from its
own generator seeded by (seed, image index, copy index): the same seed gives byte-identical
files. Unreadable or too small images are reported and skipped.

params.jsonl is appended to, one flushed line as each pair is written, so an interrupted run or
a second batch into the same folder keeps every finished pair's record. When --overwrite
rewrites a pair, the file is compacted at the end to the newest record per name.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from pathlib import Path

PRESET_NAMES = ("realesrgan", "stablesr", "ccsr", "bsrgan", "bicubic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="HR", help="HR image files or folders")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (gets hr/, lr/, params.jsonl)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="stablesr", help="degradation preset")
    parser.add_argument(
        "--config", type=Path, help="YAML/JSON file of setting overrides, e.g. {noise1: {sigma_range: [1, 10]}}"
    )
    parser.add_argument("--scale", type=int, default=4, help="downscaling factor (default 4)")
    parser.add_argument("--crop", type=int, default=512, help="GT crop size; 0 keeps the whole image (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--count", type=int, default=1, help="pairs per HR image (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device for the degradation (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _whole_image(image, scale: int):
    """Crop (3, H, W) to sides divisible by the scale, keeping the top-left corner."""
    return image[:, : image.shape[1] // scale * scale, : image.shape[2] // scale * scale], (0, 0)


def _pair_names(files: list[Path], count: int) -> list[list[str]]:
    stems = [f.stem for f in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several inputs share the file name stem(s) {duplicates[:5]}; rename them or run separately")
    return [[stem] if count == 1 else [f"{stem}_{k:03d}" for k in range(count)] for stem in stems]


def _degrade_one(image, args, settings, seed_keys):
    import torch

    from stablesr.data.datasets import crop_or_pad, item_seed
    from stablesr.data.degradations import degrade

    if args.crop and 2 * min(image.shape[1:]) <= args.crop:
        size = f"{image.shape[2]}x{image.shape[1]}"
        raise ValueError(f"{size} is too small for --crop {args.crop} (needs a side > {args.crop // 2})")
    generator = torch.Generator().manual_seed(item_seed(args.seed, *seed_keys))
    if args.crop:
        gt, corner = crop_or_pad(image, size=args.crop, crop="random", generator=generator)
    else:
        gt, corner = _whole_image(image, args.scale)
    batch, params = degrade(gt[None].to(args.device), settings, generator=generator)
    return batch, params[0], corner


def _check_device(name: str) -> str | None:
    """None when `name` is a usable torch device, else the reason it is not."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name!r} is not a torch device (use cpu, cuda, cuda:1, mps)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: CUDA is not available on this machine"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {name}: MPS is not available on this machine"
    return None


def read_records(path: Path) -> list[dict]:
    """The records of a params.jsonl; a torn last line (a run killed mid-write) is left out."""
    import json

    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


@contextlib.contextmanager
def interrupt_deferred():
    """Hold SIGINT (Ctrl-C) until the block has finished, then raise KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _end_torn_line(path: Path) -> None:
    """End a last line torn by a killed run, so the next record starts on a line of its own."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as file:
            file.seek(-1, 2)
            if file.read(1) != b"\n":
                file.write(b"\n")


def compact_records(path: Path) -> None:
    """Rewrite `path` atomically with only the newest record of each name, in first-seen order."""
    import json

    from stablesr.imaging import write_file_atomic

    newest = {}
    for record in read_records(path):
        newest[record.get("name")] = record  # a dict keeps the first position and the last value
    text = "".join(json.dumps(record) + "\n" for record in newest.values())
    write_file_atomic(path, lambda file: file.write(text.encode()), overwrite=True)


def _save(tensor, path: Path, overwrite: bool) -> None:
    from stablesr.imaging import save_image_atomic, tensor_to_image

    save_image_atomic(tensor_to_image(tensor[None] * 2 - 1), path, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    import sys

    from stablesr.data.datasets import list_images
    from stablesr.data.degradations import load_overrides, preset_settings

    if args.count < 1 or args.scale < 1 or args.crop < 0 or (args.crop and args.crop % args.scale):
        print("error: --count and --scale must be >= 1 and --crop a multiple of --scale (or 0)", file=sys.stderr)
        return 2
    if (reason := _check_device(args.device)) is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    try:
        overrides = load_overrides(args.config) if args.config else None
        settings = preset_settings(args.preset, scale=args.scale, overrides=overrides)
        files = list_images(args.inputs)
        names = _pair_names(files, args.count)
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.output.exists() and not args.output.is_dir():
        print(f"error: -o {args.output} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        written, skipped, replaced = _write_pairs(files, names, args, settings)
        if replaced:
            compact_records(args.output / "params.jsonl")
    except OSError as error:  # a full disk, a file where a folder should be: stop, keeping what was written
        print(f"error: cannot write to {args.output}: {error.strerror or error} "
              f"(finished pairs and their records in params.jsonl are kept)", file=sys.stderr)
        return 1
    print(f"wrote {written} pairs to {args.output} ({skipped} image(s) skipped)")
    return 0 if written else 1


def _write_pairs(files: list[Path], names: list[list[str]], args, settings) -> tuple[int, int, bool]:
    """Degrade and write every pair, appending its record as soon as both images are written;
    returns (pairs written, images skipped, whether an existing pair was replaced)."""
    import json
    import sys

    from tqdm import tqdm

    from stablesr.data.datasets import read_rgb
    from stablesr.data.degradations import params_to_record
    from stablesr.errors import StableSRError
    from stablesr.imaging import OutputExistsError

    (args.output / "hr").mkdir(parents=True, exist_ok=True)
    (args.output / "lr").mkdir(parents=True, exist_ok=True)
    written, skipped, replaced = 0, 0, False
    _end_torn_line(args.output / "params.jsonl")
    with open(args.output / "params.jsonl", "a") as records:
        for image_index, (path, pair_names) in enumerate(tqdm(list(zip(files, names)), desc="degrade", unit="image")):
            try:
                image = read_rgb(path)
                for copy_index, name in enumerate(pair_names):
                    batch, params, corner = _degrade_one(image, args, settings, (image_index, copy_index))
                    replaced |= args.overwrite and (args.output / "hr" / f"{name}.png").exists()
                    record = {"name": name, "source": str(path), "crop_top_left": list(corner),
                              "crop_size": args.crop, "params": params_to_record(params)}
                    with interrupt_deferred():  # Ctrl-C never separates a pair from its record
                        _save(batch.gt[0], args.output / "hr" / f"{name}.png", args.overwrite)
                        _save(batch.lr[0], args.output / "lr" / f"{name}.png", args.overwrite)
                        records.write(json.dumps(record) + "\n")
                        records.flush()
                    written += 1
            except OutputExistsError:
                skipped += 1
                tqdm.write(f"skipped {path}: pair {name} already exists in {args.output} "
                           "(pass --overwrite to replace it)", file=sys.stderr)
            except (StableSRError, ValueError, RuntimeError) as error:
                skipped += 1
                tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
    return written, skipped, replaced

"""`stablesr degrade`: synthesise LR/HR pairs from HR images with a degradation preset.

Writes OUT/hr/NAME.png (the GT crop the preset trains on, USM-sharpened where the preset says
so), OUT/lr/NAME.png and OUT/params.jsonl with one record per pair. Each pair draws from its
own generator seeded by (seed, image index, copy index): the same seed gives byte-identical
files. Unreadable or too small images are reported and skipped.
"""

from __future__ import annotations

import argparse
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


def _save(tensor, path: Path, overwrite: bool) -> None:
    from stablesr.imaging import save_image_atomic, tensor_to_image

    save_image_atomic(tensor_to_image(tensor[None] * 2 - 1), path, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from tqdm import tqdm

    from stablesr.data.datasets import list_images, read_rgb
    from stablesr.data.degradations import load_overrides, params_to_record, preset_settings
    from stablesr.errors import StableSRError

    if args.count < 1 or args.scale < 1 or args.crop < 0 or (args.crop and args.crop % args.scale):
        print("error: --count and --scale must be >= 1 and --crop a multiple of --scale (or 0)", file=sys.stderr)
        return 2
    try:
        overrides = load_overrides(args.config) if args.config else None
        settings = preset_settings(args.preset, scale=args.scale, overrides=overrides)
        files = list_images(args.inputs)
        names = _pair_names(files, args.count)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    (args.output / "hr").mkdir(parents=True, exist_ok=True)
    (args.output / "lr").mkdir(parents=True, exist_ok=True)
    records, skipped = [], 0
    for image_index, (path, pair_names) in enumerate(tqdm(list(zip(files, names)), desc="degrade", unit="image")):
        try:
            image = read_rgb(path)
            for copy_index, name in enumerate(pair_names):
                batch, params, corner = _degrade_one(image, args, settings, (image_index, copy_index))
                _save(batch.gt[0], args.output / "hr" / f"{name}.png", args.overwrite)
                _save(batch.lr[0], args.output / "lr" / f"{name}.png", args.overwrite)
                records.append({"name": name, "source": str(path), "crop_top_left": list(corner),
                                "crop_size": args.crop, "params": params_to_record(params)})
        except (StableSRError, ValueError, RuntimeError) as error:
            skipped += 1
            tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
    with open(args.output / "params.jsonl", "w") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
    print(f"wrote {len(records)} pairs to {args.output} ({skipped} image(s) skipped)")
    return 0 if records else 1

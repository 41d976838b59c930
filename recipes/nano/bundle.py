"""Ship a trained pipeline folder as the bundled stablesr-nano: fp16 safetensors + recommended settings.

    python recipes/nano/bundle.py runs/nano/cfw [--target DIR] [--card docs/stablesr-nano.md]

Loads the final pipeline, casts every weight to float16, writes it (with `upscale_defaults.json`,
the model's recommended sampling settings) into the package, and rewrites the file table (bytes and
SHA-256 of every file) between the markers in the model card, which the tests check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "src" / "stablesr" / "bundled" / "stablesr-nano"
CARD = ROOT / "docs" / "stablesr-nano.md"
BEGIN, END = "<!-- files:begin -->", "<!-- files:end -->"
# The recommended settings (chosen on the validation split; see the model card).
DEFAULTS = {"num_inference_steps": 4, "sampler": "ddpm", "start": "lr", "color_fix": "wavelet",
            "fidelity": 1.0, "tile_size": 128, "tile_overlap": 32, "tile_batch_size": 1}  # VAE tiles: from the memory budget


def file_table(folder: Path) -> str:
    rows = ["| file | bytes | sha256 |", "|---|---|---|"]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append(f"| `{path.relative_to(folder).as_posix()}` | {path.stat().st_size} | `{digest}` |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the final pipeline folder (the `train cfw` run)")
    parser.add_argument("--target", type=Path, default=TARGET)
    parser.add_argument("--card", type=Path, default=CARD)
    parser.add_argument("--defaults", default=None, help="JSON object replacing the recommended settings")
    args = parser.parse_args()
    from stablesr.weights.loading import load_pipeline

    pipe = load_pipeline(args.source)
    pipe.upscale_defaults = json.loads(args.defaults) if args.defaults else DEFAULTS
    pipe.to(dtype=torch.float16)
    staging = args.target.with_name(args.target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    for config in staging.rglob("*.json"):  # no machine paths in shipped configs (diffusers records the source)
        data = json.loads(config.read_text())
        if isinstance(data, dict) and data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(args.target, ignore_errors=True)
    staging.rename(args.target)
    table = file_table(args.target)
    total = sum(p.stat().st_size for p in args.target.rglob("*") if p.is_file())
    card = args.card.read_text()
    head, rest = card.split(BEGIN)
    _, tail = rest.split(END)
    args.card.write_text(f"{head}{BEGIN}\n{table}\n\nTotal: {total} bytes ({total / 2**20:.1f} MiB).\n{END}{tail}")
    print(table)
    print(f"total {total / 2**20:.1f} MiB in {args.target}")


if __name__ == "__main__":
    main()

"""The stablesr-nano metric table: nano vs bicubic vs Real-ESRGAN x4plus on the held-out validation photos.

    python recipes/nano/evaluate.py nano-data/val eval/ [--model FOLDER] [--skip-realesrgan]

For each of the two degradation sets (`stablesr` preset and plain `bicubic`, x4, 512 crops, seed 0,
made with `stablesr degrade`) every method upscales lr/ and `stablesr evaluate` scores it against
hr/ (PSNR/SSIM on the BT.601 Y channel, border 4; NIQE; BRISQUE). Prints a Markdown table.
Only the project's own commands run; bicubic is PIL's (the usual baseline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

METRICS = "psnr,ssim,niqe,brisque"


def stablesr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "stablesr", *args], check=True)


def bicubic(lr_dir: Path, out_dir: Path, scale: int = 4) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(lr_dir.glob("*.png")):
        image = Image.open(path).convert("RGB")
        image.resize((image.width * scale, image.height * scale), Image.BICUBIC).save(out_dir / path.name)


def scores(pred: Path, gt: Path) -> dict[str, float]:
    report = pred.with_suffix(".json")
    stablesr("evaluate", str(pred), "--gt", str(gt), "--metrics", METRICS, "--crop-border", "4", "--json",
             str(report), "--overwrite")
    return json.loads(report.read_text())["summary"]["mean"]


def stability(folder: Path, runs: int, model: str | None) -> None:
    """G-STD / L-STD of PSNR and SSIM over `runs` seeds (CCSR's definitions, `stablesr evaluate --runs`)."""
    model_args = ["--model", model] if model else []
    target = folder / "nano_runs"
    stablesr("upscale", str(folder / "lr"), "-o", str(target), "--overwrite", "--runs", str(runs), *model_args)
    report = target / "stability.json"
    stablesr("evaluate", str(target), "--gt", str(folder / "hr"), "--metrics", "psnr,ssim", "--crop-border", "4",
             "--runs", str(runs), "--json", str(report), "--overwrite")
    summary = json.loads(report.read_text())["summary"]
    print(f"stability over {runs} seeds: G-STD {summary['g_std']}, L-STD {summary['l_std']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val", help="the validation HR folder (nano-data/val)")
    parser.add_argument("out", help="working folder")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled stablesr-nano)")
    parser.add_argument("--skip-realesrgan", action="store_true")
    parser.add_argument("--runs", type=int, default=10, help="seeds for G-STD / L-STD on the stablesr set (0: skip)")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for preset in ("stablesr", "bicubic"):
        folder = out / preset
        if not (folder / "lr").is_dir():
            stablesr("degrade", args.val, "-o", str(folder), "--preset", preset, "--crop", "512", "--seed", "0")
        methods = {"bicubic": folder / "bicubic", "stablesr-nano": folder / "nano"}
        bicubic(folder / "lr", methods["bicubic"])
        model = ["--model", args.model] if args.model else []
        stablesr("upscale", str(folder / "lr"), "-o", str(methods["stablesr-nano"]), "--overwrite", *model)
        if not args.skip_realesrgan:
            methods["Real-ESRGAN x4plus"] = folder / "realesrgan"
            stablesr("upscale", str(folder / "lr"), "-o", str(methods["Real-ESRGAN x4plus"]), "--overwrite",
                     "--method", "realesrgan")
        for name, pred in methods.items():
            rows.append((preset, name, scores(pred, folder / "hr")))
    if args.runs:
        stability(out / "stablesr", args.runs, args.model)
    print("| set | method | PSNR-Y | SSIM-Y | NIQE | BRISQUE |")
    print("|---|---|---|---|---|---|")
    for preset, name, mean in rows:
        print(f"| {preset} | {name} | {mean['psnr']:.2f} | {mean['ssim']:.4f} | {mean['niqe']:.2f} | "
              f"{mean['brisque']:.1f} |")


if __name__ == "__main__":
    main()

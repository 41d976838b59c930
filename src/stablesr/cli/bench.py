"""`stablesr bench TARGET`: speed and peak-memory figures (printed, never asserted).

Targets are a literal table; each module has `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse

TARGETS = {
    "models": ("stablesr.bench.models", "step at 512/1024/4096, CFW decode, peak memory vs the bare UNet"),
    "degrade": ("stablesr.bench.degrade", "degraded LR/HR pairs per second"),
    "realesrgan": ("stablesr.bench.realesrgan", "the Real-ESRGAN x4plus baseline"),
    "train": ("stablesr.bench.train", "stage-1 training steps/s and peak memory"),
    "metrics": ("stablesr.bench.metrics", "seconds per image of each evaluation metric"),
    "nano": ("stablesr.bench.nano", "the bundled model end to end vs Real-ESRGAN (time, peak memory)"),
    "official": ("stablesr.bench.official", "our step vs the official StableSR step (needs a checkout of it)"),
    "decode": ("stablesr.bench.decode", "VAE decode time and peak memory by output size and --max-memory budget"),
    "random-model": ("stablesr.bench.random_model", "a model folder of random full-size weights (timing runs)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stablesr.cli.main import add_subcommands

    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    modules = add_subcommands(sub, TARGETS)
    for name, module in modules.items():
        sub.choices[name].set_defaults(bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args.bench_run(args) or 0)

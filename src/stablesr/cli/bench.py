"""`stablesr bench TARGET`: speed and peak-memory figures (printed, never asserted).

Targets are a literal table; each module has `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "models": ("stablesr.bench.models", "encoder+UNet+SFT per step and VAE encode/decode"),
    "degrade": ("stablesr.bench.degrade", "degraded LR/HR pairs per second"),
    "realesrgan": ("stablesr.bench.realesrgan", "the Real-ESRGAN x4plus baseline"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module_name, help_text) in TARGETS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        target = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(target)
        target.set_defaults(bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args.bench_run(args) or 0)

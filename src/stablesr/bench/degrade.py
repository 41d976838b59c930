"""`stablesr bench degrade`: degraded GT/LR pairs per second, per pair vs batched (figures, not asserts).

The baseline is one pair at a time through the same pipeline, measured in the same run; the
ratio shows what batching (shared resize/noise draws, one grouped convolution) buys.
"""

from __future__ import annotations

import argparse

PRESET_NAMES = ("realesrgan", "stablesr", "ccsr", "bsrgan", "bicubic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESET_NAMES, default="stablesr", help="degradation preset")
    parser.add_argument("--size", type=int, default=512, help="GT side in pixels (default 512)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch (default 8)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches (default 3)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def _pairs_per_second(gt, settings, *, batch_size: int, seconds_of, generator) -> float:
    """Degrade `gt` in chunks of `batch_size`; returns pairs per second."""
    from stablesr.data.degradations import degrade

    def work():
        for start in range(0, gt.shape[0], batch_size):
            degrade(gt[start : start + batch_size], settings, generator=generator)

    return gt.shape[0] / seconds_of(work)


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from stablesr.data.degradations import preset_settings

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def seconds_of(work) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    settings = preset_settings(args.preset)
    count = args.batch_size * args.batches
    gt = torch.rand(count, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    generator = torch.Generator().manual_seed(0)
    timing = dict(seconds_of=seconds_of, generator=generator)
    _pairs_per_second(gt[: args.batch_size], settings, batch_size=args.batch_size, **timing)  # warm-up
    single = _pairs_per_second(gt, settings, batch_size=1, **timing)
    batched = _pairs_per_second(gt, settings, batch_size=args.batch_size, **timing)
    threads = torch.get_num_threads()
    print(f"preset {args.preset}, GT {args.size}x{args.size}, device {device}, torch threads {threads}, {count} pairs")
    print(f"per pair (baseline): {single:8.2f} pairs/s")
    print(f"batched (B={args.batch_size}):     {batched:8.2f} pairs/s   ratio {batched / single:.2f}x")
    return 0

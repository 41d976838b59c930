"""Shared CLI plumbing: device/dtype selection and the one-line error printer."""

from __future__ import annotations

import argparse
import sys

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="compute device (auto: cuda, then mps, then cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="weights/compute precision (auto: fp16 on cuda/mps, fp32 on cpu); "
                             "half precision falls back to fp32 when NaNs appear")


def resolve_device(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        raise SystemExit(2)
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        print("error: --device mps requested but MPS is not available", file=sys.stderr)
        raise SystemExit(2)
    return torch.device(name)


def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, DTYPES[name])


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code

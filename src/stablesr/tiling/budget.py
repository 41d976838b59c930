"""Memory budgets: parse `--max-memory`, read what the machine has free, estimate what a tile costs
from a model's config, and pick the largest tile that fits, or refuse before anything big is allocated.

A budget covers the whole run: what is resident already (weights, runtime), the image-sized buffers
(input, output canvas) and one tile's activations. Activation costs are per pixel of the tile, taken
from the widest feature map per pixel a network holds (channels / area at each resolution level),
times a measured count of live maps (`*_LIVE_MAPS`, calibrated on CPU float32; see each constant).

Top-level imports are the standard library only: `stablesr.configs` checks the `--max-memory` text
here without importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stablesr.errors import StableSRError

AUTO = "auto"
AUTO_FRACTION = 0.8  # of the memory free when a run starts (the rest: other programs, allocator slack)
FALLBACK_AVAILABLE = 4 * 2**30  # when neither psutil nor /proc/meminfo can tell
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")

# Live feature maps of the widest per-pixel stage (conv input + output, GroupNorm/SiLU temporaries,
# the residual; the CFW encoder features kept during a decode). Measured peak RSS growth of one
# untiled call, random SD 2.1 VAE, CPU float32: decode with CFW 4402 B/px at 512 px, 5262 at 256
# (4.3-5.1 x 256 ch x 4 B); encode 2601-2712 B/px (5.1-5.3 x 128 ch x 4 B); RRDBNet x4plus 14575 B
# per LR px at 128, 18541 at 64 (3.6-4.5 x 16 x 64 ch x 4 B). Rounded up for allocator slack.
DECODER_LIVE_MAPS = 5.5
ENCODER_LIVE_MAPS = 6.0
RRDB_LIVE_MAPS = 4.5


class MemoryBudgetError(StableSRError):
    """A run cannot fit the memory budget even with the smallest tiles; raised before the big allocations."""


def parse_memory(text: str) -> int | None:
    """'6GB' -> 6_000_000_000, '512MiB' -> 536_870_912, '1.5g' -> 1_500_000_000, 'auto' -> None.

    Decimal units (KB, MB, GB, TB; K/M/G/T) and binary ones (KiB, MiB, GiB, TiB), any case; a bare
    number is bytes. ValueError for anything else or a size of zero.
    """
    if text.strip().lower() == AUTO:
        return None
    match = _SIZE.match(text.lower())
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"{text!r} is not a memory size")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"{text!r} is not a positive memory size")
    return size


def is_memory_size(text: str) -> bool:
    """True for 'auto' and anything `parse_memory` reads (the settings check)."""
    try:
        parse_memory(text)
    except ValueError:
        return False
    return True


def format_bytes(size: float) -> str:
    """1.5e9 -> '1.50 GB', 3e8 -> '300 MB' (decimal units, as --max-memory takes them)."""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


# --------------------------------------------------------------------------------------------- the machine
def available_memory(device) -> int:
    """Bytes free now: CUDA free memory on a GPU; else psutil's available RAM, /proc/meminfo's
    MemAvailable, or FALLBACK_AVAILABLE."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_AVAILABLE


def resident_memory(device) -> int:
    """Bytes this process holds now: CUDA memory allocated on a GPU, else the resident set (0 unknown)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.memory_allocated(device)
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return 0


@dataclass(frozen=True)
class Budget:
    """`working` bytes this run may still allocate; `total` the budget (None: automatic); `in_use` at the start."""

    working: int
    total: int | None
    in_use: int

    @classmethod
    def resolve(cls, max_memory: str, device) -> Budget:
        """'auto': AUTO_FRACTION of the memory free now; a size: that size minus what is resident now."""
        total = parse_memory(max_memory)
        in_use = resident_memory(device)
        if total is None:
            return cls(working=int(available_memory(device) * AUTO_FRACTION), total=None, in_use=in_use)
        return cls(working=max(total - in_use, 0), total=total, in_use=in_use)

    def describe(self) -> str:
        if self.total is None:
            return f"the automatic budget of {format_bytes(self.working)} ({AUTO_FRACTION:.0%} of the free memory)"
        return (f"the budget of {format_bytes(self.total)} (--max-memory; {format_bytes(self.in_use)} already in "
                "use by the loaded model)")


# --------------------------------------------------------------------------------------------- per-pixel costs
def _dtype_bytes(dtype) -> int:
    return dtype.itemsize


def decoder_bytes_per_pixel(block_out_channels: Sequence[int], dtype) -> float:
    """Activation bytes per OUTPUT pixel of an AutoencoderKL decoder tile.

    Output level k (area 1/4^k) holds the channels of the up block there and of the upsampler coming
    from the level below: max(c_k, c_k+1). SD (128, 256, 512, 512): max(256, 512/4, 512/16, 512/64) = 256.
    """
    channels = list(block_out_channels)
    widths = [max(channels[k], channels[min(k + 1, len(channels) - 1)]) / 4**k for k in range(len(channels))]
    return DECODER_LIVE_MAPS * max(widths) * _dtype_bytes(dtype)


def encoder_bytes_per_pixel(block_out_channels: Sequence[int], dtype) -> float:
    """Activation bytes per INPUT pixel of an AutoencoderKL encoder tile: max_k c_k / 4^k (SD: 128)."""
    return ENCODER_LIVE_MAPS * max(c / 4**k for k, c in enumerate(block_out_channels)) * _dtype_bytes(dtype)


def rrdb_bytes_per_pixel(num_features: int, growth_channels: int, scale: int, dtype) -> float:
    """Activation bytes per LR pixel of an RRDBNet tile: the widest of the dense concatenation at LR
    resolution (F + 4G) and the F-channel maps at the output resolution (scale^2 x F); x4plus: 16 x 64."""
    return RRDB_LIVE_MAPS * max(num_features + 4 * growth_channels, scale * scale * num_features) * _dtype_bytes(dtype)


# --------------------------------------------------------------------------------------------- choosing
def choose_tile(
    budget: Budget,
    *,
    cost: Callable[[int], float],
    candidates: Sequence[int],
    what: str,
    smallest_cost_note: str = "",
) -> int:
    """The first (largest) tile in `candidates` (descending) whose cost(tile) in bytes fits budget.working.

    MemoryBudgetError naming `what` when even the last one does not fit.
    """
    for tile in candidates:
        if cost(tile) <= budget.working:
            return tile
    smallest = candidates[-1]
    raise MemoryBudgetError(
        f"{what} needs {format_bytes(cost(smallest))} even with the smallest tile ({smallest} px){smallest_cost_note}, "
        f"over {budget.describe()}; free memory, raise --max-memory or use a smaller --scale")


def tile_candidates(largest: int, smallest: int, multiple: int) -> list[int]:
    """Multiples of `multiple` from `largest` (rounded down) to `smallest`, descending: (72, 64, 8) -> [72, 64]."""
    top = largest // multiple * multiple
    return list(range(top, smallest - 1, -multiple)) or [smallest]


def band_bytes(band_rows: int, width: int, channels: int, dtype_bytes: int = 4) -> int:
    """A streaming canvas band: (channels + 1 weight) float rows of `width`, `band_rows` high."""
    return band_rows * width * (channels + 1) * dtype_bytes


def square_tile_cost(per_pixel: float, fixed: float, band: Callable[[int], float] | None = None):
    """cost(tile) = fixed + per_pixel * tile^2 (+ band(tile))."""
    return lambda tile: fixed + per_pixel * tile * tile + (band(tile) if band is not None else 0)

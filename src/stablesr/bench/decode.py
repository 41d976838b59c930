"""`stablesr bench decode`: time and peak memory of the final VAE decode (CFW, w = 0.5) streamed into a
uint8 picture, at several output sizes and memory budgets, against the untiled decode where it fits.

Each case runs in a child process (a clean resident-set peak, sampled every 5 ms), on random weights
of the full SD 2.1 VAE ('sd21') or the bundled stablesr-nano VAE ('nano'). The VAE tile is what the
pipeline picks for the budget (`decode_tile_for_budget`); '12GB' simulates a 12 GB GPU on the CPU.
Peaks are the child's whole process (Python, torch, weights included). Never asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

VAES = ("sd21", "nano")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", default="nano,sd21", help="comma list of sd21 (random weights), nano")
    parser.add_argument("--sizes", default="512,1024,4096", help="output sides in pixels (square)")
    parser.add_argument("--budgets", default="auto,12GB,2GB", help="comma list of --max-memory values")
    parser.add_argument("--skip", default="", help="comma list of vae:size cases not to run (e.g. sd21:4096)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON on stdout


def load_vae(name: str):
    import torch

    from stablesr.models.cfw_autoencoder import CFWAutoencoderKL

    if name == "nano":
        from stablesr.weights.bundled import resolve_model

        return CFWAutoencoderKL.from_pretrained(resolve_model("stablesr-nano") / "vae").to(torch.float32).eval()
    from stablesr.weights.loading import shipped_config

    torch.manual_seed(0)
    return CFWAutoencoderKL(**shipped_config("sd21-base", "vae")).eval()


def decode_tile_for_budget(vae, side: int, max_memory: str) -> int:
    """The VAE tile (px) the pipeline picks for a side x side output under `max_memory` (0: untiled)."""
    from stablesr.configs import DEFAULT_VAE_TILE_SIZE
    from stablesr.tiling.budget import Budget, band_bytes, choose_tile, decoder_bytes_per_pixel, tile_candidates

    per_pixel = decoder_bytes_per_pixel(vae.config.block_out_channels, vae.dtype)
    budget = Budget.resolve(max_memory, vae.device)
    cost = lambda tile: per_pixel * min(tile, side) ** 2 + band_bytes(min(tile, side), side, 3)  # noqa: E731
    return choose_tile(budget, cost=cost, candidates=tile_candidates(DEFAULT_VAE_TILE_SIZE, 64, 64),
                       what=f"decode {side}x{side}")


def run_case(vae_name: str, side: int, budget: str) -> dict:
    """One decode in this process: {'tile', 'seconds', 'peak_mb'}; budget 'untiled' decodes whole."""
    import numpy as np
    import torch

    from stablesr.bench.memory import PeakMemory
    from stablesr.tiling.canvas import quantized_sink
    from stablesr.tiling.vae import decode_tiled, vae_scale

    vae = load_vae(vae_name)
    scale = vae_scale(vae)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, side // scale, side // scale, generator=generator)
    cond = torch.rand(1, 3, side, side, generator=generator) * 2 - 1
    tile = side if budget == "untiled" else decode_tile_for_budget(vae, side, budget)
    latent_tile = max(tile // scale, 8)
    picture = np.empty((side, side, 3), dtype=np.uint8)
    with torch.no_grad(), PeakMemory(torch.device("cpu")) as memory:
        start = time.perf_counter()
        decode_tiled(vae, z, tile_size=latent_tile, tile_overlap=max(latent_tile // 4, 2), cond_image=cond,
                     fidelity=0.5, sink=quantized_sink(picture, model_range=True))
        seconds = time.perf_counter() - start
    return {"tile": tile, "seconds": seconds, "peak_mb": memory.peak_mb}


def run(args: argparse.Namespace) -> int:
    if args.case:
        vae_name, side, budget = args.case.split(":")
        print(json.dumps(run_case(vae_name, int(side), budget)))
        return 0
    import torch

    skip = set(filter(None, args.skip.split(",")))
    print(f"VAE decode (CFW w=0.5) into a uint8 picture, CPU float32, {torch.get_num_threads()} threads; "
          "peak = the child process's resident set")
    for vae_name in args.vae.split(","):
        for side in (int(s) for s in args.sizes.split(",")):
            if f"{vae_name}:{side}" in skip:
                print(f"  {vae_name} {side}: skipped")
                continue
            baseline = measure(vae_name, side, "untiled") if fits_untiled(vae_name, side) else None
            print_row(vae_name, side, "untiled", baseline, baseline)
            for budget in args.budgets.split(","):
                print_row(vae_name, side, budget, measure(vae_name, side, budget), baseline)
    return 0


def fits_untiled(vae_name: str, side: int) -> bool:
    """Whether the whole decode's estimated activations fit the automatic budget."""
    import torch

    from stablesr.tiling.budget import Budget, decoder_bytes_per_pixel

    channels = (128, 256, 512, 512) if vae_name == "sd21" else (32, 64, 128)
    per_pixel = decoder_bytes_per_pixel(channels, torch.float32)
    return per_pixel * side * side <= Budget.resolve("auto", torch.device("cpu")).working


def measure(vae_name: str, side: int, budget: str) -> dict | None:
    command = [sys.executable, "-m", "stablesr", "bench", "decode", "--case", f"{vae_name}:{side}:{budget}"]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        return {"error": (child.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_row(vae_name: str, side: int, budget: str, result: dict | None, baseline: dict | None) -> None:
    label = f"  {vae_name:4s} {side:5d} px  {budget:>8s}"
    if result is None:
        print(f"{label}  (does not fit the automatic budget: not run)")
        return
    if "error" in result:
        print(f"{label}  failed: {result['error']}")
        return
    ratios = ""
    if baseline and "error" not in baseline and baseline is not result:
        time_ratio, peak_ratio = result["seconds"] / baseline["seconds"], result["peak_mb"] / baseline["peak_mb"]
        ratios = f"  time x{time_ratio:.2f}, peak x{peak_ratio:.2f}"
    print(f"{label}  tile {result['tile']:5d}  {result['seconds']:8.1f} s  peak {result['peak_mb']:7.0f} MB{ratios}",
          flush=True)

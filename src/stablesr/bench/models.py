"""`stablesr bench models`: per-step time and peak memory of encoder + UNet + SFT, and VAE encode/decode.

Random weights at a chosen size ('sd21' = the full SD 2.1 / StableSR 512 configuration, 'tiny' =
the parity-fixture size), so no download is needed. Figures are also given as ratios against
baselines measured in the same run: the bare UNet step (SFT overhead) and fp32 (low precision).
"""

from __future__ import annotations

import argparse
import time

SIZES = ("sd21", "tiny")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=SIZES, default="sd21", help="model size (random weights)")
    parser.add_argument("--image-size", type=int, default=512, help="output image side in pixels (square)")
    parser.add_argument("--steps", type=int, default=3, help="timed denoiser steps (after one warm-up)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, fp16, bf16")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--seed", type=int, default=0)


def build_random_models(size: str):
    """(unet, sr_module, vae) with random weights; 'sd21' uses the shipped SD 2.1-base configs."""
    from diffusers import UNet2DConditionModel

    from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
    from stablesr.models.sft_unet import StableSRModule
    from stablesr.weights.loading import shipped_config

    if size == "sd21":
        unet = UNet2DConditionModel(**shipped_config("sd21-base", "unet"))
        return unet, StableSRModule.from_unet(unet), CFWAutoencoderKL(**shipped_config("sd21-base", "vae"))
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=64,
                                attention_head_dim=(4, 8, 16, 16), use_linear_projection=True, sample_size=32,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    sr_module = StableSRModule.from_unet(unet, cond_channels=64, model_channels=64, out_channels=64)
    vae = CFWAutoencoderKL(block_out_channels=(32, 64, 128, 128), latent_channels=4, norm_num_groups=32,
                           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                           layers_per_block=2)
    return unet, sr_module, vae


def timed(fn, device, repeats: int) -> tuple[float, float]:
    """(mean seconds per call, peak MB) over `repeats` calls after one warm-up call."""
    from stablesr.bench.memory import PeakMemory, synchronize

    fn()
    with PeakMemory(device) as memory:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        synchronize(device)
        elapsed = (time.perf_counter() - start) / repeats
    return elapsed, memory.peak_mb


def bench_dtype(models, dtype, device, image_size: int, steps: int, seed: int) -> dict:
    import torch

    with torch.no_grad():
        return _bench_dtype(models, dtype, device, image_size, steps, seed)


def _bench_dtype(models, dtype, device, image_size: int, steps: int, seed: int) -> dict:
    import torch

    from stablesr.models.sft_unet import SFTUNet

    unet, sr_module, vae = (m.to(device=device, dtype=dtype).eval() for m in models)
    generator = torch.Generator().manual_seed(seed)
    latent = image_size // 8
    x_t = torch.randn(1, 4, latent, latent, generator=generator).to(device, dtype)
    lr_latent = torch.randn(1, 4, latent, latent, generator=generator).to(device, dtype)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    image = (torch.rand(1, 3, image_size, image_size, generator=generator) * 2 - 1).to(device, dtype)
    t = torch.tensor([999], device=device)
    results = {}
    results["unet"] = timed(lambda: unet(x_t, t, context).sample, device, steps)
    sft_unet = SFTUNet(unet, sr_module)
    results["unet+sft+encoder"] = timed(lambda: sft_unet(x_t, t, context, lr_latent), device, steps)
    sft_unet.remove_hooks()
    results["vae encode"] = timed(lambda: vae.encode_with_features(image), device, 1)
    feats = vae.encode_with_features(image)[1]
    results["vae decode (CFW w=0.5)"] = timed(lambda: vae.decode_with_features(lr_latent, feats, fidelity=0.5),
                                              device, 1)
    return results


def run(args: argparse.Namespace) -> int:
    import torch

    from stablesr.cli.common import resolve_device

    device = resolve_device(args.device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    models = build_random_models(args.size)
    params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in models]
    print(f"models ({args.size}, random weights, built in {time.perf_counter() - start:.1f} s): "
          f"UNet {params[0]:.1f} M, SR module (encoder + SFT) {params[1]:.1f} M, CFW VAE {params[2]:.1f} M parameters")
    print(f"device {device}, threads {torch.get_num_threads()}, image {args.image_size}x{args.image_size} "
          f"(latent {args.image_size // 8}x{args.image_size // 8}, one tile), {args.steps} timed steps")
    baseline, first = None, args.dtypes.split(",")[0].strip()
    for name in args.dtypes.split(","):
        results = bench_dtype(models, dtypes[name.strip()], device, args.image_size, args.steps, args.seed)
        baseline = baseline or results
        unet_s = results["unet"][0]
        for phase, (seconds, peak) in results.items():
            ratios = f"x{seconds / baseline[phase][0]:.2f} vs {first}" if baseline is not results else ""
            overhead = f"  x{seconds / unet_s:.2f} vs bare UNet" if phase == "unet+sft+encoder" else ""
            print(f"  {name:5s} {phase:24s} {seconds * 1000:9.1f} ms  peak {peak:8.0f} MB  {ratios}{overhead}")
    return 0

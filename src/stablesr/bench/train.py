"""`stablesr bench train`: optimizer steps per second and peak memory of StableSR stage-1 training.

Random weights ('sd21' = the SD 2.1-base UNet + VAE and the official 105.5 M-parameter SR module;
'tiny' = the small test-size model), random images, one process. A step is one micro-batch:
two VAE posterior samples, the SFT-UNet forward, backward into the SR module, and AdamW.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SIZES = ("sd21", "tiny")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=SIZES, default="sd21", help="model size (random weights)")
    parser.add_argument("--crop-size", type=int, default=512, help="training crop in pixels")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    parser.add_argument("--precisions", default="no,bf16", help="comma list of accelerate mixed precisions")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def random_pipeline(size: str):
    import torch

    from stablesr.bench.models import build_random_models
    from stablesr.models.text_encoder import PromptEmbeddings
    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.weights.loading import make_scheduler

    unet, sr_module, vae = build_random_models(size)
    embeds = PromptEmbeddings.from_tensors({"null": torch.randn(1, 77, unet.config.cross_attention_dim)}, {"null": ""})
    return StableSRPipeline(unet=unet, sr_module=sr_module, vae=vae, scheduler=make_scheduler("epsilon"),
                            prompt_embeds=embeds, cfw_trained=False)


def bench_precision(args: argparse.Namespace, precision: str, device: torch.device) -> tuple[float, float]:
    """(steps per second, peak MB) for one mixed-precision setting."""
    import torch

    from stablesr.bench.memory import PeakMemory, synchronize
    from stablesr.training.config import StableSRTrainConfig, config_from_dict
    from stablesr.training.stablesr_trainer import StableSRTrainer
    from stablesr.training.stream import step_generator

    config = config_from_dict(StableSRTrainConfig, {
        "data": {"batch_size": args.batch_size},
        "run": {"max_steps": 1, "gradient_accumulation_steps": 1, "mixed_precision": precision,
                "gradient_checkpointing": args.gradient_checkpointing, "cpu": device.type == "cpu"}})
    trainer = StableSRTrainer(config, pipeline=random_pipeline(args.size), dataset=[{}])  # batches come from below
    size = args.crop_size
    batch = {"gt": torch.rand(args.batch_size, 3, size, size), "lr_up": torch.rand(args.batch_size, 3, size, size)}
    run_step = lambda k: trainer.train_micro_step(batch, step_generator(device, 0, k))  # noqa: E731
    run_step(0)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for k in range(args.steps):
            run_step(k + 1)
        synchronize(device)
        elapsed = time.perf_counter() - start
    trainer.close()
    return args.steps / elapsed, memory.peak_mb


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate.state import AcceleratorState

    from stablesr.cli.common import resolve_device

    device = resolve_device(args.device)
    print(f"stage-1 training, {args.size} random weights, crop {args.crop_size}, batch {args.batch_size}, "
          f"device {device}, threads {torch.get_num_threads()}, checkpointing {args.gradient_checkpointing}")
    for precision in args.precisions.split(","):
        AcceleratorState._reset_state(True)  # a new mixed-precision setting needs a fresh accelerate state
        steps_per_s, peak_mb = bench_precision(args, precision.strip(), device)
        print(f"  mixed_precision={precision:4s} {steps_per_s:8.4f} steps/s ({1 / steps_per_s:7.2f} s/step)  "
              f"peak {peak_mb:8.0f} MB")
    return 0

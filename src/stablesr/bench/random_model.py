"""`stablesr bench random-model -o DIR`: a StableSR model folder with random weights, for measuring.

The speed and memory of a whole `stablesr upscale` run depend on the size of the networks, not on
their values, so a folder of random full-size weights (`--size sd21`: the SD 2.1-base UNet, the SR
module built from it, the CFW VAE; 4.2 GB of fp32 safetensors) reproduces a full-size run without
the official checkpoints and without a download. The images it writes are noise. For example:

    stablesr bench random-model -o rand-sd21
    /usr/bin/time -v stablesr upscale lr1024.png -o out/ --model rand-sd21 --steps 1 --max-memory 8GB

The folder is written next to DIR first and renamed into place, and an existing DIR is refused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from stablesr.bench.models import SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder to write (must not exist)")
    parser.add_argument("--size", choices=SIZES, default="sd21",
                        help="sd21: the full SD 2.1-base StableSR networks; tiny: the test-size ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def build_random_pipeline(size: str = "sd21", seed: int = 0):
    """A StableSRPipeline (fp32, CPU) with random weights of `size`; the same seed gives the same weights."""
    import torch

    from stablesr.bench.models import build_random_models
    from stablesr.models.text_encoder import PromptEmbeddings
    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.weights.loading import make_scheduler

    torch.manual_seed(seed)
    unet, sr_module, vae = build_random_models(size)
    null = torch.randn(1, 77, unet.config.cross_attention_dim) * 0.1
    prompt_embeds = PromptEmbeddings.from_tensors({"null": null}, {"null": ""})
    return StableSRPipeline(unet=unet, sr_module=sr_module, vae=vae, scheduler=make_scheduler("epsilon"),
                            prompt_embeds=prompt_embeds)


def write_random_model(output: Path, size: str = "sd21", seed: int = 0) -> Path:
    """Write the folder of `build_random_pipeline(size, seed)` to `output` (refused when it exists)."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; give a new folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        build_random_pipeline(size, seed).save_pretrained(staging)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def run(args: argparse.Namespace) -> int:
    try:
        folder = write_random_model(args.output, args.size, args.seed)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    print(f"wrote {folder} ({args.size}, seed {args.seed}, {total / 1e9:.2f} GB): random weights, noise images; "
          f"for timing and memory runs, e.g. stablesr upscale IMAGE -o out/ --model {folder}")
    return 0

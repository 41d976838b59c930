"""Shared test helpers: locating ../shared fixtures (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One intra-op thread: tiny models gain nothing from more, and oversubscribed cores (parallel
# jobs, DataLoader workers) slow OpenMP spin-waits down by 10x or more. Override with
# STABLESR_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("STABLESR_TEST_THREADS", "1")))

# Float tolerances that hold on any x86-64 CPU (SSE / AVX2 / AVX-512 kernels sum in different
# orders, FMA or not) and any thread count. A float32 network compared with another implementation,
# a stored reference, or a differently batched / tiled run of itself: relative 1e-4 (~840 ulps; a
# wrong formula, layer or weight moves results by 1e-2 or more). Same computation, same process:
# compare exactly (torch.equal). float64 maths: 1e-9 relative or tighter, as each test states.
FLOAT32_REL = 1e-4

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("STABLESR_SHARED", REPO_ROOT.parent / "shared"))
PARITY_DIR = SHARED_DIR / "fixtures" / "parity"


def require_parity_file(name: str) -> Path:
    """Path of a parity fixture file, or skip the test with a clear reason."""
    path = PARITY_DIR / name
    if not path.is_file():
        pytest.skip(f"parity fixture {path} is absent (set STABLESR_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def parity_cases() -> dict:
    """All tensors of fixtures/parity/cases.safetensors, keyed by case name."""
    from safetensors.torch import load_file

    return load_file(require_parity_file("cases.safetensors"))


@pytest.fixture(scope="session")
def parity_meta() -> dict:
    import json

    return json.loads(require_parity_file("cases.json").read_text())


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    import json

    return json.loads(require_parity_file("tiny_config.json").read_text())


@pytest.fixture(scope="session")
def stablesr_tiny_state() -> dict:
    """Official-layout tiny StableSR weights (fp16 on disk), upcast to float32 as the reference ran."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(require_parity_file("stablesr_tiny.safetensors")).items()}


@pytest.fixture(scope="session")
def cfw_tiny_state() -> dict:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(require_parity_file("cfw_tiny.safetensors")).items()}


def assert_close_scaled(actual, expected, rel: float, name: str = "") -> float:
    """Assert max|actual - expected| <= rel * max(1, max|expected|); returns the measured ratio."""
    import torch

    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"{name}: max|diff| {err:.3e} > {rel:.0e} * {scale:.3g}"
    return err / scale


def make_tiny_pipeline(seed: int = 0, *, cfw_trained: bool = True, prediction_type: str = "epsilon"):
    """A StableSRPipeline of real components at a tiny size with seeded random weights (no files needed).

    UNet widths 32/64/64/64 (22 resnets like SD 2.x), encoder 32 channels, VAE 32/32/64/64 with CFW
    fusion blocks, cross-attention width 32, and random cached '' / negative prompt embeddings.
    """
    import torch
    from diffusers import UNet2DConditionModel

    from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
    from stablesr.models.sft_unet import StableSRModule
    from stablesr.models.text_encoder import OFFICIAL_NEGATIVE_PROMPT, PromptEmbeddings
    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.weights.loading import make_scheduler

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32,
                                attention_head_dim=(2, 4, 4, 4), use_linear_projection=True, sample_size=16,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    sr_module = StableSRModule.from_unet(unet, cond_channels=32, model_channels=32, num_heads=4)
    vae = CFWAutoencoderKL(block_out_channels=(32, 32, 64, 64), latent_channels=4, layers_per_block=1,
                           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                           sample_size=128)
    with torch.no_grad():  # non-trivial fusion so fidelity matters
        for p in list(vae.fusion_layer_1.parameters()) + list(vae.fusion_layer_2.parameters()):
            p.add_(0.02 * torch.randn_like(p))
    prompts = PromptEmbeddings.from_tensors({"null": torch.randn(1, 77, 32), "negative": torch.randn(1, 77, 32)},
                                            {"null": "", "negative": OFFICIAL_NEGATIVE_PROMPT})
    pipe = StableSRPipeline(unet=unet.eval(), sr_module=sr_module.eval(), vae=vae.eval(),
                            scheduler=make_scheduler(prediction_type), prompt_embeds=prompts, cfw_trained=cfw_trained)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline():
    return make_tiny_pipeline(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipeline):
    """The tiny pipeline saved as a model folder (configs + safetensors), as `stablesr convert` writes."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_hr_images(folder, count: int = 4, size: int = 72, seed: int = 0):
    """Smooth random colour images (bilinear-upsampled noise), so degradations have something to remove."""
    import numpy as np
    import PIL.Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        image = PIL.Image.fromarray(small).resize((size, size), PIL.Image.BILINEAR)
        image.save(folder / f"hr{index}.png")
    return folder


@pytest.fixture(scope="session")
def hr_folder(tmp_path_factory):
    return write_hr_images(tmp_path_factory.mktemp("hr"))


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of `stablesr ARGV` run in-process, asserting that no exception
    escaped and no traceback was printed (the robustness suite's runner)."""
    import sys

    from stablesr.cli.main import main

    def run(*argv) -> tuple[int, str, str]:
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit_:  # argparse usage errors and explicit SystemExit("error: ...")
            code = exit_.code if isinstance(exit_.code, int) else 1
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "Traceback" not in out, err
        return code, out, err

    return run

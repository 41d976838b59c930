"""A tiny seeded DeeDSR pipeline (UNet, adapter, degradation learner, VAE) for the DeeDSR tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

TINY_LEARNER = dict(block="basic", layers=(1, 1), widths=(8, 16), stem_channels=8)
TINY_ADAPTER = dict(cond_channels=32, hidden_channels=16, model_channels=32, channel_mult=(1, 2), num_heads=2)


def _tiny_models():
    spec = importlib.util.spec_from_file_location("tiny_models", Path(__file__).with_name("tiny_models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_deedsr_pipeline(seed: int = 0, *, prediction_type: str = "epsilon"):
    """A random tiny DeeDSRPipeline on the tiny StableSR pipeline's UNet and VAE (learner 16-d vector)."""
    from stablesr.models.deedsr_adapter import DeeDSRModule
    from stablesr.models.degradation_learner import DegradationLearner
    from stablesr.pipelines.deedsr import DeeDSRPipeline

    base = _tiny_models().make_tiny_pipeline(seed, prediction_type=prediction_type)
    torch.manual_seed(seed)
    learner = DegradationLearner(**TINY_LEARNER).eval()
    adapter = DeeDSRModule.from_unet(base.unet, vector_dim=learner.vector_dim, **TINY_ADAPTER)
    return DeeDSRPipeline(unet=base.unet, adapter=adapter, degradation_learner=learner, vae=base.vae,
                          scheduler=base.scheduler)

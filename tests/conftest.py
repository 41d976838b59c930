"""Shared test helpers: locating ../shared fixtures (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

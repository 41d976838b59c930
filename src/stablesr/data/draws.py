"""Scalar random draws from a `torch.Generator`, shared by every degradation sampler.

All degradation randomness goes through these helpers so one generator seed fixes every record.
Values come back as Python floats/ints/objects so they can be written to JSON unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def draw_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float from U[low, high) (float64 draw)."""
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def draw_bernoulli(generator: torch.Generator, prob: float) -> bool:
    """True with probability `prob`."""
    return draw_uniform(generator, 0.0, 1.0) < prob


def draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """One integer uniform in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def draw_choice(generator: torch.Generator, options: Sequence[T], probs: Sequence[float] | None = None) -> T:
    """One element of `options`, uniform or with the given (not necessarily normalised) weights."""
    weights = list(probs) if probs is not None else [1.0] * len(options)
    threshold = draw_uniform(generator, 0.0, sum(weights))
    cumulative = 0.0
    for option, weight in zip(options, weights):
        cumulative += weight
        if threshold < cumulative:
            return option
    return options[-1]  # threshold == sum(weights) up to rounding


def draw_seed(generator: torch.Generator) -> int:
    """A fresh 62-bit seed for a sub-generator (e.g. the noise of one image), stored in its record."""
    return int(torch.randint(0, 2**62, (), generator=generator).item())

"""Memory budgets: size parsing, per-pixel activation costs from model configs, and the tile choice."""

from __future__ import annotations

import pytest
import torch

from stablesr.tiling import budget as budget_module
from stablesr.tiling.budget import (
    Budget,
    MemoryBudgetError,
    choose_tile,
    decoder_bytes_per_pixel,
    encoder_bytes_per_pixel,
    is_memory_size,
    parse_memory,
    rrdb_bytes_per_pixel,
    tile_candidates,
)


def test_sizes_parse_in_decimal_and_binary_units():
    assert parse_memory("6GB") == 6_000_000_000
    assert parse_memory("6gb") == parse_memory("6 G") == 6_000_000_000
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("1.5GiB") == 3 * 2**29
    assert parse_memory("1500MB") == 1_500_000_000
    assert parse_memory("4096") == 4096
    assert parse_memory("auto") is None and parse_memory(" AUTO ") is None
    for bad in ("", "6 gigs", "-1GB", "0", "GB", "1e9", "6GB6"):
        assert not is_memory_size(bad), bad
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_activation_costs_follow_the_config():
    sd_channels, nano_channels = (128, 256, 512, 512), (32, 64, 128)
    # widest per output pixel: the full-resolution upsampler input, 256 channels (SD) / 64 (nano)
    assert decoder_bytes_per_pixel(sd_channels, torch.float32) == budget_module.DECODER_LIVE_MAPS * 256 * 4
    assert decoder_bytes_per_pixel(nano_channels, torch.float32) == budget_module.DECODER_LIVE_MAPS * 64 * 4
    half = decoder_bytes_per_pixel(sd_channels, torch.float16)
    assert half * 2 == decoder_bytes_per_pixel(sd_channels, torch.float32)
    assert decoder_bytes_per_pixel((8, 1024), torch.float32) == budget_module.DECODER_LIVE_MAPS * 1024 * 4
    assert encoder_bytes_per_pixel(sd_channels, torch.float32) == budget_module.ENCODER_LIVE_MAPS * 128 * 4
    assert encoder_bytes_per_pixel((8, 64), torch.float32) == budget_module.ENCODER_LIVE_MAPS * 16 * 4  # 64 / 4
    # x4plus: 16 output pixels x 64 features per LR pixel beat the dense concatenation (64 + 4 x 32)
    assert rrdb_bytes_per_pixel(64, 32, 4, torch.float32) == budget_module.RRDB_LIVE_MAPS * 1024 * 4
    assert rrdb_bytes_per_pixel(64, 32, 1, torch.float32) == budget_module.RRDB_LIVE_MAPS * 192 * 4


def test_the_largest_fitting_tile_is_chosen_and_too_small_a_budget_is_refused():
    assert tile_candidates(1024, 64, 64)[:3] == [1024, 960, 896] and tile_candidates(1024, 64, 64)[-1] == 64
    assert tile_candidates(72, 64, 8) == [72, 64] and tile_candidates(40, 64, 8) == [64]
    budget = Budget(working=1000 + 10 * 300 * 300, total=None, in_use=0)
    cost = lambda tile: 1000 + 10 * tile * tile  # noqa: E731
    assert choose_tile(budget, cost=cost, candidates=[512, 320, 300, 64], what="x") == 300
    with pytest.raises(MemoryBudgetError, match=r"^x needs 41 MB even with the smallest tile \(64 px\), over the "
                                                r"automatic budget of 1 MB"):
        choose_tile(Budget(working=900_000, total=None, in_use=0), cost=lambda t: 41e6, candidates=[128, 64],
                    what="x")


def test_budgets_resolve_from_the_machine_or_the_flag(monkeypatch):
    monkeypatch.setattr(budget_module, "available_memory", lambda device: 10_000)
    monkeypatch.setattr(budget_module, "resident_memory", lambda device: 3_000)
    auto = Budget.resolve("auto", torch.device("cpu"))
    assert (auto.working, auto.total, auto.in_use) == (8_000, None, 3_000)  # 80% of the free memory
    given = Budget.resolve("12KB", torch.device("cpu"))
    assert (given.working, given.total) == (9_000, 12_000)  # the budget minus what is resident already
    assert Budget.resolve("2KB", torch.device("cpu")).working == 0
    assert "--max-memory" in given.describe() and "already in use" in given.describe()


def test_available_memory_on_this_machine_is_positive():
    assert budget_module.available_memory(torch.device("cpu")) > 0

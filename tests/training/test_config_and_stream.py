"""Training configs (YAML + dotted overrides, strict keys and choices) and the resumable sharded data stream."""

from __future__ import annotations

import itertools

import pytest

from stablesr.training.config import (
    CFWTrainConfig,
    StableSRTrainConfig,
    load_config,
    load_config_json,
    save_config_json,
)
from stablesr.training.stream import StreamSampler


def test_yaml_then_overrides_fill_the_dataclasses(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: {hr_folders: [a, b], batch_size: 3}\nrun: {max_steps: 10}\n")
    config = load_config("stablesr", path, {"run.max_steps": "20", "optimizer.betas": "[0.5, 0.9]"})
    assert isinstance(config, StableSRTrainConfig)
    assert config.data.hr_folders == ("a", "b") and config.data.batch_size == 3
    assert config.run.max_steps == 20 and config.optimizer.betas == (0.5, 0.9)
    assert config.optimizer.learning_rate == 5e-5 and config.run.gradient_accumulation_steps == 4  # official


def test_cfw_defaults_follow_the_official_run():
    config = load_config("cfw", None)
    assert isinstance(config, CFWTrainConfig)
    assert config.optimizer.betas == (0.5, 0.9) and config.optimizer.learning_rate == 5e-5
    assert (config.loss.disc_weight, config.loss.disc_start) == (0.025, 501)
    assert config.run.gradient_accumulation_steps == 8 and config.data.batch_size == 1


def test_unknown_keys_and_bad_choices_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        load_config("stablesr", None, {"run.max_step": "3"})
    with pytest.raises(ValueError, match="degrade_on must be one of"):
        load_config("stablesr", None, {"data.degrade_on": "gpu"})


def test_config_json_round_trip(tmp_path):
    config = load_config("stablesr", None, {"data.hr_folders": "[x]", "run.ema_decay": "0.999"})
    save_config_json(config, tmp_path / "c.json")
    assert load_config_json(tmp_path / "c.json") == config


def test_stream_shards_and_resumes_the_single_process_order():
    single = [pair for pair in itertools.islice(StreamSampler(5, seed=3), 12)]
    assert sorted(index for _, index in single[:5]) == list(range(5))  # each epoch is a permutation
    assert [epoch for epoch, _ in single] == [0] * 5 + [1] * 5 + [2] * 2
    ranks = [list(itertools.islice(StreamSampler(5, seed=3, rank=r, world=2), 6)) for r in range(2)]
    assert [pair for both in zip(*ranks) for pair in both] == single  # interleaved shards = one stream
    resumed = list(itertools.islice(StreamSampler(5, seed=3, rank=1, world=2, start=2), 4))
    assert resumed == ranks[1][2:6]

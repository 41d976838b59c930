"""Safe checkpoint reading: Lightning-like pickles with foreign classes, safetensors, bad files."""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch

from stablesr.errors import StableSRError, WeightsNotFoundError
from stablesr.weights.io import CheckpointReadError, InertObject, load_state_dict, save_state_dict

SENTINEL_EVENTS: list[str] = []


def _record(event: str) -> str:
    """What a malicious payload would do: here it only leaves a trace we can look for."""
    SENTINEL_EVENTS.append(event)
    return event


class ReducePayload:
    """Pickles as a call of `_record`, the shape of an `os.system` exploit."""

    def __reduce__(self):
        return (_record, ("reduce payload ran",))


class SetstatePayload:
    """Runs code when its state is restored."""

    def __init__(self):
        self.secret = 1

    def __setstate__(self, state):
        _record("setstate payload ran")
        self.__dict__.update(state)


def _state() -> collections.OrderedDict:
    generator = torch.Generator().manual_seed(0)
    return collections.OrderedDict(
        [
            ("model.diffusion_model.input_blocks.1.0.spade.mlp_gamma.weight",
             torch.randn(4, 3, 3, 3, generator=generator)),
            ("structcond_stage_model.time_embed.0.bias", torch.randn(8, generator=generator)),
            ("first_stage_model.decoder.conv_in.weight", torch.randn(2, 2, dtype=torch.float16, generator=generator)),
            ("model.betas", torch.linspace(0.1, 0.2, 5, dtype=torch.float64)),
        ]
    )


def _install_fake_lightning(patch) -> type:
    """Registers a stand-in `pytorch_lightning.callbacks.model_checkpoint` module; returns its class."""
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    module.ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        patch.setitem(sys.modules, parent, types.ModuleType(parent))
    patch.setitem(sys.modules, module.__name__, module)
    return module.ModelCheckpoint


def _save_lightning_checkpoint(path, monkeypatch) -> None:
    """A checkpoint shaped like the official StableSR .ckpt: the state dict beside a pickled
    `pytorch_lightning...ModelCheckpoint` callback (keyed by its class), numpy values and payloads."""
    with monkeypatch.context() as patch:
        model_checkpoint = _install_fake_lightning(patch)
        callback = model_checkpoint()
        callback.best_model_score = torch.tensor(0.25)
        torch.save(
            {
                "epoch": 117,
                "global_step": 1234,
                "pytorch-lightning_version": "1.4.2",
                "state_dict": _state(),
                "callbacks": {model_checkpoint: {"best_model_score": torch.tensor(0.25), "callback": callback}},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}],
                "loss_history": np.array([0.5, 0.25]),
                "best": np.float64(0.125),
                "reduce_payload": ReducePayload(),
                "setstate_payload": SetstatePayload(),
            },
            path,
        )
    assert "pytorch_lightning" not in sys.modules  # loading must not need (or import) Lightning


def _assert_state_equal(loaded: dict, expected: dict, *, ordered: bool = True) -> None:
    assert list(loaded) == list(expected) if ordered else sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_lightning_checkpoint_loads_without_running_payloads(tmp_path, monkeypatch):
    path = tmp_path / "stablesr_tiny.ckpt"
    _save_lightning_checkpoint(path, monkeypatch)
    SENTINEL_EVENTS.clear()
    state = load_state_dict(path)
    _assert_state_equal(state, _state())
    assert SENTINEL_EVENTS == []
    if importlib.util.find_spec("pytorch_lightning") is None:
        with pytest.raises(CheckpointReadError, match="it needs the package 'pytorch_lightning'"):
            load_state_dict(path, trust_pickle=True)
    # With the classes importable, plain pickle runs both payloads: the check above can fail.
    with monkeypatch.context() as patch:
        _install_fake_lightning(patch)
        _assert_state_equal(load_state_dict(path, trust_pickle=True), _state())
    assert sorted(SENTINEL_EVENTS) == ["reduce payload ran", "setstate payload ran"]


def test_wrapper_key_error_names_keys(tmp_path, monkeypatch):
    path = tmp_path / "full.ckpt"
    _save_lightning_checkpoint(path, monkeypatch)
    with pytest.raises(CheckpointReadError, match="are not tensors"):
        load_state_dict(path, wrapper_key="callbacks")
    with pytest.raises(CheckpointReadError, match=r"no key 'params_ema'; top-level keys: epoch, global_step"):
        load_state_dict(path, wrapper_key="params_ema")


def test_restricted_unpickler_placeholders(tmp_path, monkeypatch):
    from stablesr.weights.io import _RESTRICTED_PICKLE

    path = tmp_path / "full.ckpt"
    _save_lightning_checkpoint(path, monkeypatch)
    SENTINEL_EVENTS.clear()
    content = torch.load(path, pickle_module=_RESTRICTED_PICKLE, weights_only=False)
    (callback_class,) = content["callbacks"]
    assert issubclass(callback_class, InertObject)
    assert callback_class.class_path == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    callback = content["callbacks"][callback_class]["callback"]
    assert isinstance(callback, InertObject) and torch.equal(callback.state["best_model_score"], torch.tensor(0.25))
    assert content["reduce_payload"].args == ("reduce payload ran",)
    assert content["setstate_payload"].state == {"secret": 1}
    assert np.array_equal(content["loss_history"], [0.5, 0.25]) and content["best"] == 0.125
    assert SENTINEL_EVENTS == []


def test_wrappers_unwrapped_only_when_asked(tmp_path):
    path = tmp_path / "basicsr.pth"
    torch.save({"params_ema": _state(), "params": {"x": torch.ones(1)}}, path)
    with pytest.raises(CheckpointReadError, match="pass wrapper_key= one of params_ema, params"):
        load_state_dict(path)
    _assert_state_equal(load_state_dict(path, wrapper_key="params_ema"), _state())
    torch.save(_state(), tmp_path / "plain.pt")  # a bare state dict needs no unwrapping
    _assert_state_equal(load_state_dict(tmp_path / "plain.pt"), _state())


def test_legacy_torch_format(tmp_path):
    path = tmp_path / "old.bin"
    torch.save({"state_dict": _state()}, path, _use_new_zipfile_serialization=False)
    _assert_state_equal(load_state_dict(path), _state())


def test_safetensors_round_trip_atomic_and_shared_storage(tmp_path):
    state = dict(_state())
    base = torch.arange(12.0).reshape(3, 4)
    state["tied.a"], state["tied.b"] = base, base  # tied weights share storage
    state["strided"] = base.t()  # non-contiguous view
    path = save_state_dict(state, tmp_path / "sub" / "model.safetensors")
    assert os.listdir(tmp_path / "sub") == ["model.safetensors"]
    expected = {name: tensor.contiguous() for name, tensor in state.items()}
    _assert_state_equal(load_state_dict(path), expected, ordered=False)  # safetensors sorts the names
    assert load_state_dict(path)["strided"].is_contiguous()


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
def test_missing_checkpoint(tmp_path, name):
    with pytest.raises(WeightsNotFoundError, match=rf"CFW autoencoder not found: .*{name}") as caught:
        load_state_dict(tmp_path / name, what="CFW autoencoder")
    assert isinstance(caught.value, FileNotFoundError)


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt", "legacy.pt"])
def test_truncated_checkpoint(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_state_dict(_state(), path)
    else:
        torch.save({"state_dict": _state()}, path, _use_new_zipfile_serialization=name != "legacy.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match=rf"cannot read .*{name}: truncated or corrupt") as caught:
        load_state_dict(path)
    assert isinstance(caught.value, StableSRError)


def test_unknown_suffix_and_non_dict(tmp_path):
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointReadError, match="unknown suffix"):
        load_state_dict(tmp_path / "w.onnx")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointReadError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")

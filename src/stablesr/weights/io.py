"""Reading and writing state dicts safely: safetensors, and torch pickles (.ckpt/.pt/.pth/.bin)
through a restricted unpickler that rebuilds tensors but never runs a pickled object's code.

Official StableSR checkpoints (https://github.com/IceClear/StableSR, Lightning 1.4) pickle a
`pytorch_lightning...ModelCheckpoint` callback beside `state_dict`, so `torch.load(weights_only=True)`
refuses them. Here every class outside a short allow-list becomes an inert placeholder: calling,
constructing or `__setstate__`-ing it only records its arguments.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import os
import pickle
import secrets
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from stablesr.errors import StableSRError, WeightsNotFoundError
from stablesr.weights.folders import apply_umask

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointReadError(StableSRError):
    """A checkpoint file is truncated, corrupt, or does not hold a state dict."""


def _allowed_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> object: the only callables a checkpoint may name."""
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes (numpy arrays)
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # Nothing that builds a container from a number: set(range(10**9)) or bytearray(n) in a tiny file
    # would allocate without bound. Containers come only from pickle opcodes (one per item, so bounded by
    # the file size) and tensors only from storages in the file (checked in `_unwrap`).
    for name in ("slice", "complex"):
        allowed["builtins", name] = getattr(builtins, name)
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"):
        if hasattr(torch._utils, name):
            allowed["torch._utils", name] = getattr(torch._utils, name)
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x pickles
        allowed[module, "_reconstruct"] = multiarray._reconstruct
        allowed[module, "scalar"] = multiarray.scalar
    allowed.update({("torch", str(dtype).removeprefix("torch.")): dtype for dtype in _torch_dtypes()})
    return allowed


def _torch_dtypes() -> set[torch.dtype]:
    return {value for value in vars(torch).values() if isinstance(value, torch.dtype)}


_ALLOWED = _allowed_globals()


class InertObject:
    """Stands in for a class the checkpoint names but we do not trust. Holds what the pickle
    gave it (args, state, items) and does nothing else; `class_path` says what it replaced."""

    class_path = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.items[len(self.items)] = value

    def extend(self, values):
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<inert {self.class_path}>"


class RestrictedUnpickler(pickle.Unpickler):
    """`find_class` returns allow-listed objects, or a placeholder subclass of InertObject; it
    never imports a module, so no code from the file or a named package runs."""

    _placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # protocol-2 pickles (torch.save) say __builtin__
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = type(name, (InertObject,), {"class_path": f"{module}.{name}"})
        return self._placeholders[key]


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load expects of `pickle_module` (torch's loader subclasses our Unpickler).
_RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="stablesr_restricted_pickle", Unpickler=RestrictedUnpickler, load=_restricted_load
)


def load_state_dict(
    path: str | Path,
    *,
    trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
    wrapper_key: str | None = None,
    what: str = "checkpoint",
) -> dict[str, Tensor]:
    """Tensors of a .safetensors file or a torch pickle, as {name: tensor}.

    A Lightning checkpoint's 'state_dict' is unwrapped; other wrappers ('params_ema', 'params',
    'model', ...) only when named with `wrapper_key`. Pickles go through RestrictedUnpickler
    unless `trust_pickle` (plain torch.load, which runs the file's code: only for files you
    trust). `what` names the file in errors ("StableSR checkpoint", "CFW autoencoder", ...).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} not found: {path}" + (" is a folder, not a file" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        content = _read_safetensors(path, map_location)
    elif suffix in PICKLE_SUFFIXES:
        content = _read_pickle(path, trust_pickle=trust_pickle, map_location=map_location)
    else:
        known = ", ".join((".safetensors", *PICKLE_SUFFIXES))
        raise CheckpointReadError(f"cannot read {what} {path}: unknown suffix (use one of {known})")
    return _unwrap(content, wrapper_key=wrapper_key, where=f"{what} {path}")


def _read_safetensors(path: Path, map_location) -> dict[str, Tensor]:
    try:
        return load_file(path, device=str(map_location))
    except SafetensorError as error:
        raise CheckpointReadError(f"cannot read {path}: truncated or corrupt safetensors file ({error})") from error


def _read_pickle(path: Path, *, trust_pickle: bool, map_location):
    is_zip = zipfile.is_zipfile(path)  # torch >= 1.6 format; legacy files cannot be memory-mapped
    pickle_module = pickle if trust_pickle else _RESTRICTED_PICKLE
    try:
        return torch.load(path, map_location=map_location, pickle_module=pickle_module, weights_only=False, mmap=is_zip)
    except ModuleNotFoundError as error:  # with trust_pickle: the file names a package not installed here
        reason = f"it needs the package {error.name!r} (or load it without trust_pickle)"
        raise CheckpointReadError(f"cannot read {path}: {reason}") from error
    except Exception as error:  # the boundary for untrusted bytes: unpickling can fail in any way
        reason = f"truncated or corrupt checkpoint ({type(error).__name__}: {error})"
        raise CheckpointReadError(f"cannot read {path}: {reason}") from error


def _unwrap(content, *, wrapper_key: str | None, where: str) -> dict[str, Tensor]:
    if not isinstance(content, dict):
        raise CheckpointReadError(f"{where} holds a {type(content).__name__}, not a state dict")
    if wrapper_key is not None:
        if wrapper_key not in content:
            raise CheckpointReadError(f"{where} has no key {wrapper_key!r}; top-level keys: {_key_list(content)}")
        content = content[wrapper_key]
    elif isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    not_tensors = [key for key, value in content.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointReadError(
            f"{where}: entries {_key_list(not_tensors)} are not tensors; if the weights sit under a "
            f"wrapper key, pass wrapper_key= one of {_key_list(content)}"
        )
    # A stride-0 view of 10**9 elements fits a one-element storage; copying it would allocate 4 GB.
    oversized = [key for key, value in content.items()
                 if value.numel() * value.element_size() > value.untyped_storage().nbytes()]
    if oversized:
        raise CheckpointReadError(f"{where}: tensors {_key_list(oversized)} have more elements than their stored "
                                  "data (a corrupt or crafted file)")
    return dict(content)


def _key_list(keys, limit: int = 8) -> str:
    keys = [str(key) for key in keys]
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def save_state_dict(state: dict[str, Tensor], path: str | Path) -> Path:
    """Write {name: tensor} as safetensors through a temporary file renamed into place.
    Tensors sharing storage (tied weights) are copied, since safetensors refuses shared storage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen_storages: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if pointer in seen_storages else tensor
        seen_storages.add(pointer)
    temp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        save_file(tensors, temp_path, metadata={"format": "pt"})
        apply_umask(temp_path)  # safetensors writes 0600; a weight file is as readable as any other file
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return path

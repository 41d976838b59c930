"""JSON round trip of degradation settings and sampled-parameter records (frozen dataclasses).

`to_record` turns a dataclass into plain dicts/lists; `from_record` rebuilds it from its type
hints (nested dataclasses, tuples, optionals, tagged unions); `with_overrides` applies a nested
dict of overrides (e.g. from a YAML file) to a settings dataclass, rejecting unknown keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def to_record(obj: Any) -> Any:
    """Dataclass -> dict of JSON-ready values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {field.name: to_record(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_record(item) for item in obj]
    return obj


def _tag_of(cls: type) -> Any:
    """The default of a dataclass's `op` field, used to pick a member of a tagged union."""
    return {field.name: field.default for field in dataclasses.fields(cls)}.get("op")


def _convert(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1:
            return _convert(members[0], value)
        by_tag = {_tag_of(member): member for member in members if dataclasses.is_dataclass(member)}
        return from_record(by_tag[value["op"]], value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if isinstance(value, (str, int, float)):  # one value for a list option is a list of one
                value = [value]
            return tuple(_convert(args[0], item) for item in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(arg, item) for arg, item in zip(args, value))
    if origin is Literal or hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return from_record(hint, value)
    if hint is float:
        return float(value)
    return hint(value)


def from_record(cls: type[T], data: dict) -> T:
    """Rebuild dataclass `cls` from `to_record` output."""
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    return cls(**{name: _convert(hints[name], value) for name, value in data.items()})


def with_overrides(settings: T, overrides: dict) -> T:
    """Copy of `settings` with nested `overrides` applied; a mapping given for a tuple of pairs
    (e.g. `kernel_probs: {iso: 0.5, aniso: 0.5}`) becomes that tuple."""
    hints = typing.get_type_hints(type(settings))
    names = {field.name for field in dataclasses.fields(settings)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown settings for {type(settings).__name__}: {sorted(unknown)}; known: {sorted(names)}")
    changes = {}
    for name, value in overrides.items():
        current = getattr(settings, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{name} is a section of settings: give a mapping, not {value!r}")
            changes[name] = with_overrides(current, value)
        else:
            changes[name] = _convert(hints[name], list(value.items()) if isinstance(value, dict) else value)
    return dataclasses.replace(settings, **changes)

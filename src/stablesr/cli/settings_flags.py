"""CLI flags generated from a settings dataclass (`stablesr.configs`): one flag per field, help from its metadata.

Every generated flag defaults to None, so `overrides_from_args` returns exactly what the user typed;
`stablesr.configs.resolve_settings` merges it over the model defaults and the preset.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Collection
from dataclasses import fields
from typing import Any, Literal

from stablesr.configs import Settings, default_of, flag_of


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[Settings], *,
                           skip: Collection[str] = (), more_presets: dict[str, dict[str, Any]] | None = None) -> None:
    """One flag per field of `cls` (except the names in `skip`, e.g. flags another method's class already
    added), in argument groups named by the fields' `group` metadata. `more_presets` (other methods'
    presets) join `--preset`'s choices; the method's settings class checks the name."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    presets = {**cls.presets, **(more_presets or {})}
    if presets and "preset" not in skip:
        groups["sampling"] = parser.add_argument_group(
            "sampling", "Defaults shown are the method's; a model folder's upscale_defaults.json replaces them, "
                        "--preset replaces those, and explicit flags win.")
        groups["sampling"].add_argument("--preset", choices=list(presets),
                                        help="; ".join(f"{name}: {_describe(values)}"
                                                       for name, values in presets.items()))
    for f in (f for f in fields(cls) if f.name not in skip):
        group_name = f.metadata.get("group", "settings")
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        text = f.metadata["help"]
        if "default" not in text:
            text += f" (default {_show(default_of(cls, f.name))})"
        group.add_argument(flag_of(cls, f.name), dest=f.name, default=None, help=text, **_argparse_kind(hints[f.name]))


def overrides_from_args(args: argparse.Namespace, cls: type[Settings]) -> dict[str, Any]:
    """The settings the user set explicitly on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def _argparse_kind(hint: Any) -> dict[str, Any]:
    options = [o for o in _union(hint) if o is not type(None)]
    (kind,) = options
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(kind) is Literal:
        return {"choices": list(typing.get_args(kind))}
    return {"type": kind, "metavar": kind.__name__.upper()}


def _union(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _show(value: Any) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items())

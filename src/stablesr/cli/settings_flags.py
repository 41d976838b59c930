"""CLI flags generated from a settings dataclass (`stablesr.configs`): one flag per field, help from its metadata.

Every generated flag defaults to None, so `overrides_from_args` returns exactly what the user typed;
`stablesr.configs.resolve_settings` merges it over the model defaults and the preset.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields
from typing import Any, Literal

from stablesr.configs import Settings, default_of, flag_of


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[Settings], *more: type[Settings],
                           names: dict[type[Settings], str] | None = None) -> None:
    """One flag per field of `cls` (and of the `more` classes: the union, one flag per field name), in
    argument groups named by the fields' `group` metadata. A field whose default differs between the
    classes shows each default under the class's name in `names` (e.g. the method names)."""
    classes = (cls, *more)
    names = names or {c: c.__name__ for c in classes}
    presets = {name: values for c in classes for name, values in c.presets.items()}
    groups: dict[str, Any] = {}
    if presets:
        groups["sampling"] = parser.add_argument_group(
            "sampling", "Defaults shown are the method's; a model folder's upscale_defaults.json replaces them, "
                        "--preset replaces those, and explicit flags win.")
        groups["sampling"].add_argument("--preset", choices=list(presets),
                                        help="; ".join(f"{name}: {_describe(values)}"
                                                       for name, values in presets.items()))
    added: set[str] = set()
    for owner in classes:
        hints = typing.get_type_hints(owner)
        for f in fields(owner):
            if f.name in added:
                continue
            added.add(f.name)
            group_name = f.metadata.get("group", "settings")
            group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
            group.add_argument(flag_of(owner, f.name), dest=f.name, default=None,
                               help=_help(f, [c for c in classes if f.name in _field_names(c)], names),
                               **_argparse_kind(hints[f.name]))


def overrides_from_args(args: argparse.Namespace, cls: type[Settings]) -> dict[str, Any]:
    """The settings the user set explicitly on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def foreign_flags(args: argparse.Namespace, cls: type[Settings], *others: type[Settings]) -> list[str]:
    """The flags set on the command line that belong to one of `others` but not to `cls`."""
    own = _field_names(cls)
    return sorted({flag_of(o, f.name) for o in others for f in fields(o)
                   if f.name not in own and getattr(args, f.name, None) is not None})


def _field_names(cls: type[Settings]) -> set[str]:
    return {f.name for f in fields(cls)}


def _help(f, owners: list[type[Settings]], names: dict[type[Settings], str]) -> str:
    text = f.metadata["help"]
    if len(owners) < len(names):
        text += f" [{', '.join(names[c] for c in owners)} only]"
    if "default" in f.metadata["help"]:
        return text
    defaults = {names[c]: default_of(c, f.name) for c in owners}
    if len(owners) > 1 and len({_show(v) for v in defaults.values()}) > 1:
        return text + " (default " + ", ".join(f"{name}: {_show(v)}" for name, v in defaults.items()) + ")"
    return text + f" (default {_show(default_of(owners[0], f.name))})"


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

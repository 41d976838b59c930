"""Model folders written whole or not at all, and checked before they are loaded.

`write_model_folder` builds the folder in a hidden temporary sibling, gives every file the
permissions of any file the user writes (the umask; safetensors writes 0600), writes a small
manifest last (`stablesr_manifest.json`: every file's size and a hash of its first and last
64 KiB), then swaps the folder in. A failure half-way (a full disk) leaves the old folder
untouched. `check_model_folder` refuses a folder whose files no longer match its manifest
(missing, truncated, or replaced by another write); a folder without a manifest (older versions,
`save_pretrained`) loads when every component named in model_index.json is present.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from stablesr.errors import StableSRError, WeightsNotFoundError

MANIFEST = "stablesr_manifest.json"
SAMPLE_BYTES = 1 << 16
WEIGHT_SUFFIXES = (".safetensors", ".bin")
CONFIG_NAMES = ("config.json", "scheduler_config.json", "tokenizer_config.json")


class IncompleteModelError(StableSRError):
    """A model folder is missing files, holds truncated ones, or mixes two writes."""


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str | Path) -> None:
    """chmod `root` and everything below it as if created normally: files 0666, folders 0777, minus the umask."""
    mask = current_umask()
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _fingerprint(path: Path) -> str:
    """Size and a SHA-256 of the first and last 64 KiB: cheap on multi-GB weights, and two trainings or
    conversions of one architecture (same sizes) still differ in it."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as file:
        digest.update(file.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            file.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            digest.update(file.read())
    return f"{size}:{digest.hexdigest()[:32]}"


def _fingerprints(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): _fingerprint(path)
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}


def write_model_folder(folder: str | Path, save: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call `save(temporary_folder)`, then make the result `folder` in one swap (see the module docstring).
    An existing `folder` is refused unless `overwrite`."""
    folder = Path(folder).absolute()  # `-o .` has no name to build the temporary sibling from
    if folder.exists() and not folder.is_dir():
        raise StableSRError(f"{folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / "model_index.json").is_file():  # never replace a folder of other files
            raise StableSRError(f"{folder} holds files but no model; choose an empty or new folder")
        if not overwrite:
            raise StableSRError(f"{folder} already holds a model; pass --overwrite to replace it")
    token = secrets.token_hex(4)
    temporary = folder.with_name(f".{folder.name}.{token}.part")
    previous = folder.with_name(f".{folder.name}.{token}.old")
    try:
        temporary.mkdir(parents=True)
        save(temporary)
        manifest = {"format": 1, "files": _fingerprints(temporary)}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        apply_umask(temporary)
        if folder.exists():
            folder.rename(previous)
        temporary.rename(folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if previous.exists() and not folder.exists():
            previous.rename(folder)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return folder


def check_model_folder(folder: str | Path) -> None:
    """Raise IncompleteModelError unless `folder` is a whole model folder (see the module docstring)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        try:
            listed = json.loads(manifest_path.read_text())["files"]
            listed = {str(name): str(fingerprint) for name, fingerprint in listed.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise IncompleteModelError(f"model folder {folder}: unreadable {MANIFEST} ({error})") from error
        missing = sorted(name for name in listed if not (folder / name).is_file())
        changed = sorted(name for name in listed if name not in missing and _fingerprint(folder / name) != listed[name])
        if missing or changed:
            raise IncompleteModelError(
                f"model folder {folder} is incomplete or mixed: missing {missing[:5]}, changed {changed[:5]} since "
                "it was written; write it again (e.g. `stablesr convert ... --overwrite`)")
        return
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(f"model folder {folder}: unreadable model_index.json ({error})") from error
    problems = [f"{name}/ {problem}" for name, spec in index.items()
                if isinstance(spec, list) and len(spec) == 2 and spec[0] is not None
                and (problem := _component_problem(folder / name))]
    if problems:
        raise IncompleteModelError(f"model folder {folder} is incomplete: {'; '.join(problems[:5])}")


def _component_problem(component: Path) -> str | None:
    if not component.is_dir():
        return "is missing"
    names = {path.name for path in component.iterdir()}
    if not names & set(CONFIG_NAMES) and "vocab.json" not in names:
        return "has no config"
    if "config.json" in names and not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        return "has no weights"
    return None

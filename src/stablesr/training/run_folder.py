"""One run per output folder: the checks a run makes before any work, and `--overwrite`.

A fresh run (no `run.resume`) refuses an output folder that already holds files, so it can never
prune, append to or later resume an earlier run's checkpoints and logs; `--overwrite` removes only
that earlier run's own entries. Validation images are read up front, not at the first validation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stablesr.data.datasets import list_images, read_rgb
from stablesr.errors import StableSRError
from stablesr.training.config import RunSettings

RUN_ENTRIES = ("checkpoints", "logs", "validation", "training_config.json")


def check_run_folder(run: RunSettings) -> None:
    """Raise StableSRError for an output folder this run must not use, or an unreadable validation image."""
    if run.overwrite and run.resume is not None:
        raise StableSRError("run.resume continues the run in output_dir; run.overwrite (--overwrite) replaces it: "
                            "choose one")
    output_dir = Path(run.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise StableSRError(f"run.output_dir {output_dir} is a file, not a folder")
    if run.resume is None and not run.overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        raise StableSRError(f"run.output_dir {output_dir} already holds files (an earlier run?): pass "
                            "--run.resume latest to continue it, --overwrite to replace it, or another output_dir")
    for path in list_images(run.validation_images):
        try:
            read_rgb(path)
        except (StableSRError, OSError, ValueError) as error:
            raise StableSRError(f"run.validation_images: cannot read {path} ({error})") from error


def clear_previous_run(output_dir: Path) -> None:
    """--overwrite: remove an earlier run's checkpoints, logs, previews and config (its exported pipeline is
    replaced at the end); nothing else in the folder is touched."""
    for name in RUN_ENTRIES:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def left_out_message(dataset) -> str | None:
    """'left out N of M training images ...: a, b, ...' for a dataset that lists `left_out_files`, else None."""
    left_out = getattr(dataset, "left_out_files", [])
    if not left_out:
        return None
    names = ", ".join(map(str, left_out[:5])) + (" ..." if len(left_out) > 5 else "")
    total = len(left_out) + len(dataset)
    return f"left out {len(left_out)} of {total} training images (too small or unreadable): {names}"

"""Where metric and baseline weight files are found: ONE rule, and nothing is ever downloaded.

1. A `path` the caller gives: the file itself, or a folder holding the file (nothing else is searched).
2. Otherwise the torch hub cache `torch.hub.get_dir()`, in the sub-folder of the upstream tool that
   publishes the file: `checkpoints/` (torchvision, pytorch-fid), `pyiqa/` (pyiqa), `clip/` (pyiqa's
   copy of OpenAI CLIP). torch.hub.get_dir() is `$TORCH_HOME/hub`; TORCH_HOME defaults to
   `$XDG_CACHE_HOME/torch`, i.e. `~/.cache/torch`; `torch.hub.set_dir` overrides it.
3. Then any extra folder an upstream tool uses for its own cache (only `~/.cache/clip`, the `clip`
   package's).

A missing file raises one `WeightsNotFoundError` naming the file and where to put it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stablesr.errors import WeightsNotFoundError


def hub_dir() -> Path:
    """torch.hub.get_dir() as a Path ($TORCH_HOME/hub, read at call time)."""
    import torch

    return Path(torch.hub.get_dir())


def find_weights(file_name: str, path: str | Path | None = None, *, cache: str | Sequence[str],
                 extra_folders: Sequence[Path] = (), needed_by: str) -> Path:
    """The weight file `file_name` by the rule above; `cache` is the hub sub-folder(s), first preferred.

    `needed_by` opens the error message, e.g. "FID needs the Inception weights".
    """
    if path is not None:
        candidates = [Path(path), Path(path) / file_name]
        folders = [Path(path)]
    else:
        folders = [hub_dir() / sub for sub in ([cache] if isinstance(cache, str) else cache)] + list(extra_folders)
        candidates = [folder / file_name for folder in folders]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = f"at {path}" if path is not None else "in " + " or ".join(str(folder) for folder in folders)
    raise WeightsNotFoundError(f"{needed_by} {file_name}, not found {where}; put the file in {folders[0]} or pass "
                               "its path (nothing is downloaded)")

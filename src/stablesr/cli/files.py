"""The file-handling layer of the CLI: which inputs, which outputs, skip/overwrite, and a run
over many files where one bad file is reported and the rest go on.

Folder-in/folder-out with skip-existing is what the official StableSR scripts do
(https://github.com/IceClear/StableSR); here a clash is refused before any work starts.
Imports stay light (no torch) so `stablesr --help` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from stablesr.errors import StableSRError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# What a per-file failure may raise; anything else is a bug and stops the run.
# RuntimeError: torch's out-of-memory and size errors; OverflowError: absurd sizes. One file fails alone.
FILE_ERRORS = (StableSRError, OSError, ValueError, MemoryError, RuntimeError, OverflowError)


def collect_inputs(paths: Sequence[str | Path], *, recursive: bool = False) -> list[Path]:
    """Image files named directly or found in folders (sub-folders only with `recursive`),
    sorted and de-duplicated. Hidden files (".name", e.g. macOS "._x.jpg") are skipped."""
    return [file for file, _ in _collect(paths, recursive=recursive)]


def _collect(paths: Sequence[str | Path], *, recursive: bool) -> list[tuple[Path, Path | None]]:
    """(file, folder it was found in or None when named directly), sorted by file, unique."""
    found: dict[Path, tuple[Path, Path | None]] = {}
    for path in map(Path, paths):
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            for file in candidates:
                if file.is_file() and _is_image_name(file.relative_to(path)):
                    found.setdefault(file.resolve(), (file, path))
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise StableSRError(f"input {path} is not an image file (suffixes: {' '.join(IMAGE_SUFFIXES)})")
            found.setdefault(path.resolve(), (path, None))
        else:
            raise StableSRError(f"input {path} does not exist")
    return sorted(found.values(), key=lambda pair: str(pair[0]))


def _is_image_name(relative: Path) -> bool:
    hidden = any(part.startswith(".") for part in relative.parts)
    return not hidden and relative.suffix.lower() in IMAGE_SUFFIXES


def output_path_for(
    input_path: Path, *, output_dir: Path, suffix: str | None = None, input_root: Path | None = None
) -> Path:
    """output_dir / (path relative to input_root, or the file name), with `suffix` if given.
    output_path_for(Path("in/a/x.jpg"), output_dir=Path("out"), suffix="png", input_root=Path("in"))
    -> out/a/x.png"""
    relative = Path(input_path).relative_to(input_root) if input_root is not None else Path(Path(input_path).name)
    return Path(output_dir) / relative.with_suffix(_normal_suffix(suffix) if suffix else relative.suffix)


def _normal_suffix(suffix: str) -> str:
    normal = "." + suffix.lower().lstrip(".")
    if normal not in IMAGE_SUFFIXES:
        raise StableSRError(f"output suffix {suffix!r} is not one of {' '.join(IMAGE_SUFFIXES)}")
    return normal


class RunPlan(list):
    """The (input, output) pairs to process, in order (a plain list of them), plus `skipped`:
    the inputs whose output already exists and was kept (skip_existing)."""

    def __init__(self, pairs: Iterable[tuple[Path, Path]] = (), skipped: Iterable[Path] = ()):
        super().__init__(pairs)
        self.skipped = list(skipped)


def plan_outputs(
    paths: Sequence[str | Path],
    *,
    output_dir: str | Path,
    skip_existing: bool = False,
    overwrite: bool = False,
    suffix: str | None = None,
    recursive: bool = False,
) -> RunPlan:
    """Inputs (files and folders) -> RunPlan, checked before any work starts: no inputs, two
    inputs on one output, an output that would replace its input, or an existing output
    without `skip_existing` / `overwrite` each raise one StableSRError."""
    if skip_existing and overwrite:
        raise StableSRError("--skip-existing and --overwrite contradict each other; pass one")
    inputs = _collect(paths, recursive=recursive)
    if not inputs:
        raise StableSRError(f"no images found in {', '.join(map(str, paths))} (suffixes: {' '.join(IMAGE_SUFFIXES)})")
    output_dir = Path(output_dir)
    pairs = [
        (file, output_path_for(file, output_dir=output_dir, suffix=suffix, input_root=root)) for file, root in inputs
    ]
    _check_unique(pairs)
    existing = [(file, output) for file, output in pairs if output.exists()]
    if existing and not (skip_existing or overwrite):
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise StableSRError(
            f"output {existing[0][1]} already exists{more}; "
            "pass --skip-existing to keep it or --overwrite to replace it"
        )
    if skip_existing:
        return RunPlan([pair for pair in pairs if not pair[1].exists()], skipped=[file for file, _ in existing])
    return RunPlan(pairs)


def _check_unique(pairs: list[tuple[Path, Path]]) -> None:
    owners: dict[Path, Path] = {}
    for file, output in pairs:
        resolved = output.resolve()
        if resolved == file.resolve():
            raise StableSRError(f"output {output} would replace its input; choose another output folder or --format")
        if resolved in owners:
            raise StableSRError(f"inputs {owners[resolved]} and {file} would both be written to {output}")
        owners[resolved] = file


@dataclass
class RunReport:
    """What happened to each input: done, skipped (output kept), failed (with the reason)."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        """E.g. "2 done, 1 skipped, 1 failed" and one line per failure."""
        lines = [f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed"]
        lines += [f"  failed: {file}: {reason}" for file, reason in self.failed]
        return "\n".join(lines)


def process_files(
    pairs: Sequence[tuple[Path, Path]], work: Callable[[Path, Path], None], *, progress: bool = True
) -> RunReport:
    """Call work(input, output) for each pair with a progress bar. A file that fails with a
    StableSRError, OSError, ValueError or MemoryError is reported and the run goes on; an
    output that appeared during a failed call is removed, so no half result stays behind.
    A RunPlan's `skipped` inputs are carried into the report."""
    from stablesr.imaging import OutputExistsError

    report = RunReport(skipped=list(pairs.skipped) if isinstance(pairs, RunPlan) else [])
    bar = tqdm(pairs, desc="images", unit="img", disable=not progress, file=sys.stderr)
    for input_path, output_path in bar:
        try:
            work(input_path, output_path)  # writes atomically: a failed call leaves no half result to remove
        except OutputExistsError as error:  # appeared during the run (another run into the same folder): kept
            report.skipped.append(input_path)
            bar.write(f"skipped: {input_path}: {error}", file=sys.stderr)
        except FILE_ERRORS as error:
            report.failed.append((input_path, _one_line(error)))
            bar.write(f"failed: {input_path}: {report.failed[-1][1]}", file=sys.stderr)
        else:
            report.done.append(input_path)
    return report


def _one_line(error: BaseException) -> str:
    """The first line of an error message (torch's out-of-memory errors run over several lines)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]

"""Models that ship inside the package, addressed by name (`stablesr-nano`), and the default model.

`resolve_model("stablesr-nano")` -> the folder inside the installed package; any other string is
a path. An existing local folder of the same name wins, so a user's own ./stablesr-nano is never
shadowed. The bundled folders are ordinary pipeline folders (configs + fp16 safetensors +
`upscale_defaults.json`), loaded by the same code as converted official weights.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
BUNDLED_MODELS: dict[str, Path] = {"stablesr-nano": BUNDLED_DIR / "stablesr-nano"}
DEFAULT_MODEL = "stablesr-nano"


def resolve_model(model: str | Path) -> Path:
    """A bundled model's folder for its name; otherwise the path itself (user ~ expanded)."""
    path = Path(model).expanduser()
    if not path.exists() and str(model) in BUNDLED_MODELS:
        return BUNDLED_MODELS[str(model)]
    return path


def default_model() -> Path | None:
    """The bundled default model's folder, or None when this installation has none."""
    folder = BUNDLED_MODELS[DEFAULT_MODEL]
    return folder if (folder / "model_index.json").is_file() else None


def choose_model(model: str | Path | None, *, weights=None, method: str = "stablesr") -> Path | None:
    """The model folder a StableSR run uses: `model` (a path or bundled name), else the bundled default
    when no official `weights` files are given; None for other methods or when nothing is bundled."""
    if model is not None:
        return resolve_model(model)
    if method != "stablesr" or weights:
        return None
    return default_model()

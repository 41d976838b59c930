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

"""Frozen, typed settings for an upscaling run: one class per method, validated once at construction.

Every field carries its help text and CLI flag in `metadata`, so `stablesr upscale` generates its
flags from the class (`stablesr.cli.settings_flags`). Values merge in ONE place,
`resolve_settings`, with the precedence

    class defaults < the model folder's `upscale_defaults.json` < preset < explicit flags / kwargs

and the merged values are validated once, by the constructor, with errors that name the flag.
This module imports only the standard library (the CLI builds its parser from it without torch).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from stablesr.errors import StableSRError
from stablesr.tiling.budget import is_memory_size

Sampler = Literal["ddpm", "ddim"]
ColorFix = Literal["adain", "wavelet", "none"]
Start = Literal["lr", "noise"]

UPSCALE_DEFAULTS_FILE = "upscale_defaults.json"  # per-model defaults at the root of a pipeline folder
DEFAULT_VAE_TILE_SIZE = 1024  # the official VAE tile; the largest one a memory budget chooses


class SettingsError(StableSRError, ValueError):
    """A setting has a bad value; the message names the field and its CLI flag."""


def setting(default: Any, help: str, *, flag: str | None = None, group: str = "sampling",
            check: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    """A settings field: `help` for the CLI (and the docs), `check(value)` with `rule` saying what it wants."""
    return field(default=default, metadata={"help": help, "flag": flag, "group": group, "check": check, "rule": rule})


def flag_of(cls: type, name: str) -> str:
    """The CLI flag of a field: its metadata `flag`, else `--` + the name with dashes."""
    meta = {f.name: f.metadata for f in fields(cls)}[name]
    return meta.get("flag") or "--" + name.replace("_", "-")


class Settings:
    """Shared behaviour of the frozen settings dataclasses (subclasses are `@dataclass(frozen=True)`)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            _check_type(type(self), f.name, value, hints[f.name])
            check = f.metadata.get("check")
            if check is not None and value is not None and not check(value):
                self.fail(f.name, f.metadata["rule"])
        self.check_together()

    def check_together(self) -> None:
        """Rules that involve several fields (override in a subclass)."""

    def fail(self, name: str, rule: str) -> typing.NoReturn:
        value = getattr(self, name)
        raise SettingsError(f"{flag_of(type(self), name)} {value!r} ({name}): {rule}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path):
        return cls(**check_known(cls, json.loads(Path(path).read_text()), where=str(path)))


def _check_type(cls: type, name: str, value: Any, hint: Any) -> None:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType) \
        else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return
        if typing.get_origin(option) is Literal and value in typing.get_args(option):
            return
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if option in (int, str, bool) and type(value) is option:
            return
    literals = [a for o in options if typing.get_origin(o) is Literal for a in typing.get_args(o)]
    wanted = f"one of {', '.join(map(repr, literals))}" if literals else " or ".join(
        getattr(o, "__name__", str(o)) for o in options)
    raise SettingsError(f"{flag_of(cls, name)} {value!r} ({name}): must be {wanted}")


def check_known(cls: type, values: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """`values` as a dict, or one error naming the unknown keys and where they came from."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown setting(s) {', '.join(unknown)} for {cls.__name__} "
                            f"(known: {', '.join(sorted(known))})")
    return dict(values)


def resolve_settings(cls: type, *, model_defaults: Mapping[str, Any] | None = None, preset: str | None = None,
                     overrides: Mapping[str, Any] | None = None):
    """The one merge: class defaults < model defaults < preset < explicit overrides; validated once."""
    if preset is not None and preset not in cls.presets:
        raise SettingsError(f"--preset {preset!r}: must be one of {', '.join(cls.presets)}")
    merged = {**check_known(cls, model_defaults or {}, where="model defaults"),
              **(cls.presets[preset] if preset is not None else {}),
              **check_known(cls, overrides or {}, where="options")}
    return cls(**merged)


def read_upscale_defaults(folder: str | Path, cls: type | None = None) -> dict[str, Any]:
    """`folder/upscale_defaults.json` as a dict of settings fields ({} when the folder has none)."""
    path = Path(folder).expanduser() / UPSCALE_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SettingsError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a JSON object of settings, got {type(data).__name__}")
    cls = cls or UpscaleSettings
    values = check_known(cls, data, where=str(path))
    resolve_settings(cls, model_defaults=values)  # fail now, naming the file, if a value is bad
    return values


def default_of(cls: type, name: str) -> Any:
    f = {f.name: f for f in fields(cls)}[name]
    return f.default if f.default is not MISSING else None


STREAM_WEIGHTS_HELP = ("hold about one layer's weights at a time: a model folder's memory-mapped weights go back to "
                       "the OS page cache after each layer and are read back when used again (bit-identical "
                       "results; lowest memory, slower steps; CPU)")

def _positive(value) -> bool:
    return value > 0


class TiledSettings(Settings):
    """The tile rules shared by every latent-diffusion method's settings (fields `tile_size`,
    `tile_overlap`, `vae_tile_size`): the overlap check and the derived VAE tile sizes, written once."""

    def check_together(self) -> None:
        if self.tile_overlap >= self.tile_size:
            self.fail("tile_overlap", f"must be < the tile size {self.tile_size} (--tile-size)")

    @property
    def vae_encode_tiles(self) -> tuple[int, int]:
        """(tile, overlap) in pixels for the tiled VAE encoder; the overlap is a multiple of 8. An unset
        vae_tile_size reads as DEFAULT_VAE_TILE_SIZE (the pipeline sets it from the budget first)."""
        tile = self.vae_tile_size or DEFAULT_VAE_TILE_SIZE
        return tile, tile // 64 * 8

    def vae_decode_tiles(self, vae_scale_factor: int) -> tuple[int, int]:
        """(tile, overlap) in latent pixels for the tiled VAE decoder."""
        latent_tile = (self.vae_tile_size or DEFAULT_VAE_TILE_SIZE) // vae_scale_factor
        return max(latent_tile, 8), max(latent_tile // 4, 2)


@dataclass(frozen=True)
class UpscaleSettings(TiledSettings):
    """Every knob of a StableSR upscale, with the defaults of the official tile script
    (`sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`) except where noted in the field help.

    `faithful` reproduces two official quirks exactly (tile-weight asymmetry, DDIM's mixed
    timestep grids, float32 respacing) for parity; the default is the corrected behaviour.
    """

    upscale: float = setting(4.0, "upscaling factor", flag="--scale", check=_positive, rule="must be > 0")
    num_inference_steps: int = setting(200, "sampling steps (the paper: 200 respaced DDPM steps; turbo: 4)",
                                       flag="--steps", check=_positive, rule="must be >= 1")
    sampler: Sampler = setting("ddpm", "ddpm (respaced ancestral, the official scripts) or ddim")
    eta: float = setting(0.0, "DDIM eta (0 = deterministic)", check=lambda v: v >= 0, rule="must be >= 0")
    fidelity: float | None = setting(None, "CFW weight w in [0, 1] (default: 0.5 with trained CFW weights, else 0)",
                                     check=lambda v: 0 <= v <= 1, rule="must be in [0, 1]")
    color_fix: ColorFix = setting("wavelet", "colour correction against the input (wavelet: WebUI and turbo "
                                             "default; the paper used adain)")
    tile_size: int = setting(64, "latent tile size of aggregation sampling (64 = 512 px)", group="tiles and memory",
                             check=lambda v: v >= 1, rule="must be >= 1")
    tile_overlap: int = setting(32, "latent tile overlap, < tile size", group="tiles and memory",
                                check=lambda v: v >= 0, rule="must be >= 0")
    tile_batch_size: int = setting(4, "latent tiles per UNet call", group="tiles and memory",
                                   check=lambda v: v >= 1, rule="must be >= 1")
    vae_tile_size: int | None = setting(None, "VAE tile size in pixels, a multiple of 8, >= 64 (default: the largest "
                                              f"up to {DEFAULT_VAE_TILE_SIZE} that fits --max-memory)",
                                        group="tiles and memory", check=lambda v: v >= 64 and v % 8 == 0,
                                        rule="must be a multiple of 8 and >= 64")
    max_memory: str = setting("auto", "memory budget of a run: 6GB, 1500MB, 8GiB, ... (auto: 80%% of the free RAM, "
                                      "or of the free GPU memory on cuda); picks the VAE and Real-ESRGAN tile sizes "
                                      "and refuses, before the big allocations, an image that cannot fit",
                              group="tiles and memory", check=is_memory_size,
                              rule="must be a size such as 6GB, 1500MB or 8GiB, or auto")
    min_size: int | None = setting(None, "bicubic-upscale the input at least to this short side in pixels "
                                         "(default: one latent tile, tile size x 8)", group="tiles and memory",
                                   check=_positive, rule="must be >= 1")
    stream_weights: bool = setting(False, STREAM_WEIGHTS_HELP, group="tiles and memory")
    start: Start = setting("lr", "x_T from the noised LR latent (as the official tile script) or pure noise")
    guidance_scale: float = setting(1.0, "classifier-free guidance scale (1 = off, as the official DDPM scripts)",
                                    check=lambda v: v >= 0, rule="must be >= 0")
    prompt: str = setting("", "positive prompt")
    negative_prompt: str | None = setting(None, "negative prompt for guidance (default: the official DDIM "
                                                "scripts' negative prompt)")
    faithful: bool = setting(False, "reproduce the official quirks exactly (tile-weight asymmetry, DDIM grids)")

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # StableSR-Turbo: 4 DDPM steps at t = 999, 666, 333, 0 (README), CFW 0.5, wavelet.
        "turbo": {"num_inference_steps": 4, "sampler": "ddpm", "color_fix": "wavelet"},
        # The paper's main setting.
        "paper": {"num_inference_steps": 200, "sampler": "ddpm", "color_fix": "adain"},
        # The official 4K DDIM example (768v model): 20 steps, eta 1, CFG 7 with the negative prompt.
        "ddim-cfg": {"num_inference_steps": 20, "sampler": "ddim", "eta": 1.0, "guidance_scale": 7.0,
                     "start": "noise"},
    }


PRESETS: dict[str, dict[str, Any]] = UpscaleSettings.presets

"""What the parity fixture holds, read from its cases.json: case names, sizes, tiles, steps, eta, guidance.

The parity tests take every setting from here, so they check whatever fixture set STABLESR_SHARED
points at, not only the public one. Settings that cases.json states only inside a tensor's `call`
(the official call that produced it) are parsed from that text; tensor names give the case
structure (`<case>.step<k>.x_out`, `<case>.tile<k>.eps`, ...).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from conftest import PARITY_DIR


@cache
def load_meta(path: Path = PARITY_DIR / "cases.json") -> dict:
    """cases.json, or {} when the fixture is absent (the tests then skip)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def tensor_names(meta: dict) -> list[str]:
    return [t["name"] for t in meta.get("tensors", [])]


def call_of(meta: dict, name: str) -> str:
    return next(t["call"] for t in meta["tensors"] if t["name"] == name)


def shape_of(meta: dict, name: str) -> tuple[int, ...]:
    return tuple(next(t["shape"] for t in meta["tensors"] if t["name"] == name))


def _number(pattern: str, text: str, default: float | None = None) -> float:
    found = re.search(pattern, text)
    if found is None:
        if default is None:
            raise ValueError(f"cases.json: no match for {pattern!r} in {text!r}")
        return default
    return float(found.group(1))


# ---- case c: schedules -----------------------------------------------------------------------------
def respaced_schedules(meta: dict) -> list[tuple[str, int]]:
    """(key, number of steps) of every respaced DDPM schedule, e.g. ('N4', 4)."""
    return [(key, value["num_timesteps"]) for key, value in meta.get("schedules", {}).items()
            if isinstance(value, dict) and "num_timesteps" in value]


def ddim_tables(meta: dict) -> list[tuple[str, int, float]]:
    """(key, steps, eta) of every DDIM table, e.g. ('S4_eta0', 4, 0.0)."""
    tables = []
    for key in meta.get("schedules", {}).get("ddim", {}):
        steps, eta = re.fullmatch(r"S(\d+)_eta([\d.]+)", key).groups()
        tables.append((key, int(steps), float(eta)))
    return tables


# ---- cases a, b: the networks ------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderCase:
    name: str  # e.g. 'enc_32_t999'
    lr_latent: str
    t: str
    widths: tuple[int, ...]


def encoder_cases(meta: dict) -> list[EncoderCase]:
    """Case a: the time-aware encoder's outputs per width, from `a.<case>.<width>` tensors."""
    cases = {}
    for name in tensor_names(meta):
        found = re.fullmatch(r"a\.(\w+)\.(\d+)", name)
        if found:
            args = re.search(r"structcond_stage_model\((a\.\w+), (a\.\w+)\)", call_of(meta, name)).groups()
            case = cases.setdefault(found.group(1), (args, []))
            case[1].append(int(found.group(2)))
    return [EncoderCase(case, lr.removeprefix("a."), t.removeprefix("a."), tuple(widths))
            for case, ((lr, t), widths) in cases.items()]


@dataclass(frozen=True)
class UNetCase:
    name: str  # e.g. 'eps_32_t999'
    x_t: str
    t: str
    context: str
    encoder_case: str


def unet_cases(meta: dict) -> list[UNetCase]:
    """Case b: UNet + SFT outputs, from `b.eps_*` tensors and their `apply_model(...)` calls."""
    cases = []
    for name in tensor_names(meta):
        if re.fullmatch(r"b\.eps_\w+", name):
            x_t, t, context, encoder = re.search(
                r"apply_model\((b\.\w+), (a\.\w+), (b\.\w+), (?:struct_cond=)?(a\.\w+)\)", call_of(meta, name)).groups()
            cases.append(UNetCase(name.removeprefix("b."), x_t.removeprefix("b."), t.removeprefix("a."),
                                  context.removeprefix("b."), encoder.removeprefix("a.")))
    return cases


def debug_taps(meta: dict) -> dict[str, list[str]]:
    """{UNet case: official module names of its recorded forward-hook taps}, from `b.tap_<x>.<module>`,
    which record the run of case `eps_<x>`."""
    taps: dict[str, list[str]] = {}
    for name in tensor_names(meta):
        found = re.fullmatch(r"b\.tap_([^.]+)\.(.+)", name)
        if found:
            taps.setdefault(f"eps_{found.group(1)}", []).append(found.group(2))
    return taps


# ---- case d: single steps -----------------------------------------------------------------------------
def posterior_cases(meta: dict) -> list[tuple[int, int, str]]:
    """(respaced steps N, index i, 'eps' | 'v') of every `d.N<N>.i<i>.<tag>.x0`."""
    found = (re.fullmatch(r"d\.N(\d+)\.i(\d+)\.(eps|v)\.x0", name) for name in tensor_names(meta))
    return [(int(m.group(1)), int(m.group(2)), m.group(3)) for m in found if m]


# ---- case e: one canvas step ----------------------------------------------------------------------
@dataclass(frozen=True)
class Canvas:
    latent_hw: tuple[int, int]
    tile_size: int
    tile_overlap: int
    windows: tuple[tuple[int, int, int, int], ...]  # (y0, y1, x0, x1) in the official order


def canvas(meta: dict, key: str) -> Canvas:
    """`canvas_e` / `canvas_i`: the latent size, tile size, overlap and tile list of a tiled case."""
    value = meta[key]
    windows = tuple((t["y0"], t["y1"], t["x0"], t["x1"]) for t in value["tiles_in_official_order"])
    return Canvas(tuple(value["latent_hw"]), value["tile_size"], value["tile_overlap"], windows)


@dataclass(frozen=True)
class CanvasStep:
    name: str  # e.g. 'e.ddim_cfg7.S4.eta0.idx3'
    sampler: str  # 'ddpm' | 'ddim'
    steps: int
    index: int
    t: int  # the network's timestep; -1 when the fixture leaves it to the schedule
    eta: float
    guidance_scale: float
    tiles: tuple[str, ...]  # per-tile output tensors, in the official order


def canvas_steps(meta: dict) -> list[CanvasStep]:
    """Case e: one aggregation step from stored per-tile outputs (DDPM N<n>.i<i>, DDIM S<s>.eta<e>.idx<i>)."""
    steps = []
    names = tensor_names(meta)
    prefixes = sorted({re.sub(r"\.tile\d+\..*$", "", n) for n in names if re.match(r"e\..*\.tile\d+\.", n)})
    for prefix in prefixes:
        tiles = tuple(sorted(n for n in names if n.startswith(prefix + ".tile")))
        ddpm = re.fullmatch(r"e\.ddpm\.N(\d+)\.i(\d+)", prefix)
        if ddpm:
            call = call_of(meta, prefix + ".posterior_mean")
            steps.append(CanvasStep(prefix, "ddpm", int(ddpm.group(1)), int(ddpm.group(2)),
                                    int(_number(r"t_replace=tensor\(\[(\d+)\]\)", call)), 0.0, 1.0, tiles))
            continue
        ddim = re.fullmatch(r"e\.ddim\w*\.S(\d+)\.eta([\d.]+)\.idx(\d+)", prefix)
        call = call_of(meta, prefix + ".x_prev")
        t = int(_number(r"tensor\(\[(\d+)\]\), index=", call, -1))  # -1: not stated, the schedule's timestep
        steps.append(CanvasStep(prefix, "ddim", int(ddim.group(1)), int(ddim.group(3)), t, float(ddim.group(2)),
                                _number(r"unconditional_guidance_scale=([\d.]+)", call, 1.0), tiles))
    return steps


# ---- cases h, i: complete runs -----------------------------------------------------------------------
@dataclass(frozen=True)
class Chain:
    name: str  # e.g. 'h3'
    sampler: str  # 'ddpm' | 'ddim'
    steps: int
    eta: float
    guidance_scale: float
    lr_latent: str  # the condition latent tensor
    context: str
    negative_context: str | None
    x_T: str | None  # a stored x_T, or None: x_T = noise.000
    tile_size: int | None  # None: untiled
    tile_overlap: int | None
    tile_batch_size: int
    records: tuple[str, ...]  # the per-step records: 'x_out' (DDPM) or 'x_prev' and 'pred_x0' (DDIM)
    num_draws: int


def chains(meta: dict) -> list[Chain]:
    """Every complete latent run `<case>.final` whose case has a noise tape (h1..h4 in the public set)."""
    found = []
    names = set(tensor_names(meta))
    for case, tape in meta.get("noise_tapes", {}).items():
        if f"{case}.final" not in names:
            continue
        call = call_of(meta, f"{case}.final")
        ddim = "DDIMSampler" in call
        tiled = re.search(r"tile_size=(\d+), tile_overlap=(\d+), batch_size(?:_sample)?=(\d+)", call)
        x_T = re.search(r"x_T=([\w.]+)", call).group(1)
        negative = re.search(r"unconditional_conditioning=([\w.]+)", call)
        records = tuple(sorted({n.split(".", 2)[2] for n in names if n.startswith(f"{case}.step")}))
        found.append(Chain(
            case, "ddim" if ddim else "ddpm",
            int(_number(r"make_schedule\((\d+)", call) if ddim else _number(r"timesteps=(\d+)", call)),
            _number(r"ddim_eta=([\d.]+)", call, 0.0), _number(r"unconditional_guidance_scale=([\d.]+)", call, 1.0),
            re.search(r"struct_cond=([\w.]+)", call).group(1), re.search(r"\(cond=([\w.]+)", call).group(1),
            None if negative is None or negative.group(1) == "None" else negative.group(1),
            None if x_T == "None" else x_T,
            int(tiled.group(1)) if tiled else None, int(tiled.group(2)) if tiled else None,
            int(tiled.group(3)) if tiled else 1, records, tape["n_draws"]))
    return found


@dataclass(frozen=True)
class EndToEnd:
    name: str  # 'i'
    upscale: float
    steps: int
    fidelity: float
    color_fix: str
    canvas: Canvas


def end_to_end(meta: dict) -> list[EndToEnd]:
    """Case i: LR image -> SR image through the whole pipeline, settings from its tensors' calls."""
    if "i.im_sr" not in tensor_names(meta):
        return []
    upscale = shape_of(meta, "i.lr_up")[-1] / shape_of(meta, "i.lr_image")[-1]
    steps = int(_number(r"timesteps=(\d+)", call_of(meta, "i.samples")))
    fidelity = _number(r"fusion_w=([\d.]+)", call_of(meta, "i.x_decoded"))
    color_fix = "wavelet" if "wavelet" in call_of(meta, "i.im_sr") else "adain"
    return [EndToEnd("i", upscale, steps, fidelity, color_fix, canvas(meta, "canvas_i"))]


def colour_fix_sizes(meta: dict) -> list[str]:
    """Case g: the image sizes with adain / wavelet references ('64', '48x80')."""
    return [m.group(1) for m in (re.fullmatch(r"g\.([\dx]+)\.adain", n) for n in tensor_names(meta)) if m]


def decoded_fidelities(meta: dict) -> list[tuple[float, str]]:
    """Case f: (w, tensor suffix) of every CFW decode, from `f.decoded_w<a>p<b>`."""
    found = (re.fullmatch(r"f\.decoded_(w(\d+)p(\d+))", n) for n in tensor_names(meta))
    return [(float(f"{m.group(2)}.{m.group(3)}"), m.group(1)) for m in found if m]


def encoder_features(meta: dict) -> list[str]:
    """Case f: the CFW encoder feature tensors (`f.enc_fea.<k>`)."""
    return [n for n in tensor_names(meta) if re.fullmatch(r"f\.enc_fea\.\d+", n)]


def ids(item) -> str | None:
    """pytest id of a case: its name."""
    return getattr(item, "name", None)

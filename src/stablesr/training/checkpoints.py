"""Training checkpoints: everything needed to continue a run bit-identically.

A checkpoint is a folder `OUTPUT/checkpoints/step-00001500/` holding

    trainable.safetensors   the trainable weights only (encoder + SFT, or the CFW fusion layers)
    ema.safetensors         their moving average (when EMA is on)
    discriminator.safetensors   (CFW only)
    optimizer.pt            optimizer / LR-scheduler / grad-scaler states (torch.save)
    rng.pt                  Python, NumPy and torch RNG states of the main process
    rank0.pt, rank1.pt ...  per-process extras (the degradation queue when degrading on device)
    trainer_state.json      step and the config that produced it

The .pt files hold only tensors, numbers, strings and containers (plus the degradation parameter
dataclasses of the queue), and are read with `torch.load(weights_only=True)`: a tampered run
folder cannot run code on resume.

The frozen UNet / VAE are not stored: they are rebuilt from the run's initialisation source.
A folder is complete only once renamed from `step-XXXXXXXX.tmp`, so a crash mid-save never
leaves a checkpoint that `resume: latest` would pick up.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stablesr.errors import StableSRError
from stablesr.weights.folders import apply_umask

CHECKPOINTS = "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """'latest' -> the newest checkpoint of the run (None when there is none yet); a path -> itself."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise StableSRError(f"{path} is not a training checkpoint (no trainer_state.json)")
    return path


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)


def capture_rng() -> dict:
    """RNG states as tensors, numbers and lists only (loadable with weights_only=True)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), position, has_gauss, cached_gaussian],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def contiguous_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}


def write_main_files(folder: Path, *, step: int, weights: dict[str, dict[str, torch.Tensor]], states: dict,
                     config_record: dict, num_processes: int | None = None) -> None:
    """Main-process files of a checkpoint; `weights` maps a file stem to a state dict."""
    for stem, state in weights.items():
        save_file(contiguous_cpu(state), str(folder / f"{stem}.safetensors"))
    torch.save(states, folder / "optimizer.pt")
    torch.save(capture_rng(), folder / "rng.pt")
    state = {"step": step, "num_processes": num_processes, "config": config_record}
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))
    apply_umask(folder)  # safetensors writes 0600


def finalize(folder: Path) -> Path:
    """Rename `step-X.tmp` to `step-X` (replacing an older folder of the same step)."""
    final = folder.with_name(folder.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    folder.rename(final)
    return final


def run_signature(config_record: dict, num_processes: int | None) -> dict:
    """What a resumed run must share with its checkpoint, from a config record (`to_record(config)`)."""
    data, run = config_record.get("data", {}), config_record.get("run", {})
    on_device = data.get("degrade_on") == "device"
    return {"processes": num_processes, "data.batch_size": data.get("batch_size"),
            "run.gradient_accumulation_steps": run.get("gradient_accumulation_steps"),
            "EMA": None if "ema_decay" not in run else ("on" if run["ema_decay"] else "off"),
            "data.degrade_on": data.get("degrade_on"), "data.queue_size": data.get("queue_size") if on_device else None}


def check_resume(folder: Path, config_record: dict, num_processes: int, weights: dict[str, dict[str, torch.Tensor]],
                 model_weights: dict[str, dict[str, torch.Tensor]]) -> None:
    """Raise StableSRError naming every difference between checkpoint `folder` (its `weights`) and the run about
    to continue from it (its config record, process count and `model_weights`)."""
    problems = resume_problems(folder, run_signature(config_record, num_processes), weights, model_weights)
    if problems:
        raise StableSRError(f"cannot resume from {folder}: {'; '.join(problems)}")


def resume_problems(folder: Path, current: dict, weights: dict[str, dict[str, torch.Tensor]],
                    model_weights: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """Differences between checkpoint `folder` and the run about to continue from it: its signature
    (`run_signature`; settings a checkpoint predates are not compared) and the trainable weights' shapes."""
    state = json.loads((folder / "trainer_state.json").read_text())
    saved = run_signature(state.get("config", {}), state.get("num_processes"))
    problems = [f"{name} {saved[name]} in the checkpoint, {value} now" for name, value in current.items()
                if saved.get(name) is not None and value is not None and saved[name] != value]
    for stem, state_dict in model_weights.items():
        stored = weights.get(stem, {})
        if set(stored) != set(state_dict):
            problems.append(f"{stem} weights have {len(stored)} tensors in the checkpoint, {len(state_dict)} now")
            continue
        wrong = [name for name, tensor in state_dict.items() if tuple(stored[name].shape) != tuple(tensor.shape)]
        if wrong:
            name = wrong[0]
            problems.append(f"model size: {stem} {name} is {tuple(weights[stem][name].shape)} in the checkpoint, "
                            f"{tuple(state_dict[name].shape)} now ({len(wrong)} tensors differ)")
    return problems


def read_step(folder: Path) -> int:
    return int(json.loads((folder / "trainer_state.json").read_text())["step"])


def read_weights(folder: Path, stem: str) -> dict[str, torch.Tensor] | None:
    path = folder / f"{stem}.safetensors"
    return load_file(str(path)) if path.is_file() else None


def _safe_load(path: Path):
    """torch.load with weights_only=True (no code runs); the degradation queue's parameter
    dataclasses are the only classes allowed beyond tensors and plain containers."""
    from stablesr.data import bsrgan, degradations, kernels, realesrgan

    classes = [value for module in (bsrgan, degradations, kernels, realesrgan) for value in vars(module).values()
               if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__]
    try:
        with torch.serialization.safe_globals(classes):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling untrusted bytes can fail in any way
        raise StableSRError(f"cannot resume from {path}: not a checkpoint file written by stablesr, or tampered "
                            f"with ({type(error).__name__}); it was not run") from error


def read_states(folder: Path) -> dict:
    return _safe_load(folder / "optimizer.pt")


def read_rng(folder: Path) -> dict:
    return _safe_load(folder / "rng.pt")


def read_rank_state(folder: Path, rank: int) -> dict | None:
    path = folder / f"rank{rank}.pt"
    return _safe_load(path) if path.is_file() else None

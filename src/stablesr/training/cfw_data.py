"""CFW training data: LR / GT / latent triplets sampled with a trained StableSR model.

StableSR (https://arxiv.org/abs/2305.07015), section 3.3: CFW learns to pull the decoder towards
the LR input, so it trains on the latents the *diffusion model* produces (not on encodings of the
GT). `generate_cfw_data` degrades HR crops, samples each latent from x_T = q_sample(z_lr, 999)
with N respaced DDPM steps (the official 200 by default), and writes

    FOLDER/inputs/0000000.png     LR bicubic-upsampled to the GT size (8-bit, what was encoded)
    FOLDER/gts/0000000.png        the GT crop
    FOLDER/latents/0000000.safetensors   {"latent": (1, 4, S/8, S/8)} SCALED latent (x 0.18215)
    FOLDER/samples/0000000.png    (optional) the latent decoded without CFW, for inspection

Official `.npy` latents (1, 4, 64, 64), also scaled, are read as well. Item k is drawn from
(seed, k) only, so several processes can fill one folder with disjoint `start_index` ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from stablesr.data.datasets import HRFolderDataset, item_seed, read_rgb
from stablesr.data.degradations import preset_settings
from stablesr.data.ops import quantize_8bit
from stablesr.models.sft_unet import SFTUNet
from stablesr.training.previews import encode_latent, sample_sr_latent, save_png
from stablesr.weights.folders import apply_umask

LatentFormat = Literal["safetensors", "npy"]


def save_latent(latent: torch.Tensor, path: Path, *, latent_format: LatentFormat) -> None:
    """latent (1, 4, h, w) scaled -> .safetensors {"latent": ...} or .npy (official layout)."""
    if latent_format == "npy":
        np.save(path.with_suffix(".npy"), latent.float().cpu().numpy())
    else:
        save_file({"latent": latent.float().cpu().contiguous()}, str(path.with_suffix(".safetensors")))
        apply_umask(path.with_suffix(".safetensors"))  # safetensors writes 0600


def load_latent(path: Path) -> torch.Tensor:
    """A stored scaled latent as (4, h, w) float32 (.safetensors or .npy, with or without batch dim)."""
    latent = load_file(str(path))["latent"] if path.suffix == ".safetensors" else torch.from_numpy(np.load(path))
    return latent.float().reshape(-1, *latent.shape[-2:])  # (1, 4, h, w) -> (4, h, w)


@torch.no_grad()
def generate_cfw_data(pipe, hr_paths: Sequence[str | Path], output: str | Path, *, num_samples: int,
                      crop_size: int = 512, degradation: str = "stablesr", scale: int = 4, steps: int = 200,
                      batch_size: int = 1, seed: int = 0, start_index: int = 0,
                      latent_format: LatentFormat = "safetensors", save_samples: bool = False,
                      progress: bool = True) -> int:
    """Write `num_samples` triplets numbered from `start_index` with `pipe`'s model; returns the count."""
    if latent_format not in ("safetensors", "npy"):
        raise ValueError(f"latent_format must be 'safetensors' or 'npy', got {latent_format!r}")
    dataset = HRFolderDataset(hr_paths, crop_size=crop_size, seed=seed,
                              degradation=preset_settings(degradation, scale=scale))
    output = Path(output)
    for sub in ("inputs", "gts", "latents") + (("samples",) if save_samples else ()):
        (output / sub).mkdir(parents=True, exist_ok=True)
    sft_unet = SFTUNet(pipe.unet, pipe.sr_module)
    context = pipe.prompt_embeds.get("null")
    indices = list(range(start_index, start_index + num_samples))
    try:
        for first in tqdm(range(0, num_samples, batch_size), disable=not progress, desc="cfw data"):
            chunk = indices[first : first + batch_size]
            gt, lr_up = _degraded_batch(dataset, chunk)
            generator = torch.Generator().manual_seed(item_seed(seed, chunk[0]))
            _write_batch(pipe, sft_unet, context, gt, lr_up, chunk, output, steps=steps, generator=generator,
                         latent_format=latent_format, save_samples=save_samples)
    finally:
        sft_unet.remove_hooks()
    return num_samples


def _degraded_batch(dataset: HRFolderDataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(gt, lr_up), each (B, 3, S, S) in [0, 1]; item k is dataset item k mod N of epoch k // N."""
    items = []
    for index in indices:
        dataset.set_epoch(index // len(dataset))
        items.append(dataset[index % len(dataset)])
    gt = torch.stack([item["gt"] for item in items])
    lr_up = torch.stack([item["lr_up"] for item in items])
    return quantize_8bit(gt), quantize_8bit(lr_up)


def _write_batch(pipe, sft_unet: SFTUNet, context: torch.Tensor, gt: torch.Tensor, lr_up: torch.Tensor,
                 indices: list[int], output: Path, *, steps: int, generator: torch.Generator,
                 latent_format: LatentFormat, save_samples: bool) -> None:
    vae = pipe.vae
    lr_latent = encode_latent(vae, (lr_up * 2 - 1).to(vae.device, vae.dtype), generator).to(pipe.unet.dtype)
    latents = sample_sr_latent(sft_unet, lr_latent, context, steps=steps, prediction_type=pipe.prediction_type,
                               generator=generator)
    samples = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample if save_samples else None
    for k, index in enumerate(indices):
        name = f"{index:07d}"
        save_png(lr_up[k], output / "inputs" / f"{name}.png")
        save_png(gt[k], output / "gts" / f"{name}.png")
        save_latent(latents[k : k + 1], output / "latents" / name, latent_format=latent_format)
        if samples is not None:
            save_png(((samples[k] + 1) / 2).clamp(0, 1), output / "samples" / f"{name}.png")


class CFWTripletDataset(torch.utils.data.Dataset):
    """Folders of triplets -> {"lr_up": (3, S, S), "gt": (3, S, S) in [0, 1], "latent": (4, S/8, S/8) scaled}."""

    def __init__(self, folders: Sequence[str | Path]) -> None:
        self.items = []
        for folder in map(Path, folders):
            latents = sorted(p for p in (folder / "latents").glob("*") if p.suffix in (".safetensors", ".npy"))
            self.items += [(folder / "inputs" / f"{p.stem}.png", folder / "gts" / f"{p.stem}.png", p) for p in latents]
        if not self.items:
            raise ValueError(f"no latents/*.safetensors or latents/*.npy found under {list(map(str, folders))}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        lr_path, gt_path, latent_path = self.items[index]
        lr_up, gt, latent = read_rgb(lr_path), read_rgb(gt_path), load_latent(latent_path)
        factor = gt.shape[-1] // max(latent.shape[-1], 1)  # the VAE's downsampling (8 for SD, 4 for nano)
        if lr_up.shape != gt.shape or factor < 1 or tuple(gt.shape[-2:]) != (factor * latent.shape[-2],
                                                                           factor * latent.shape[-1]):
            raise ValueError(f"triplet {latent_path.stem}: LR {tuple(lr_up.shape)}, GT {tuple(gt.shape)} and "
                             f"latent {tuple(latent.shape)} do not match (GT = f x latent, f the VAE's factor)")
        return {"lr_up": lr_up, "gt": gt, "latent": latent}

"""The per-file work of `stablesr upscale`: load -> (pre-clean) -> super-resolve -> save atomically.

Model loading happens once here; `Upscaler.__call__(src, dst, seed=)` handles one file. Half
precision falls back to float32 for the rest of the run when NaN/Inf appear.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from stablesr.cli.common import resolve_device, resolve_dtype
from stablesr.configs import UpscaleSettings
from stablesr.errors import WeightsNotFoundError
from stablesr.imaging import load_image, resize_alpha, save_image_atomic, tensor_to_image

NO_MODEL_MESSAGE = (
    "no model given. StableSR needs weights: get stablesr_000117.ckpt (and vqgan_cfw_00011.ckpt for CFW) from the "
    "Hugging Face repository Iceclear/StableSR, convert once with "
    "`stablesr convert stablesr_000117.ckpt vqgan_cfw_00011.ckpt -o stablesr-sd21/`, then run "
    "`stablesr upscale INPUT -o OUT --model stablesr-sd21/` (or pass the files directly with --weights). "
    "For a baseline without diffusion weights use --method realesrgan.")


class Upscaler:
    def __init__(self, args: argparse.Namespace, settings: UpscaleSettings) -> None:
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.settings = settings
        self.method = args.method
        self.progress = not args.no_progress
        self.realesrgan = None
        if args.method == "realesrgan" or args.preclean == "realesrgan":
            self.realesrgan = self._load_realesrgan(args.realesrgan_weights)
        self.preclean = args.preclean == "realesrgan"
        self.pipe = self._load_pipeline(args) if args.method == "stablesr" else None

    def _load_realesrgan(self, path):
        from stablesr.pipelines.realesrgan import RealESRGANUpscaler

        return RealESRGANUpscaler.from_path(path, device=self.device)

    def _load_pipeline(self, args):
        from stablesr.weights.loading import build_pipeline, load_pipeline

        if args.model:
            pipe = load_pipeline(args.model, torch_dtype=self.dtype)
        elif args.weights:
            pipe = build_pipeline(args.weights, base=args.base, trust_pickle=args.trust_pickle).to(dtype=self.dtype)
        else:
            raise WeightsNotFoundError(NO_MODEL_MESSAGE)
        pipe.to(self.device)
        if args.vae_dtype == "fp32":
            pipe.vae.to(dtype=torch.float32)
        pipe.set_progress_bar_config(disable=not self.progress, leave=False)
        return pipe

    def __call__(self, src: Path, dst: Path, *, seed: int) -> None:
        loaded = load_image(src)
        lr = (loaded.to_tensor() + 1) / 2  # (1, 3, H, W) in [0, 1], 16-bit precision kept
        sr = self.super_resolve(lr, seed=seed)
        alpha = resize_alpha(loaded.alpha, (sr.shape[-1], sr.shape[-2])) if loaded.alpha is not None else None
        image = tensor_to_image(sr * 2 - 1, bit_depth=loaded.bit_depth)
        save_image_atomic(image, dst, overwrite=True, alpha=alpha, icc_profile=loaded.icc_profile,
                          bit_depth=loaded.bit_depth)

    def super_resolve(self, lr: torch.Tensor, *, seed: int) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] -> (1, 3, H*s, W*s) in [0, 1]."""
        if self.preclean:
            lr = self.realesrgan.preclean(lr.to(self.device)).cpu()
        if self.method == "realesrgan":
            return self.realesrgan.upscale(lr.to(self.device), outscale=self.settings.upscale).cpu().clamp(0, 1)
        from stablesr.pipelines.stablesr import NonFiniteOutputError

        try:
            return self._sample(lr, seed)
        except NonFiniteOutputError as error:
            if self.pipe.unet.dtype == torch.float32:
                raise
            print(f"warning: {error}; switching to float32 for the rest of this run", file=sys.stderr)
            self.pipe.to(dtype=torch.float32)
            return self._sample(lr, seed)

    def _sample(self, lr, seed) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return self.pipe(lr, self.settings, generator=generator, output_type="pt", progress=self.progress).images


def make_upscaler(args: argparse.Namespace, settings: UpscaleSettings) -> Upscaler:
    return Upscaler(args, settings)

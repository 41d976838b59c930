"""The library's upscale entry: a loaded method plus the policy every caller needs, not only the CLI.

`Upscaler` owns what sits around a pipeline call: StableSR's Real-ESRGAN pre-cleaning (appendix C
of https://arxiv.org/abs/2305.07015), the half-precision -> float32 fallback when NaN/Inf appear
(kept for the rest of the run), and the round trip of alpha, ICC profile and 16-bit precision
between the input file and the output file. The CLI only parses flags, plans files and calls
`Upscaler.load(...)` then `upscaler.upscale_file(src, dst, seed=...)`.

    up = Upscaler.load(model="stablesr-sd21/", preset="turbo")
    up.upscale_file("photo.png", "out/photo.png", seed=42)       # alpha / 16-bit kept
    sr = up.upscale_image(PIL.Image.open("photo.png"), seed=0)    # PIL in, PIL out (RGBA kept)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch

from stablesr.configs import Settings, UpscaleSettings, read_upscale_defaults, resolve_settings
from stablesr.errors import StableSRError, WeightsNotFoundError
from stablesr.image_processor import pil_to_tensor, tensor_to_pil
from stablesr.imaging import check_output_size, image_size, load_image, resize_alpha, save_image_atomic

Method = Literal["stablesr", "realesrgan", "deedsr", "ccsr"]  # the keys of stablesr.methods.SETTINGS_CLASSES

NO_MODEL_MESSAGE = (
    "no model given. StableSR needs weights: get stablesr_000117.ckpt (and vqgan_cfw_00011.ckpt for CFW) from the "
    "Hugging Face repository Iceclear/StableSR, convert once with "
    "`stablesr convert stablesr_000117.ckpt vqgan_cfw_00011.ckpt -o stablesr-sd21/`, then run "
    "`stablesr upscale INPUT -o OUT --model stablesr-sd21/` (or pass the files directly with --weights). "
    "For a baseline without diffusion weights use --method realesrgan.")


# Bytes per pixel of what a file costs outside the networks, for the memory check from its header:
# the decoded input (Pillow's 4 B RGB, a uint8 copy, the float32 tensor, 12 B) and, for Real-ESRGAN,
# the output (the uint8 picture, Pillow's 4 B copy for saving, an alpha channel), for every method.
INPUT_BYTES_PER_PIXEL = 20
OUTPUT_BYTES_PER_PIXEL = 12

METHOD_MODEL_HINTS = {"ccsr": (
    "--method ccsr needs --model FOLDER, not --weights: get real-world_ccsr.ckpt (CCSR v1) or the v2 controlnet/ "
    "and vae/ folders from the links in the csslc/CCSR README, convert once with `stablesr convert "
    "real-world_ccsr.ckpt -o ccsr-v1/ --method ccsr`, then run `stablesr upscale INPUT -o OUT --method ccsr "
    "--model ccsr-v1/`")}


class Upscaler:
    """A StableSR pipeline (or the Real-ESRGAN baseline) with pre-cleaning, fp32 fallback and file round trips.

    pipe: a `StableSRPipeline` (None for the Real-ESRGAN baseline). settings: complete settings,
    default `pipe.resolve_settings()` (the model's defaults). realesrgan: a `RealESRGANUpscaler`,
    needed for method 'realesrgan' or `preclean=True`.
    """

    def __init__(self, pipe=None, *, settings: Settings | None = None, realesrgan=None,
                 preclean: bool = False, progress: bool = True) -> None:
        if pipe is None and realesrgan is None:
            raise WeightsNotFoundError(NO_MODEL_MESSAGE)
        if preclean and realesrgan is None:
            raise WeightsNotFoundError("pre-cleaning needs Real-ESRGAN weights (realesrgan=...)")
        self.pipe = pipe
        self.settings = settings or (pipe.resolve_settings() if pipe is not None else UpscaleSettings())
        self.realesrgan = realesrgan
        self.preclean = preclean
        self.progress = progress

    @classmethod
    def load(cls, *, model: str | Path | None = None, weights: list[str | Path] | None = None,
             base: str | None = None, trust_pickle: bool = False, method: Method = "stablesr",
             preclean: bool = False, realesrgan_weights: str | Path | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, vae_fp32: bool = True,
             settings: Settings | None = None, preset: str | None = None, progress: bool = True,
             **options) -> Upscaler:
        """Load a method: `model` (a converted folder or a bundled name; default the bundled stablesr-nano) or
        official `weights` files; Real-ESRGAN when asked.

        Without `settings`, they resolve as class defaults < the folder's upscale_defaults.json <
        `preset` < `options` before any weights load, so a bad value fails at once.
        """
        if settings is not None and (preset is not None or options):
            raise StableSRError("pass either a settings object or preset / keyword options, not both")
        from stablesr.methods import settings_class
        from stablesr.weights.bundled import choose_model

        model = choose_model(model, weights=weights, method=method)
        if settings is None:
            method_settings = settings_class(method)
            model_defaults = read_upscale_defaults(model, method_settings) if model is not None else {}
            settings = resolve_settings(method_settings, model_defaults=model_defaults, preset=preset,
                                        overrides=options)
        device = torch.device(device)
        realesrgan = None
        if method == "realesrgan" or preclean:
            from stablesr.pipelines.realesrgan import RealESRGANUpscaler

            realesrgan = RealESRGANUpscaler.from_path(realesrgan_weights, device=device)
        pipe = None
        if method != "realesrgan":
            pipe = _load_pipeline(model, weights, method=method, base=base, trust_pickle=trust_pickle, dtype=dtype,
                                  resident=not getattr(settings, "stream_weights", False))
            pipe.to(device)
            if vae_fp32:  # fp32 VAE: avoids black/NaN images and slow CPU bf16 convolutions
                pipe.vae.to(dtype=torch.float32)
            pipe.set_progress_bar_config(disable=not progress, leave=False)
            settings = pipe.resolve_settings(settings)
        return cls(pipe, settings=settings, realesrgan=realesrgan, preclean=preclean, progress=progress)

    # ------------------------------------------------------------------ entries
    def upscale_file(self, src: str | Path, dst: str | Path, *, seed: int = 0, overwrite: bool = True) -> Path:
        """Read `src`, super-resolve, write `dst` atomically with its alpha, ICC profile and bit depth.
        An output over `MAX_OUTPUT_PIXELS` is refused from the file header, before anything is decoded."""
        width, height = image_size(src)
        check_output_size(height, width, self.settings.upscale)
        if self.pipe is None:
            return self._realesrgan_file(src, dst, (height, width), overwrite=overwrite)
        streams = hasattr(self.pipe, "upscale_to_array")  # the output streams into an integer array
        if hasattr(self.pipe, "plan_memory") and hasattr(self.settings, "max_memory"):  # refuse before decoding
            out_h, out_w = check_output_size(height, width, self.settings.upscale)
            self.pipe.plan_memory(height, width, self.settings, streaming=streams,
                                  input_bytes=INPUT_BYTES_PER_PIXEL * height * width
                                  + OUTPUT_BYTES_PER_PIXEL * out_h * out_w)
        loaded = load_image(src)
        lr = loaded.to_unit_tensor()  # full (16-bit) precision kept
        if streams:
            array = self.upscale_tensor(lr, seed=seed, bit_depth=loaded.bit_depth)
            image = array if loaded.bit_depth == 16 else PIL.Image.fromarray(array, mode="RGB")
        else:
            image = tensor_to_pil(self.upscale_tensor(lr, seed=seed), bit_depth=loaded.bit_depth)
        del lr
        out_size = image.size if isinstance(image, PIL.Image.Image) else (image.shape[1], image.shape[0])
        alpha = resize_alpha(loaded.alpha, out_size) if loaded.alpha is not None else None
        return save_image_atomic(image, dst, overwrite=overwrite, alpha=alpha, icc_profile=loaded.icc_profile,
                                 bit_depth=loaded.bit_depth)

    def _realesrgan_file(self, src, dst, size: tuple[int, int], *, overwrite: bool) -> Path:
        """Real-ESRGAN file to file: the tile size comes from the memory budget (checked from the header,
        before decoding) and the x4 output streams into a uint8 (uint16 for 16-bit inputs) picture."""
        from stablesr.tiling.budget import Budget

        height, width = size
        check_output_size(height, width, max(self.settings.upscale, 4.0))  # the x4 network output is made first
        out_pixels = round(height * self.settings.upscale) * round(width * self.settings.upscale)
        fixed = INPUT_BYTES_PER_PIXEL * height * width + OUTPUT_BYTES_PER_PIXEL * out_pixels  # no float x4 image
        budget = Budget.resolve(self.settings.max_memory, self.realesrgan.device)
        tile_size = self.realesrgan.choose_tile_size(height, width, budget, fixed_bytes=fixed)
        loaded = load_image(src)
        if loaded.rgb_float is not None:
            lr = loaded.to_unit_tensor()  # 16-bit sources keep their precision
        else:
            lr = torch.from_numpy(np.array(loaded.rgb)).permute(2, 0, 1)[None]  # (H, W, 3) uint8 -> (1, 3, H, W)
        array = self.realesrgan.upscale_to_array(lr, outscale=self.settings.upscale, bit_depth=loaded.bit_depth,
                                                 progress=self.progress, tile_size=tile_size)
        del lr
        alpha = resize_alpha(loaded.alpha, (array.shape[1], array.shape[0])) if loaded.alpha is not None else None
        image = array if loaded.bit_depth == 16 else PIL.Image.fromarray(array, mode="RGB")
        return save_image_atomic(image, dst, overwrite=overwrite, alpha=alpha, icc_profile=loaded.icc_profile,
                                 bit_depth=loaded.bit_depth)

    def upscale_image(self, image: PIL.Image.Image, *, seed: int = 0) -> PIL.Image.Image:
        """PIL in, PIL out: RGB stays RGB, an alpha channel is upscaled and re-attached (RGBA)."""
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        rgba = image.convert("RGBA") if has_alpha else None
        sr = self.upscale_tensor(pil_to_tensor(image.convert("RGB")), seed=seed)
        out = tensor_to_pil(sr)
        if rgba is not None:
            out.putalpha(resize_alpha(rgba.getchannel("A"), out.size))
        return out

    def upscale_tensor(self, lr: torch.Tensor, *, seed: int = 0, bit_depth: int | None = None
                       ) -> torch.Tensor | np.ndarray:
        """(1, 3, H, W) in [0, 1] -> (1, 3, H*s, W*s) in [0, 1] on the CPU: pre-clean, then the method. With a
        `bit_depth` (8 or 16, StableSR), the (H*s, W*s, 3) integer array instead, streamed by the pipeline's
        `upscale_to_array` so that no output-sized float image is held."""
        if self.preclean:
            lr = self.realesrgan.preclean(lr.to(self.realesrgan.device)).cpu()
        if self.pipe is None:
            sr = self.realesrgan.upscale(lr.to(self.realesrgan.device), outscale=self.settings.upscale)
            return sr.cpu().clamp(0, 1)
        from stablesr.pipelines.stablesr import NonFiniteOutputError

        try:
            return self._sample(lr, seed, bit_depth)
        except NonFiniteOutputError as error:
            if self.pipe.unet.dtype == torch.float32:
                raise
            print(f"warning: {error}; switching to float32 for the rest of this run", file=sys.stderr)
            self.pipe.to(dtype=torch.float32)
            return self._sample(lr, seed, bit_depth)

    def _sample(self, lr: torch.Tensor, seed: int, bit_depth: int | None = None) -> torch.Tensor | np.ndarray:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        if bit_depth is not None:
            return self.pipe.upscale_to_array(lr, self.settings, generator=generator, bit_depth=bit_depth,
                                              progress=self.progress)
        return self.pipe(lr, self.settings, generator=generator, output_type="pt", progress=self.progress).images


def _load_pipeline(model, weights, *, method, base, trust_pickle, dtype, resident: bool = True):
    from stablesr.weights.loading import build_pipeline, load_pipeline

    if method != "stablesr":  # a model folder written by the method's trainer (no official weights to map)
        from stablesr.methods import pipeline_class
        from stablesr.weights.bundled import resolve_model

        if model is None or weights:
            raise WeightsNotFoundError(METHOD_MODEL_HINTS.get(method, f"--method {method} needs --model FOLDER (a "
                                                              f"folder written by `stablesr train {method}`), "
                                                              "not --weights"))
        folder = resolve_model(model)
        if not (folder / "model_index.json").is_file():
            raise WeightsNotFoundError(f"model folder {folder} not found (no model_index.json there)")
        return pipeline_class(method).from_pretrained(folder, dtype=dtype, local_files_only=True, resident=resident)
    if model is not None:
        return load_pipeline(model, torch_dtype=dtype, resident=resident)
    if weights:
        return build_pipeline(list(weights), base=base, trust_pickle=trust_pickle).to(dtype=dtype)
    raise WeightsNotFoundError(NO_MODEL_MESSAGE)

"""What every method's pipeline shares: its settings class, per-model defaults, and the one settings merge.

A method (StableSR, later CCSR, DeeDSR) subclasses `SRPipeline`, names its frozen settings class in
`settings_class`, and fills in model-dependent values in `complete_settings`. A pipeline folder may
hold `upscale_defaults.json` (a subset of the settings fields); `from_pretrained` keeps it as
`pipe.upscale_defaults` and `save_pretrained` writes it back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from stablesr.color_fix import WAVELET_LEVELS, apply_color_fix
from stablesr.configs import UPSCALE_DEFAULTS_FILE, Settings, read_upscale_defaults, resolve_settings
from stablesr.errors import StableSRError
from stablesr.image_processor import tensor_to_pil, to_model_range
from stablesr.imaging import LazyUpsampled, Preprocessed, postprocess_sr, preprocess_lr
from stablesr.tiling.canvas import cropped_sink, quantized_sink
from stablesr.tiling.rows import RowBandStream, map_row_bands

WAVELET_REACH = 2**WAVELET_LEVELS  # rows of context the wavelet colour fix needs (its blurs reach 1 + 2 + ... + 16)
# Rows per band of the wavelet colour fix: about COLOR_FIX_BAND_PIXELS per band, 32 to 256 rows.
COLOR_FIX_BAND_PIXELS = 2**19
COLOR_FIX_LIVE_COPIES = 10  # band-sized float32 temporaries of the wavelet fix (two decompositions)


class NonFiniteOutputError(StableSRError):
    """NaN/Inf appeared (typically fp16 overflow); half precision falls back to float32."""


def color_fix_band_rows(width: int) -> int:
    """Rows per band of the wavelet colour fix for an image `width` px wide (band memory ~ constant)."""
    return max(32, min(256, COLOR_FIX_BAND_PIXELS // max(width, 1)))


def check_finite(image: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    """NonFiniteOutputError naming `what` (e.g. 'the decoded image') when image holds NaN/Inf."""
    if not torch.isfinite(image).all():
        hint = "" if dtype == torch.float32 else "; retry in float32"
        raise NonFiniteOutputError(f"{what} has NaN/Inf values in {dtype}{hint}")


def _wavelet_fix_float(decoded: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
    return apply_color_fix(decoded.float(), lr_up.float(), method="wavelet")


def color_fix_banded(decoded: torch.Tensor, lr_up: torch.Tensor, method) -> torch.Tensor:
    """apply_color_fix; the wavelet fix (a local operator) runs in bands of rows, so its temporaries are
    band-sized (equal to the whole-image call up to float rounding)."""
    if method != "wavelet":
        return apply_color_fix(decoded, lr_up, method=method)
    return map_row_bands(_wavelet_fix_float, decoded, lr_up, margin=WAVELET_REACH,
                         band_rows=color_fix_band_rows(decoded.shape[-1]))


class SRPipeline(DiffusionPipeline):
    """A super-resolution pipeline with one frozen settings class (see the module docstring)."""

    settings_class: ClassVar[type[Settings]]
    upscale_defaults: dict[str, Any] = {}  # this model's `upscale_defaults.json` (set by from_pretrained)
    cpu_kernels: bool = True  # on CPU, run linear layers on oneDNN (`stablesr.models.cpu_kernels`); False: torch's own

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' loader (offline: local files only; a bundled model's name such as "stablesr-nano" is its
        folder inside the package), plus the folder's `upscale_defaults.json` as `pipe.upscale_defaults`.

        `resident` (default True): every memory-mapped weight page is read now, so that a memory budget
        counts the weights; False hands them all back instead (for `stream_weights`: the process then holds
        what a layer reads, when it reads it)."""
        from stablesr.weights.bundled import resolve_model
        from stablesr.weights.loading import make_resident

        resident = kwargs.pop("resident", True)
        folder = resolve_model(str(pretrained_model_name_or_path))
        kwargs.setdefault("local_files_only", True)
        pipe = super().from_pretrained(folder, *args, **kwargs)
        pipe.upscale_defaults = read_upscale_defaults(folder, cls.settings_class) if folder.is_dir() else {}
        if resident:
            make_resident(pipe.components.values())  # so the memory budget sees memory-mapped weights
        else:
            pipe.drop_mapped_weights()
        return pipe

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' writer, plus `upscale_defaults.json` when this model has defaults of its own."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.upscale_defaults:
            (Path(save_directory) / UPSCALE_DEFAULTS_FILE).write_text(json.dumps(self.upscale_defaults, indent=2))

    def resolve_settings(self, settings: Settings | None = None, *, preset: str | None = None, **options) -> Settings:
        """The settings of a call: `settings` as given, or class defaults < this model's `upscale_defaults`
        < `preset` < `options` (field names); then `complete_settings` for this model."""
        if settings is None:
            settings = resolve_settings(self.settings_class, model_defaults=self.upscale_defaults, preset=preset,
                                        overrides=options)
        elif options or preset is not None:
            raise StableSRError("pass either a settings object or keyword options (and preset), not both")
        return self.complete_settings(settings)

    def begin_call(self, image, settings: Settings | None, *, preset: str | None, options: dict[str, Any],
                   output_type: str | None, generator=None, noise_sampler=None):
        """Step 1 of every method's `__call__`: (settings merged and checked once, the output kind, the input
        as a list of (1, 3, H, W) tensors in [0, 1], the noise sampler that supplies every random draw)."""
        from stablesr.image_processor import input_kind, preprocess_images
        from stablesr.sampling.samplers import default_noise_sampler

        settings = self.resolve_settings(settings, preset=preset, **options)
        self.apply_cpu_kernels()
        output_type = output_type or input_kind(image)
        if output_type not in ("pil", "pt", "np"):
            raise StableSRError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        return settings, output_type, preprocess_images(image), noise_sampler or default_noise_sampler(generator)

    def apply_cpu_kernels(self) -> int:
        """Swap the linear layers of every model component to `ConvLinear` (or back, when `cpu_kernels` is
        False); returns how many were swapped. ConvLinear is nn.Linear off the CPU, so a pipeline moved to
        a GPU later is unaffected. Equal to torch's linear within float rounding, about 2x faster where the
        BLAS is slow (docs/performance.md)."""
        from stablesr.models.cpu_kernels import use_conv_linears

        enable = bool(self.cpu_kernels) and self.device.type == "cpu"
        return sum(use_conv_linears(component, enable) for component in self.components.values()
                   if isinstance(component, torch.nn.Module))

    def upscale_each(self, lr_images: list, upscale_one: Callable, *, hooked=None, steps: int = 0,
                     stream_weights: bool = False) -> list:
        """`upscale_one(lr)` for every image; then the hooks of `hooked` (a UNet wrapper) are removed, even on
        an error, and diffusers' offload hooks are reset. With the CPU kernels on and at least
        `PACK_MIN_STEPS` denoising `steps`, the large weights of the denoiser (every component but the VAE
        and the text encoder) stay packed for oneDNN meanwhile (`cpu_kernels.packed_weights`). With
        `stream_weights`, nothing is packed and every component's memory-mapped weights are handed back
        after each layer instead (`stablesr.weights.pages.streamed_weights`)."""
        from stablesr.models.cpu_kernels import PACK_MIN_STEPS, packed_weights
        from stablesr.weights.pages import streamed_weights

        modules = [component for component in self.components.values() if isinstance(component, torch.nn.Module)]
        denoisers = []
        if self.cpu_kernels and self.device.type == "cpu" and steps >= PACK_MIN_STEPS and not stream_weights:
            denoisers = [component for name, component in self.components.items()
                         if isinstance(component, torch.nn.Module) and name not in ("vae", "text_encoder")]
        try:
            with packed_weights(denoisers), streamed_weights(modules if stream_weights else []) as streamed:
                if stream_weights and not streamed.layers:
                    warnings.warn("stream_weights: no weights to stream; only weights memory-mapped from a model "
                                  "folder's safetensors on the CPU can be (not weights converted to another dtype, "
                                  "on a GPU, or built in memory), so they stay resident", stacklevel=3)
                return [upscale_one(lr) for lr in lr_images]
        finally:
            if hooked is not None:
                hooked.remove_hooks()
            self.maybe_free_model_hooks()

    def drop_mapped_weights(self, *, keep: tuple[str, ...] = ()) -> int:
        """Hand the memory-mapped weight pages of every component but those named in `keep` back to the page
        cache now (bytes advised; they are read back when used): before planning a streamed run, and on a
        CPU before every decode, which needs none of the denoiser's weights."""
        from stablesr.weights.pages import drop_mapped_weights

        return drop_mapped_weights(component for name, component in self.components.items()
                                   if isinstance(component, torch.nn.Module) and name not in keep)

    def complete_settings(self, settings: Settings) -> Settings:
        """Fill in and check the values that depend on this model (override in a method)."""
        return settings

    # ------------------------------------------------------------------ one image into an integer array
    def run_images(self, lr_images: list, settings: Settings, *, noise_sampler, progress: bool, callback,
                   bit_depth: int | None = None) -> list:
        """Steps 2-6 of the method for every (1, 3, H, W) image: float (1, 3, H', W') in [0, 1], or with a
        `bit_depth` (H', W', 3) integer arrays (see `finish_image`). Each method implements it."""
        raise NotImplementedError

    @torch.no_grad()
    def upscale_to_array(self, image, settings: Settings | None = None, *, bit_depth: int = 8,
                         preset: str | None = None, generator: torch.Generator | None = None, noise_sampler=None,
                         progress: bool = True, callback=None, **options) -> np.ndarray:
        """Super-resolve ONE image into an (H', W', 3) uint8 (bit_depth 8) or uint16 (16) array: the integers
        `tensor_to_pil(self(image, output_type="pt").images, bit_depth=...)` gives, with less memory.

        The decoded rows stream through the wavelet (or no) colour fix and the crop straight into the
        integer array, so no output-sized float image exists: what is held is the upsampled input, the
        output array and one band of VAE tiles. The AdaIN colour fix (global statistics) and inputs
        brought up to `min_size` (resized at the end) take the whole-image path, then quantise.
        """
        if bit_depth not in (8, 16):
            raise StableSRError(f"bit_depth must be 8 or 16, got {bit_depth}")
        settings, _, lr_images, noise_sampler = self.begin_call(
            image, settings, preset=preset, options=options, output_type=None, generator=generator,
            noise_sampler=noise_sampler)
        if len(lr_images) != 1:
            raise StableSRError(f"upscale_to_array takes one image, got {len(lr_images)}")
        return self.run_images(lr_images, settings, noise_sampler=noise_sampler, progress=progress,
                               callback=callback, bit_depth=bit_depth)[0]

    @contextmanager
    def _progress(self, steps: int, progress: bool, callback):
        """A step callback that advances a progress bar and calls the user's `callback`."""
        bar_config = {**getattr(self, "_progress_bar_config", {}), "desc": "sampling", "leave": False}
        bar_config["disable"] = bar_config.get("disable", False) or not progress
        with tqdm(total=steps, **bar_config) as bar:
            def on_step(i, t, x, x0_pred):
                bar.update()
                if callback is not None:
                    callback(i, t, x, x0_pred)

            yield on_step

    def _bars_disabled(self) -> bool:
        return getattr(self, "_progress_bar_config", {}).get("disable", False)

    def upsample_input(self, lr: torch.Tensor, settings: Settings, *, dtype: torch.dtype
                       ) -> tuple[Preprocessed, torch.Tensor | LazyUpsampled]:
        """Step 3 of every method: lr (1, 3, H, W) in [0, 1] -> to [-1, 1], bicubic upscale (short side >=
        min_size), pad to a multiple of the VAE scale: (the `Preprocessed`, lr_up on the device in `dtype`).
        An image larger than one VAE window stays a `LazyUpsampled` (its tiles, bands and crops computed
        on demand, bitwise equal) so that no output-sized float image exists; a smaller one is a tensor."""
        pre = preprocess_lr(to_model_range(lr), upscale=settings.upscale, min_size=settings.min_size,
                            multiple=self.vae_scale_factor, lazy=True)
        lr_up = pre.image.to(self.device, dtype)  # (1, 3, H, W)
        if isinstance(lr_up, LazyUpsampled) and max(lr_up.shape[-2:]) <= settings.vae_encode_tiles[0]:
            lr_up = lr_up.materialize()
        return pre, lr_up

    @staticmethod
    def can_stream(settings: Settings, pre: Preprocessed | None = None) -> bool:
        """Whether `upscale_to_array` streams the decode: a local colour fix (wavelet or none; AdaIN needs the
        whole image's statistics) and no final resize (the input was not brought up to min_size)."""
        return settings.color_fix != "adain" and (pre is None or tuple(pre.crop[2:]) == tuple(pre.output_size))

    def finish_image(self, decode: Callable, lr_up: torch.Tensor, pre: Preprocessed, settings: Settings, *,
                     bit_depth: int | None = None) -> torch.Tensor | np.ndarray:
        """The last step of every method: decode(sink=None) (a tiled VAE decode, e.g. `decode_tiled` with its
        arguments bound) -> colour fix against lr_up -> undo the padding -> [0, 1] on the CPU, or with a
        `bit_depth` the integer array, streamed without an output-sized float image where `can_stream`.

        On a CPU the heap's free pages go back to the OS first: with the tuned allocator (no trimming) the
        denoiser's freed working set stayed resident and added to the decode's peak, which the budget
        planned from the memory held after loading (a full-size 1024 -> 4096 run under --max-memory 8GB:
        4.9 GB after loading, 5.6 GB held through the decode, peak 8.0 GB against 7.5 GB planned).
        The denoiser's memory-mapped weights go back to the page cache too (the next image reads them
        back): a full-size 128 -> 512 upscale peaked in the decode, at 5.9 GB with them held."""
        if self.device.type == "cpu":
            from stablesr.models.cpu_kernels import release_free_memory

            release_free_memory()
            self.drop_mapped_weights(keep=("vae",))
        dtype = self.vae.dtype
        if bit_depth is not None and self.can_stream(settings, pre):
            return self._decode_to_array(decode, lr_up, pre, settings.color_fix, bit_depth)
        decoded = color_fix_banded(decode().float(), lr_up.float(), settings.color_fix)
        check_finite(decoded, "the decoded image", dtype)
        sr = postprocess_sr(decoded, pre)  # (1, 3, H_out, W_out) in [-1, 1]
        del decoded
        unit = sr.add_(1).div_(2).clamp_(0, 1).cpu()  # to_unit_range, in place
        return unit if bit_depth is None else np.asarray(tensor_to_pil(unit, bit_depth=bit_depth))

    def _decode_to_array(self, decode: Callable, lr_up: torch.Tensor, pre: Preprocessed, color_fix: str,
                         bit_depth: int) -> np.ndarray:
        """decode(sink=...) rows -> finite check -> colour fix by bands -> crop -> integers, with no
        image-sized float: the rows and their quantisation are those of the whole-image path."""
        top, left, height, width = pre.crop
        output = np.empty((height, width, 3), dtype=np.uint8 if bit_depth == 8 else np.uint16)
        sink = cropped_sink(quantized_sink(output, levels=255 if bit_depth == 8 else 65535, model_range=True),
                            rows=(top, height), cols=(left, width))
        stream = None
        if color_fix == "wavelet":
            stream = RowBandStream(_wavelet_fix_float, lr_up.shape[-2], margin=WAVELET_REACH,
                                   band_rows=color_fix_band_rows(lr_up.shape[-1]), sink=sink, context=(lr_up,))
        dtype = self.vae.dtype

        def checked(y0: int, rows: torch.Tensor) -> None:
            check_finite(rows, "the decoded image", dtype)
            (stream or sink)(y0, rows.float())

        decode(sink=checked)
        if stream is not None:
            stream.finish()
        return output

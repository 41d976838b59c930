"""StableSR as a diffusers pipeline (Wang et al., IJCV 2024, https://arxiv.org/abs/2305.07015).

A frozen Stable Diffusion UNet is steered by a time-aware encoder through SFT layers
(`SFTUNet`), sampled with aggregation (tiled) sampling for any image size, decoded by the CFW
autoencoder with fidelity weight w, and colour-corrected against the upsampled input.

Paper -> code: z_lr -> `lr_latent`; E(z_lr, t) -> `sr_module.encoder`; SFT -> `sr_module.sft_layers`;
w -> `fidelity`; Gaussian aggregation -> `TiledDenoiser`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.utils import BaseOutput

from stablesr.configs import DEFAULT_VAE_TILE_SIZE, UpscaleSettings
from stablesr.errors import StableSRError
from stablesr.image_processor import (
    ImageInput,
    OutputType,
    postprocess_images,
)
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.models.sft_unet import SFTUNet, StableSRModule
from stablesr.models.text_encoder import OFFICIAL_NEGATIVE_PROMPT, PromptEmbeddings, known_prompt_tokens
from stablesr.pipelines.base import (  # noqa: F401 (NonFiniteOutputError, WAVELET_REACH: re-exported)
    COLOR_FIX_LIVE_COPIES,
    WAVELET_REACH,
    NonFiniteOutputError,
    SRPipeline,
    check_finite,
    color_fix_band_rows,
)
from stablesr.sampling.chain import sample_chain
from stablesr.sampling.schedules import betas_scaled_linear
from stablesr.tiling.aggregation import TiledDenoiser
from stablesr.tiling.budget import (
    Budget,
    MemoryBudgetError,
    band_bytes,
    choose_tile,
    decoder_bytes_per_pixel,
    encoder_bytes_per_pixel,
    format_bytes,
    tile_candidates,
)
from stablesr.tiling.vae import decode_tiled, encode_tiled
from stablesr.weights.pages import mapped_bytes

NoiseSampler = Callable[[torch.Tensor], torch.Tensor]

# Image-sized bytes per pixel of the upsampled image at the decode: lr_up, the decoded and the
# colour-fixed float32 images (12 B each), the cropped [0, 1] output and the latents. Counted from
# the code, not measured yet: check it against an end-to-end peak before relying on it.
IMAGE_BYTES_PER_PIXEL = 48
# The same when the decode streams into an integer array (`upscale_to_array`): lr_up (12 B in float32)
# and, while it is made, its unpadded copy (12 B); the uint8/uint16 output (3-6 B) comes after that copy.
STREAMING_BYTES_PER_PIXEL = 24
# Streaming at a power-of-two scale, where lr_up is a `LazyUpsampled` (computed crop by crop): only the
# latents (4 channels per 8x8 pixels, a few copies) grow with the image; the output is counted by the caller.
LAZY_STREAMING_BYTES_PER_PIXEL = 2


@dataclass
class StableSROutput(BaseOutput):
    """images: list of PIL images, or a (B, 3, H, W) tensor / (B, H, W, 3) array in [0, 1]."""

    images: list[PIL.Image.Image] | torch.Tensor | np.ndarray


def make_guided_tile_fn(sft_unet: SFTUNet, cond_embeds: torch.Tensor, uncond_embeds: torch.Tensor | None,
                        guidance_scale: float):
    """tile_fn(x_tiles, lr_tiles, t) -> model output, with classifier-free guidance when uncond_embeds is set.

    out = out_uncond + s * (out_cond - out_uncond); the CFG batch is [uncond, cond] (the official
    order) and both halves share the LR tiles, so the time-aware encoder and the SFT conditions run
    once per tile (as if the tiles were repeated, which the official code does).
    """

    def tile_fn(x_tiles: torch.Tensor, lr_tiles: torch.Tensor, t: int) -> torch.Tensor:
        n = x_tiles.shape[0]
        if uncond_embeds is None:
            timesteps = torch.full((n,), t, dtype=torch.long, device=x_tiles.device)
            return sft_unet(x_tiles, timesteps, cond_embeds.expand(n, -1, -1), lr_tiles)
        timesteps = torch.full((2 * n,), t, dtype=torch.long, device=x_tiles.device)
        context = torch.cat([uncond_embeds.expand(n, -1, -1), cond_embeds.expand(n, -1, -1)])
        out = sft_unet(torch.cat([x_tiles, x_tiles]), timesteps, context, lr_tiles)
        out_uncond, out_cond = out.chunk(2)  # (2n, C, h, w) -> 2 x (n, C, h, w)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return tile_fn


class StableSRPipeline(SRPipeline):
    """Real-world super-resolution with a frozen SD prior.

    Components: `unet` (SD 2.x `UNet2DConditionModel`, frozen), `sr_module` (time-aware encoder +
    22 SFT layers), `vae` (`CFWAutoencoderKL`), `scheduler` (a `DDPMScheduler` that records the
    training schedule and the prediction type), `prompt_embeds` (cached '' embedding and friends),
    optional `text_encoder` + `tokenizer` for custom prompts.
    """

    settings_class = UpscaleSettings
    model_cpu_offload_seq = "sr_module->unet->vae"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, unet: UNet2DConditionModel, sr_module: StableSRModule, vae: CFWAutoencoderKL,
                 scheduler: DDPMScheduler, prompt_embeds: PromptEmbeddings, text_encoder=None, tokenizer=None,
                 cfw_trained: bool = True) -> None:
        super().__init__()
        self.register_modules(unet=unet, sr_module=sr_module, vae=vae, scheduler=scheduler,
                              prompt_embeds=prompt_embeds, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(cfw_trained=cfw_trained)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    # ---------------------------------------------------------------- prompts
    def encode_prompt(self, text: str) -> torch.Tensor:
        """(1, 77, D) text embedding: the cache first, else the text encoder (+ tokenizer)."""
        cached = self.prompt_embeds.find(text)
        if cached is not None:
            return cached
        if self.text_encoder is None or (known_prompt_tokens(text) is None and self.tokenizer is None):
            raise StableSRError(
                f"no cached embedding for the prompt {text!r} and no text encoder/tokenizer in this model; "
                "re-run `stablesr convert` with --text-encoder SD21_DIFFUSERS_FOLDER (which has text_encoder/ and "
                "tokenizer/) to enable custom prompts")
        device = self.text_encoder.device
        if self.tokenizer is None:
            tokens = known_prompt_tokens(text, self.prompt_embeds.config.context_length)
        else:
            tokens = self.tokenizer(text, padding="max_length", max_length=self.prompt_embeds.config.context_length,
                                    truncation=True, return_tensors="pt").input_ids
        hidden = self.text_encoder(tokens.to(device))
        return hidden if torch.is_tensor(hidden) else hidden.last_hidden_state

    # ---------------------------------------------------------------- settings
    def complete_settings(self, settings: UpscaleSettings) -> UpscaleSettings:
        """Fill in fidelity (0.5 with trained CFW weights, else 0) and min_size (one latent tile), and
        check the values that depend on this model."""
        if settings.num_inference_steps > self.scheduler.config.num_train_timesteps:
            settings.fail("num_inference_steps", f"must be <= {self.scheduler.config.num_train_timesteps}, "
                                                 "the model's training timesteps")
        if settings.fidelity is not None and settings.fidelity > 0 and not self.config.cfw_trained:
            raise StableSRError("this model has no trained CFW fusion weights, so fidelity must be 0; "
                                "pass vqgan_cfw_00011.ckpt to `stablesr convert` as another input to enable it")
        fidelity = settings.fidelity if settings.fidelity is not None else 0.5 if self.config.cfw_trained else 0.0
        min_size = settings.min_size if settings.min_size is not None else settings.tile_size * self.vae_scale_factor
        return replace(settings, fidelity=fidelity, min_size=min_size)

    # ---------------------------------------------------------------- main entry
    @torch.no_grad()
    def __call__(self, image: ImageInput,
                 settings: UpscaleSettings | None = None, *, preset: str | None = None,
                 generator: torch.Generator | None = None, noise_sampler: NoiseSampler | None = None,
                 output_type: OutputType | None = None, progress: bool = True,
                 callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                 **options) -> StableSROutput:
        """Super-resolve `image`.

        image: PIL image(s), a (B, 3, H, W) tensor or a (B, H, W, 3) array in [0, 1]. Returns the
        same kind (or `output_type` 'pil' / 'pt' / 'np') in [0, 1], of size (round-down H * upscale,
        W * upscale). `settings` (an `UpscaleSettings`) or keyword `options` (its field names, e.g.
        `num_inference_steps=4`) choose the knobs; see `resolve_settings` for how they merge with the
        model's defaults. `noise_sampler(like) -> noise` (advanced) supplies every random draw in
        order: the posterior sample, x_T, then one per step.
        """
        # 1. Check inputs and settle the settings (once)
        settings, output_type, lr_images, noise_sampler = self.begin_call(
            image, settings, preset=preset, options=options, output_type=output_type, generator=generator,
            noise_sampler=noise_sampler)  # lr_images: list of (1, 3, H, W) in [0, 1]
        outputs = self.run_images(lr_images, settings, noise_sampler=noise_sampler, progress=progress,
                                  callback=callback)

        # 7. Convert the output
        return StableSROutput(images=postprocess_images(outputs, output_type))

    def run_images(self, lr_images: list, settings: UpscaleSettings, *, noise_sampler: NoiseSampler,
                   progress: bool, callback, bit_depth: int | None = None) -> list:
        """Steps 2-6 for every image (see `SRPipeline.run_images`)."""
        sft_unet, tile_fn = self._denoiser(settings)
        return self.upscale_each(lr_images, lambda lr: self._upscale_one(
            lr, settings, tile_fn, noise_sampler=noise_sampler, progress=progress, callback=callback,
            bit_depth=bit_depth), hooked=sft_unet, steps=settings.num_inference_steps,
            stream_weights=settings.stream_weights)

    def _denoiser(self, settings: UpscaleSettings) -> tuple[SFTUNet, Callable]:
        """Step 2: the prompt embeddings (cond = prompt; uncond = negative prompt, only with guidance) and the
        SFT-hooked UNet with its guided tile function."""
        cond_embeds = self.encode_prompt(settings.prompt).to(self.device, self.unet.dtype)
        uncond_embeds = None
        if settings.guidance_scale != 1.0:
            negative = OFFICIAL_NEGATIVE_PROMPT if settings.negative_prompt is None else settings.negative_prompt
            uncond_embeds = self.encode_prompt(negative).to(self.device, self.unet.dtype)
        sft_unet = SFTUNet(self.unet, self.sr_module)
        return sft_unet, make_guided_tile_fn(sft_unet, cond_embeds, uncond_embeds, settings.guidance_scale)

    def _upscale_one(self, lr: torch.Tensor, settings: UpscaleSettings, tile_fn, *, noise_sampler: NoiseSampler,
                     progress: bool, callback, bit_depth: int | None = None) -> torch.Tensor | np.ndarray:
        """Steps 3-6 for one (1, 3, H, W) image in [0, 1] -> (1, 3, H*s, W*s) in [0, 1] on the CPU, or with a
        `bit_depth` the (H*s, W*s, 3) integer array (streamed where it can be; see `upscale_to_array`)."""
        vae_dtype = self.vae.dtype
        scaling = self.vae.config.scaling_factor
        tile = self.plan_memory(*lr.shape[-2:], settings, streaming=bit_depth is not None)
        settings = replace(settings, vae_tile_size=tile)

        # 3. Preprocess: to [-1, 1], bicubic upscale (short side >= min_size), pad to a multiple of 8
        pre, lr_up = self.upsample_input(lr, settings, dtype=vae_dtype)  # lr_up (1, 3, H, W)

        # 4. Encode the LR image: z_lr = scaling * sample(q(z | lr_up)), tiled for bounded memory
        # One window each way: the CFW features come from this encoder pass, not a second one at the decode
        encode_tile, encode_overlap = settings.vae_encode_tiles
        decode_tile, decode_overlap = settings.vae_decode_tiles(self.vae_scale_factor)
        enc_feats = None
        if settings.fidelity > 0 and max(lr_up.shape[-2:]) <= min(encode_tile, decode_tile * self.vae_scale_factor):
            posterior, enc_feats = self.vae.encode_with_features(lr_up)  # bit-identical to vae.encode
        else:
            posterior = encode_tiled(self.vae, lr_up, tile_size=encode_tile, tile_overlap=encode_overlap)
        lr_latent = (posterior.mean + posterior.std * noise_sampler(posterior.mean)) * scaling
        lr_latent = lr_latent.to(self.unet.dtype)  # (1, 4, H/8, W/8)

        # 5. Sample: x_T from the noised LR latent, then the sampler over aggregated latent tiles
        model = TiledDenoiser(tile_fn, lr_latent, tile_size=settings.tile_size, tile_overlap=settings.tile_overlap,
                              batch_size=settings.tile_batch_size, faithful=settings.faithful)
        betas = betas_scaled_linear(self.scheduler.config.num_train_timesteps, self.scheduler.config.beta_start,
                                    self.scheduler.config.beta_end)
        with self._progress(settings.num_inference_steps, progress, callback) as on_step:
            samples = sample_chain(model, lr_latent, betas, steps=settings.num_inference_steps,
                                   prediction_type=self.prediction_type, noise_sampler=noise_sampler,
                                   sampler=settings.sampler, eta=settings.eta, start=settings.start,
                                   faithful=settings.faithful, callback=on_step)
        check_finite(samples, "the sampled latent", self.unet.dtype)

        # 6. Decode with CFW (encoder features of lr_up per tile), colour-fix, undo the padding
        z = samples.to(vae_dtype) / scaling
        del samples, model, lr_latent, posterior
        decode = partial(decode_tiled, self.vae, z, tile_size=decode_tile, tile_overlap=decode_overlap,
                         cond_image=lr_up if settings.fidelity > 0 else None, fidelity=settings.fidelity,
                         cond_features=enc_feats, progress=progress and not self._bars_disabled())
        return self.finish_image(decode, lr_up, pre, settings, bit_depth=bit_depth)

    # ---------------------------------------------------------------- memory
    def plan_memory(self, height: int, width: int, settings: UpscaleSettings, *, input_bytes: float = 0,
                    streaming: bool = False) -> int:
        """The VAE tile size in pixels for an LR image of height x width: `settings.vae_tile_size` when
        set, else the largest multiple of 64 up to DEFAULT_VAE_TILE_SIZE whose encoder and decoder tile
        plus the image-sized buffers (per pixel of the upsampled image: IMAGE_BYTES_PER_PIXEL, or
        STREAMING_BYTES_PER_PIXEL when `streaming` into an integer array and `can_stream`, or
        LAZY_STREAMING_BYTES_PER_PIXEL when lr_up is then lazy too; plus
        `input_bytes`) fit `settings.max_memory`. MemoryBudgetError, before any image-sized allocation,
        when the buffers with the smallest tile (64 px) do not fit."""
        scale = max(settings.min_size / min(height, width), settings.upscale)
        multiple = self.vae_scale_factor
        up_h, up_w = (-(-int(side * scale) // multiple) * multiple for side in (height, width))  # padded lr_up
        channels, dtype = self.vae.config.block_out_channels, self.vae.dtype
        encode_pixel, decode_pixel = encoder_bytes_per_pixel(channels, dtype), decoder_bytes_per_pixel(channels, dtype)
        streams = streaming and self.can_stream(settings) and scale == settings.upscale
        bands = 0
        if settings.color_fix == "wavelet":
            band = color_fix_band_rows(up_w) + 2 * WAVELET_REACH
            bands = COLOR_FIX_LIVE_COPIES * band_bytes(min(band, up_h), up_w, 3, 4)

        def fixed(tile: int) -> float:
            per_pixel = IMAGE_BYTES_PER_PIXEL
            if streams:  # lr_up is lazy when the image is over one window (see `upsample_input`)
                lazy = scale in (2, 4, 8, 16) and max(up_h, up_w) > tile
                per_pixel = LAZY_STREAMING_BYTES_PER_PIXEL if lazy else STREAMING_BYTES_PER_PIXEL
            return per_pixel * up_h * up_w + input_bytes + bands

        def cost(tile: int) -> float:
            tile_h, tile_w = min(tile, up_h), min(tile, up_w)
            decode = decode_pixel * tile_h * tile_w + band_bytes(tile_h, up_w, 3, dtype.itemsize)
            return fixed(tile) + max(encode_pixel * tile_h * tile_w, decode)

        if settings.stream_weights:  # the weights will be held a layer at a time: plan without them
            self.drop_mapped_weights()
        budget = Budget.resolve(settings.max_memory, self.device)
        what = f"StableSR on {width}x{height} (upsampled to {up_w}x{up_h})"
        try:
            if settings.vae_tile_size is not None:
                return choose_tile(budget, cost=fixed, candidates=[settings.vae_tile_size], what=what)
            return choose_tile(budget, cost=cost, candidates=tile_candidates(DEFAULT_VAE_TILE_SIZE, 64, 64), what=what)
        except MemoryBudgetError as error:
            mapped = 0 if settings.stream_weights or budget.total is None else mapped_bytes()
            if mapped:
                raise MemoryBudgetError(f"{error}; or use --stream-weights: {format_bytes(mapped)} of model weights "
                                        "are held now, streamed they are held a layer at a time") from None
            raise

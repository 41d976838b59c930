"""DeeDSR as a diffusers pipeline (Bi et al., ECCV 2024, https://arxiv.org/abs/2404.00661).

A frozen SD UNet is steered by the degradation-aware adapter (`DeeDSRUNet`): the degradation learner
turns the LR image into a global degradation vector d, the adapter modulates every UNet resnet and
supplies the cross-attention tokens in place of text. Sampling is DDIM from pure noise with noise
guidance at the first step(s) (eq. 10-11), over aggregated latent tiles; the shared tiled VAE
encodes and decodes. See docs/deedsr.md for the choices where paper and released code disagree.

Paper -> code: degradation learner -> `degradation_learner`; degradation-aware adapter -> `adapter`;
z_LR -> `lr_latent`; noise guidance -> `noise_guided`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from stablesr.image_processor import (
    ImageInput,
    OutputType,
    postprocess_images,
)
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.models.deedsr_adapter import DeeDSRModule, DeeDSRUNet
from stablesr.models.degradation_learner import DegradationLearner
from stablesr.pipelines.base import SRPipeline, check_finite
from stablesr.pipelines.stablesr import StableSROutput
from stablesr.sampling.denoisers import wrap_model
from stablesr.sampling.noise_guidance import first_timesteps, noise_guided
from stablesr.sampling.samplers import NoiseSampler, sample_ddim
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear, ddim_schedule
from stablesr.settings_deedsr import DeeDSRSettings
from stablesr.tiling.aggregation import TiledDenoiser
from stablesr.tiling.vae import decode_tiled, encode_tiled


def make_tile_fn(deedsr_unet: DeeDSRUNet, degradation_vector: torch.Tensor):
    """tile_fn(x_tiles, lr_tiles, t) -> model output; every tile meets the image's degradation vector (1, D)."""

    def tile_fn(x_tiles: torch.Tensor, lr_tiles: torch.Tensor, t: int) -> torch.Tensor:
        n = x_tiles.shape[0]
        timesteps = torch.full((n,), t, dtype=torch.long, device=x_tiles.device)
        return deedsr_unet(x_tiles, timesteps, lr_tiles, degradation_vector.expand(n, -1))

    return tile_fn


class DeeDSRPipeline(SRPipeline):
    """Real-world super-resolution with a degradation-aware adapter on a frozen SD prior.

    Components: `unet` (frozen `UNet2DConditionModel`; its attn2 key/value projections are DeeDSR's),
    `adapter` (`DeeDSRModule`), `degradation_learner` (`DegradationLearner`, frozen), `vae`
    (`CFWAutoencoderKL`, used with fidelity 0), `scheduler` (records the training schedule and the
    prediction type).
    """

    settings_class = DeeDSRSettings
    model_cpu_offload_seq = "degradation_learner->adapter->unet->vae"

    def __init__(self, unet: UNet2DConditionModel, adapter: DeeDSRModule, degradation_learner: DegradationLearner,
                 vae: CFWAutoencoderKL, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, adapter=adapter, degradation_learner=degradation_learner, vae=vae,
                              scheduler=scheduler)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def complete_settings(self, settings: DeeDSRSettings) -> DeeDSRSettings:
        """min_size defaults to one latent tile; the steps must fit the training schedule."""
        if settings.num_inference_steps > self.scheduler.config.num_train_timesteps:
            settings.fail("num_inference_steps", f"must be <= {self.scheduler.config.num_train_timesteps}, "
                                                 "the model's training timesteps")
        min_size = settings.min_size if settings.min_size is not None else settings.tile_size * self.vae_scale_factor
        return replace(settings, min_size=min_size)

    @torch.no_grad()
    def __call__(self, image: ImageInput, settings: DeeDSRSettings | None = None, *, preset: str | None = None,
                 generator: torch.Generator | None = None, noise_sampler: NoiseSampler | None = None,
                 output_type: OutputType | None = None, progress: bool = True,
                 callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                 **options) -> StableSROutput:
        """Super-resolve `image`: PIL image(s), a (B, 3, H, W) tensor or (B, H, W, 3) array in [0, 1] -> the same
        kind (or `output_type`) in [0, 1], of size (round-down H * upscale, W * upscale). `options` are
        `DeeDSRSettings` field names. `noise_sampler` supplies every draw in order: the posterior sample, x_T,
        then one per step. `callback(i, t, x, x0_pred)` after every step."""
        # 1. Check inputs and settle the settings (once)
        settings, output_type, lr_images, noise_sampler = self.begin_call(
            image, settings, preset=preset, options=options, output_type=output_type, generator=generator,
            noise_sampler=noise_sampler)  # lr_images: list of (1, 3, H, W) in [0, 1]

        outputs = self.run_images(lr_images, settings, noise_sampler=noise_sampler, progress=progress,
                                  callback=callback)

        # 8. Convert the output
        return StableSROutput(images=postprocess_images(outputs, output_type))

    def run_images(self, lr_images: list, settings: DeeDSRSettings, *, noise_sampler: NoiseSampler, progress: bool,
                   callback, bit_depth: int | None = None) -> list:
        """Steps 2-7 for every image (see `SRPipeline.run_images`)."""
        deedsr_unet = DeeDSRUNet(self.unet, self.adapter, self.degradation_learner)
        return self.upscale_each(lr_images, lambda lr: self._upscale_one(
            lr, settings, deedsr_unet, noise_sampler=noise_sampler, progress=progress, callback=callback,
            bit_depth=bit_depth), hooked=deedsr_unet, steps=settings.num_inference_steps,
            stream_weights=settings.stream_weights)

    def _upscale_one(self, lr: torch.Tensor, settings: DeeDSRSettings, deedsr_unet: DeeDSRUNet, *,
                     noise_sampler: NoiseSampler, progress: bool, callback, bit_depth: int | None = None
                     ) -> torch.Tensor:
        """Steps 2-7 for one (1, 3, H, W) image in [0, 1] -> (1, 3, H*s, W*s) in [0, 1] on the CPU (with a
        `bit_depth`, the integer array: `SRPipeline.finish_image`)."""
        device, vae_dtype = self.device, self.vae.dtype
        scaling = self.vae.config.scaling_factor

        # 2. Degradation vector of the LR image as given ([0, 1], before upscaling), for the whole image
        degradation_vector = deedsr_unet.degradation_vector(lr.to(device))  # (1, vector_dim)

        # 3. Preprocess: to [-1, 1], bicubic upscale (short side >= min_size), pad to a multiple of 8
        pre, lr_up = self.upsample_input(lr, settings, dtype=vae_dtype)  # lr_up (1, 3, H, W)

        # 4. Encode the LR image: z_lr = scaling * sample(q(z | lr_up)), tiled
        encode_tile, encode_overlap = settings.vae_encode_tiles
        posterior = encode_tiled(self.vae, lr_up, tile_size=encode_tile, tile_overlap=encode_overlap)
        lr_latent = ((posterior.mean + posterior.std * noise_sampler(posterior.mean)) * scaling).to(self.unet.dtype)

        # 5. Denoiser: the adapted UNet over aggregated latent tiles, noise guidance at the first steps
        model = TiledDenoiser(make_tile_fn(deedsr_unet, degradation_vector), lr_latent, tile_size=settings.tile_size,
                              tile_overlap=settings.tile_overlap, batch_size=settings.tile_batch_size)
        betas = betas_scaled_linear(self.scheduler.config.num_train_timesteps, self.scheduler.config.beta_start,
                                    self.scheduler.config.beta_end)
        schedule = ddim_schedule(alphas_cumprod_from_betas(betas), settings.num_inference_steps, eta=settings.eta)
        denoiser = noise_guided(wrap_model(model, self.prediction_type), lr_latent,
                                first_timesteps(schedule.timesteps, settings.guided_steps))

        # 6. Sample: DDIM from x_T ~ N(0, I)
        with self._progress(settings.num_inference_steps, progress, callback) as on_step:
            samples = sample_ddim(denoiser, noise_sampler(lr_latent), schedule, noise_sampler=noise_sampler,
                                  callback=on_step)
        check_finite(samples, "the sampled latent", self.unet.dtype)

        # 7. Decode (tiled, no CFW fusion), colour-fix, undo the padding
        decode_tile, decode_overlap = settings.vae_decode_tiles(self.vae_scale_factor)
        decode = partial(decode_tiled, self.vae, samples.to(vae_dtype) / scaling, tile_size=decode_tile,
                         tile_overlap=decode_overlap)
        return self.finish_image(decode, lr_up, pre, settings, bit_depth=bit_depth)

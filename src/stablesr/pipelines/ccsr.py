"""CCSR (v1 and v2) as a diffusers pipeline (Sun et al. 2024, https://arxiv.org/abs/2401.00877).

A frozen SD 2.1 UNet steered by a control module on the LR condition latent, sampled
with non-uniform truncated sampling (one x0 jump from T, re-noise to t_max, a few ancestral steps, the
x0 prediction at t_min as output) over Gaussian-weighted latent tiles, decoded by the VAE whose decoder
CCSR finetuned, and colour-corrected against the upsampled input.

Paper -> code: c (LR latent) -> `cond_latent`; ControlNet -> `controlnet`; t_max / t_min ->
`settings.t_max` / `settings.t_min`; x_hat_0 -> `x0_pred`.

The version follows the control module: v1 (`LAControlNet`): c = mode(cond_encoder(lr)), x_T pure
noise, the respaced grid, the empty prompt; v2 (`LatentControlNet`, no cond_encoder): c = a VAE posterior
sample, x_T = q(c, 999) (or noise), diffusers' DDPM "leading" grid, classifier-free guidance with the
published prompts (the first evaluation uses the negative prompt alone, as the official pipeline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import BaseOutput

from stablesr.configs_ccsr import V2_NEGATIVE_PROMPT, V2_PROMPT, CCSRSettings
from stablesr.errors import StableSRError
from stablesr.image_processor import (
    ImageInput,
    OutputType,
    postprocess_images,
)
from stablesr.models.controlnet import ConditionEncoder, ControlledUNet, LAControlNet, LatentControlNet
from stablesr.models.text_encoder import PromptEmbeddings
from stablesr.pipelines.base import SRPipeline
from stablesr.sampling.denoisers import wrap_model
from stablesr.sampling.samplers import q_sample
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear
from stablesr.sampling.truncated import TruncatedPlan, plan_ccsr_v1, plan_ccsr_v2, sample_truncated
from stablesr.tiling.aggregation import TiledDenoiser
from stablesr.tiling.vae import decode_tiled, encode_tiled

NoiseSampler = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CCSROutput(BaseOutput):
    """images: list of PIL images, or a (B, 3, H, W) tensor / (B, H, W, 3) array in [0, 1]."""

    images: list[PIL.Image.Image] | torch.Tensor | np.ndarray


def make_control_tile_fn(controlled: ControlledUNet, cond_embeds: torch.Tensor, uncond_embeds: torch.Tensor | None,
                         settings: CCSRSettings):
    """tile_fn(x_tiles, cond_tiles, t) -> eps, with classifier-free guidance when uncond_embeds is set.

    out = out_uncond + s * (out_cond - out_uncond); the guidance batch is [uncond, cond], with the
    condition tiles repeated, so each half meets its own LR latent.
    """

    def tile_fn(x_tiles: torch.Tensor, cond_tiles: torch.Tensor, t: int) -> torch.Tensor:
        n = x_tiles.shape[0]
        if uncond_embeds is None:
            timesteps = torch.full((n,), t, dtype=torch.long, device=x_tiles.device)
            return controlled(x_tiles, timesteps, cond_embeds.expand(n, -1, -1), cond_tiles,
                              strength=settings.control_strength)
        timesteps = torch.full((2 * n,), t, dtype=torch.long, device=x_tiles.device)
        context = torch.cat([uncond_embeds.expand(n, -1, -1), cond_embeds.expand(n, -1, -1)])
        out = controlled(torch.cat([x_tiles, x_tiles]), timesteps, context, torch.cat([cond_tiles, cond_tiles]),
                         strength=settings.control_strength)
        out_uncond, out_cond = out.chunk(2)  # (2n, C, h, w) -> 2 x (n, C, h, w)
        return out_uncond + settings.guidance_scale * (out_cond - out_uncond)

    return tile_fn


class CCSRPipeline(SRPipeline):
    """Content-consistent super-resolution (CCSR v1 or v2, by the control module).

    Components: `unet` (SD 2.x `UNet2DConditionModel`, frozen), `controlnet` (`LAControlNet` for v1,
    `LatentControlNet` for v2), `cond_encoder` (v1 only: `ConditionEncoder`, the frozen VAE-encoder copy),
    `vae` (`AutoencoderKL` with the finetuned decoder), `scheduler` (a `DDPMScheduler` recording the
    training schedule), `prompt_embeds` (cached embeddings: '' for v1; the v2 prompts for v2).
    """

    settings_class = CCSRSettings
    model_cpu_offload_seq = "cond_encoder->controlnet->unet->vae"
    _optional_components = ["cond_encoder"]

    def __init__(self, unet: UNet2DConditionModel, controlnet: LAControlNet | LatentControlNet, vae: AutoencoderKL,
                 scheduler: DDPMScheduler, prompt_embeds: PromptEmbeddings,
                 cond_encoder: ConditionEncoder | None = None) -> None:
        super().__init__()
        self.register_modules(unet=unet, controlnet=controlnet, cond_encoder=cond_encoder, vae=vae,
                              scheduler=scheduler, prompt_embeds=prompt_embeds)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def version(self) -> str:
        """'v1' (concatenation control module + condition encoder) or 'v2' (latent-conditioned ControlNet)."""
        return "v2" if isinstance(self.controlnet, LatentControlNet) else "v1"

    def plan(self, settings: CCSRSettings) -> TruncatedPlan:
        """The timesteps a call with `settings` visits (`plan.num_evaluations` model calls per tile)."""
        make_plan = plan_ccsr_v2 if self.version == "v2" else plan_ccsr_v1
        return make_plan(settings.num_inference_steps, settings.t_max, settings.t_min,
                         num_train_timesteps=self.scheduler.config.num_train_timesteps)

    def complete_settings(self, settings: CCSRSettings) -> CCSRSettings:
        """Fill in min_size (one latent tile) and the version's prompt/start defaults; check the schedule."""
        if settings.num_inference_steps > self.scheduler.config.num_train_timesteps:
            settings.fail("num_inference_steps", f"must be <= {self.scheduler.config.num_train_timesteps}")
        try:
            self.plan(settings)
        except ValueError as error:
            raise StableSRError(f"--steps/--t-max/--t-min: {error}") from None
        min_size = settings.min_size if settings.min_size is not None else settings.tile_size * self.vae_scale_factor
        if self.version == "v1":
            for name, allowed in (("guidance_scale", (1.0,)), ("start", (None, "noise")), ("prompt", (None, "")),
                                  ("negative_prompt", (None,))):
                if getattr(settings, name) not in allowed:
                    settings.fail(name, "is a CCSR v2 setting; this is a v1 model (empty prompt, no guidance, "
                                        "x_T from noise)")
            return replace(settings, min_size=min_size, prompt="", start="noise")
        return replace(settings, min_size=min_size, start=settings.start or "lr",
                       prompt=V2_PROMPT if settings.prompt is None else settings.prompt,
                       negative_prompt=V2_NEGATIVE_PROMPT if settings.negative_prompt is None
                       else settings.negative_prompt)

    def cached_embedding(self, text: str) -> torch.Tensor:
        """(1, 77, D) cached embedding of exactly `text`, on the UNet's device and dtype."""
        found = self.prompt_embeds.find(text)
        if found is None:
            raise StableSRError(f"no cached embedding of the prompt {text!r} in this model (cached: "
                                f"{list(self.prompt_embeds.config.prompts.values())}); convert with a text encoder")
        return found.to(self.device, self.unet.dtype)

    @torch.no_grad()
    def __call__(self, image: ImageInput, settings: CCSRSettings | None = None, *, preset: str | None = None,
                 generator: torch.Generator | None = None, noise_sampler: NoiseSampler | None = None,
                 output_type: OutputType | None = None, progress: bool = True,
                 callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                 **options) -> CCSROutput:
        """Super-resolve `image`: PIL image(s), a (B, 3, H, W) tensor or a (B, H, W, 3) array in [0, 1].

        Returns the same kind (or `output_type`) in [0, 1], of size (H * upscale, W * upscale) rounded
        down. `settings` (a `CCSRSettings`) or keyword `options` (its field names) choose the knobs.
        `noise_sampler(like) -> noise` supplies every draw in order: (v2: the posterior sample,) x_T, the
        re-noise, one per loop step but the last. callback(k, t, x_t, x0_pred) follows every evaluation.
        """
        # 1. Check inputs and settle the settings (once)
        settings, output_type, lr_images, noise_sampler = self.begin_call(
            image, settings, preset=preset, options=options, output_type=output_type, generator=generator,
            noise_sampler=noise_sampler)  # lr_images: list of (1, 3, H, W) in [0, 1]

        outputs = self.run_images(lr_images, settings, noise_sampler=noise_sampler, progress=progress,
                                  callback=callback)

        # 7. Convert the output
        return CCSROutput(images=postprocess_images(outputs, output_type))

    def run_images(self, lr_images: list, settings: CCSRSettings, *, noise_sampler: NoiseSampler, progress: bool,
                   callback, bit_depth: int | None = None) -> list:
        """Steps 2-6 for every image (see `SRPipeline.run_images`)."""
        # 2. Prompt contexts (v1: ''; v2: the prompt, and the negative prompt with guidance) as tile functions
        controlled = ControlledUNet(self.unet, self.controlnet)
        cond_embeds = self.cached_embedding(settings.prompt)
        uncond_embeds = self.cached_embedding(settings.negative_prompt) if settings.guidance_scale != 1.0 else None
        tile_fn = make_control_tile_fn(controlled, cond_embeds, uncond_embeds, settings)
        first_tile_fn = tile_fn if uncond_embeds is None else make_control_tile_fn(controlled, uncond_embeds, None,
                                                                                    settings)
        return self.upscale_each(lr_images, lambda lr: self._upscale_one(
            lr, settings, tile_fn, first_tile_fn, noise_sampler=noise_sampler, callback=callback,
            bit_depth=bit_depth), steps=settings.num_inference_steps,
            stream_weights=settings.stream_weights)

    def _upscale_one(self, lr: torch.Tensor, settings: CCSRSettings, tile_fn, first_tile_fn, *,
                     noise_sampler: NoiseSampler, callback, bit_depth: int | None = None) -> torch.Tensor:
        """Steps 3-6 for one (1, 3, H, W) image in [0, 1] -> (1, 3, H*s, W*s) in [0, 1] on the CPU (with a
        `bit_depth`, the integer array: `SRPipeline.finish_image`)."""
        vae_dtype, scaling = self.vae.dtype, self.vae.config.scaling_factor

        # 3. Preprocess: to [-1, 1], bicubic upscale (short side >= min_size), pad to a multiple of 8
        encoder = self.cond_encoder if self.version == "v1" else self.vae
        pre, lr_up = self.upsample_input(lr, settings, dtype=encoder.dtype)  # lr_up (1, 3, H, W)

        # 4. Condition latent, tiled for bounded memory: v1 c = mode(E_cond(lr_up)) * scaling; v2 a VAE sample
        encode_tile, encode_overlap = settings.vae_encode_tiles
        posterior = encode_tiled(encoder, lr_up, tile_size=encode_tile, tile_overlap=encode_overlap)
        if self.version == "v1":
            cond_latent = posterior.mode() * scaling
        else:
            cond_latent = (posterior.mean + posterior.std * noise_sampler(posterior.mean)) * scaling
        cond_latent = cond_latent.to(self.unet.dtype)  # (1, 4, H/8, W/8)

        # 5. Sample: x_T (noise, or v2: q(c, start_t)), truncated non-uniform sampling over Gaussian-weighted tiles
        def tiled(fn):
            return TiledDenoiser(fn, cond_latent, tile_size=settings.tile_size, tile_overlap=settings.tile_overlap,
                                 batch_size=settings.tile_batch_size)

        config = self.scheduler.config
        alphas_cumprod = alphas_cumprod_from_betas(
            betas_scaled_linear(config.num_train_timesteps, config.beta_start, config.beta_end))
        plan = self.plan(settings)
        x_T = noise_sampler(cond_latent)
        if settings.start == "lr":
            x_T = q_sample(cond_latent, float(alphas_cumprod[plan.start_t]), x_T)
        x0_pred = sample_truncated(wrap_model(tiled(tile_fn), config.prediction_type), x_T, alphas_cumprod, plan,
                                   first_denoiser=wrap_model(tiled(first_tile_fn), config.prediction_type),
                                   noise_sampler=noise_sampler, callback=callback)

        # 6. Decode with the finetuned decoder (tiled), colour-fix against lr_up, undo the padding
        decode_tile, decode_overlap = settings.vae_decode_tiles(self.vae_scale_factor)
        decode = partial(decode_tiled, self.vae, x0_pred.to(vae_dtype) / scaling, tile_size=decode_tile,
                         tile_overlap=decode_overlap)
        return self.finish_image(decode, lr_up, pre, settings, bit_depth=bit_depth)

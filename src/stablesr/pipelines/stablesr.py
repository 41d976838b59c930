"""StableSR as a diffusers pipeline (Wang et al., IJCV 2024, https://arxiv.org/abs/2305.07015).

A frozen Stable Diffusion UNet is steered by a time-aware encoder through SFT layers
(`SFTUNet`), sampled with aggregation (tiled) sampling for any image size, decoded by the CFW
autoencoder with fidelity weight w, and colour-corrected against the upsampled input.

Paper -> code: z_lr -> `lr_latent`; E(z_lr, t) -> `sr_module.encoder`; SFT -> `sr_module.sft_layers`;
w -> `fidelity`; Gaussian aggregation -> `TiledDenoiser`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from stablesr.color_fix import apply_color_fix
from stablesr.configs import ColorFix, Sampler, Start
from stablesr.errors import StableSRError
from stablesr.imaging import image_to_tensor, postprocess_sr, preprocess_lr
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.models.sft_unet import SFTUNet, StableSRModule
from stablesr.models.text_encoder import OFFICIAL_NEGATIVE_PROMPT, PromptEmbeddings, known_prompt_tokens
from stablesr.sampling.samplers import default_noise_sampler, q_sample, sample_ddim, sample_ddpm
from stablesr.sampling.schedules import betas_scaled_linear, ddim_schedule, respaced_schedule
from stablesr.sampling.tiled_vae import decode_tiled, encode_tiled
from stablesr.sampling.tiling import TiledDenoiser

NoiseSampler = Callable[[torch.Tensor], torch.Tensor]


class NonFiniteOutputError(StableSRError):
    """NaN/Inf appeared (typically fp16 overflow); retry in float32."""


@dataclass
class StableSROutput(BaseOutput):
    """images: list of PIL images, or a (B, 3, H, W) tensor / (B, H, W, 3) array in [0, 1]."""

    images: list[PIL.Image.Image] | torch.Tensor | np.ndarray


def make_guided_tile_fn(sft_unet: SFTUNet, cond_embeds: torch.Tensor, uncond_embeds: torch.Tensor | None,
                        guidance_scale: float):
    """tile_fn(x_tiles, lr_tiles, t) -> model output, with classifier-free guidance when uncond_embeds is set.

    out = out_uncond + s * (out_cond - out_uncond); the CFG batch is [uncond, cond] (the official
    order) and the LR tiles are repeated the same way, so every sample meets its own condition.
    """

    def tile_fn(x_tiles: torch.Tensor, lr_tiles: torch.Tensor, t: int) -> torch.Tensor:
        n = x_tiles.shape[0]
        if uncond_embeds is None:
            timesteps = torch.full((n,), t, dtype=torch.long, device=x_tiles.device)
            return sft_unet(x_tiles, timesteps, cond_embeds.expand(n, -1, -1), lr_tiles)
        timesteps = torch.full((2 * n,), t, dtype=torch.long, device=x_tiles.device)
        context = torch.cat([uncond_embeds.expand(n, -1, -1), cond_embeds.expand(n, -1, -1)])
        out = sft_unet(torch.cat([x_tiles, x_tiles]), timesteps, context, torch.cat([lr_tiles, lr_tiles]))
        out_uncond, out_cond = out.chunk(2)  # (2n, C, h, w) -> 2 x (n, C, h, w)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return tile_fn


class StableSRPipeline(DiffusionPipeline):
    """Real-world super-resolution with a frozen SD prior.

    Components: `unet` (SD 2.x `UNet2DConditionModel`, frozen), `sr_module` (time-aware encoder +
    22 SFT layers), `vae` (`CFWAutoencoderKL`), `scheduler` (a `DDPMScheduler` that records the
    training schedule and the prediction type), `prompt_embeds` (cached '' embedding and friends),
    optional `text_encoder` + `tokenizer` for custom prompts.
    """

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

    # ---------------------------------------------------------------- main entry
    @torch.no_grad()
    def __call__(self, image: PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor, *, upscale: float = 4.0,
                 num_inference_steps: int = 200, sampler: Sampler = "ddpm", eta: float = 0.0,
                 fidelity: float | None = None, color_fix: ColorFix = "wavelet", tile_size: int = 64,
                 tile_overlap: int = 32, tile_batch_size: int = 4, vae_tile_size: int = 1024,
                 min_size: int | None = None, start: Start = "lr", guidance_scale: float = 1.0, prompt: str = "",
                 negative_prompt: str | None = None, faithful: bool = False,
                 generator: torch.Generator | None = None, noise_sampler: NoiseSampler | None = None,
                 output_type: str = "pil", progress: bool = True,
                 callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> StableSROutput:
        """Super-resolve `image`.

        image: PIL image(s), or a (B, 3, H, W) tensor in [0, 1]. Returns images of size
        (round-down H * upscale, W * upscale). `noise_sampler(like) -> noise` (advanced) supplies
        every random draw in order: the posterior sample, x_T, then one per step.
        See `stablesr.configs.UpscaleSettings` for what every option means.
        """
        # 1. Check inputs
        fidelity = self._check_inputs(upscale, num_inference_steps, sampler, eta, fidelity, tile_size, tile_overlap,
                                      guidance_scale, output_type)
        lr_images = self._to_tensor_batch(image)
        noise_sampler = noise_sampler or default_noise_sampler(generator)
        min_size = min_size if min_size is not None else tile_size * self.vae_scale_factor

        # 2. Encode prompts (cond = prompt; uncond = negative prompt, only with guidance)
        cond_embeds = self.encode_prompt(prompt).to(self.device, self.unet.dtype)
        uncond_embeds = None
        if guidance_scale != 1.0:
            negative = OFFICIAL_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
            uncond_embeds = self.encode_prompt(negative).to(self.device, self.unet.dtype)

        sft_unet = SFTUNet(self.unet, self.sr_module)
        try:
            outputs = [self._upscale_one(lr, sft_unet, cond_embeds, uncond_embeds, upscale=upscale,
                                         min_size=min_size, steps=num_inference_steps, sampler=sampler, eta=eta,
                                         fidelity=fidelity, color_fix=color_fix, tile_size=tile_size,
                                         tile_overlap=tile_overlap, tile_batch_size=tile_batch_size,
                                         vae_tile_size=vae_tile_size, start=start, guidance_scale=guidance_scale,
                                         faithful=faithful, noise_sampler=noise_sampler, progress=progress,
                                         callback=callback)
                       for lr in lr_images]
        finally:
            sft_unet.remove_hooks()
        self.maybe_free_model_hooks()

        # 8. Convert the output
        return StableSROutput(images=self._convert_output(outputs, output_type))

    def _upscale_one(self, lr: torch.Tensor, sft_unet: SFTUNet, cond_embeds, uncond_embeds, *, upscale, min_size,
                     steps, sampler, eta, fidelity, color_fix, tile_size, tile_overlap, tile_batch_size,
                     vae_tile_size, start, guidance_scale, faithful, noise_sampler, progress, callback) -> torch.Tensor:
        device, vae_dtype = self.device, self.vae.dtype
        scaling = self.vae.config.scaling_factor

        # 3. Preprocess: [-1, 1], bicubic upscale (short side >= min_size), pad to a multiple of 8
        pre = preprocess_lr(lr, upscale=upscale, min_size=min_size, multiple=self.vae_scale_factor)
        lr_up = pre.image.to(device, vae_dtype)  # (1, 3, H, W)

        # 4. Encode the LR image: z_lr = scaling * sample(q(z | lr_up)), tiled for bounded memory
        posterior = encode_tiled(self.vae, lr_up, tile_size=vae_tile_size, tile_overlap=vae_tile_size // 8)
        lr_latent = (posterior.mean + posterior.std * noise_sampler(posterior.mean)) * scaling
        lr_latent = lr_latent.to(self.unet.dtype)  # (1, 4, H/8, W/8)

        # 5. Schedule and starting latent x_T
        betas = betas_scaled_linear(self.scheduler.config.num_train_timesteps, self.scheduler.config.beta_start,
                                    self.scheduler.config.beta_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if start == "lr":  # q(x_999 | z_lr) with the un-respaced table, as the official tile script
            x_t = q_sample(lr_latent, alphas_cumprod[-1].item(), noise_sampler(lr_latent))
        else:
            x_t = noise_sampler(lr_latent)

        # 6. Denoise with aggregation sampling over latent tiles
        tile_fn = make_guided_tile_fn(sft_unet, cond_embeds, uncond_embeds, guidance_scale)
        denoiser = TiledDenoiser(tile_fn, lr_latent, tile_size=tile_size, tile_overlap=tile_overlap,
                                 batch_size=tile_batch_size, faithful_weights=faithful)
        bar_config = {**getattr(self, "_progress_bar_config", {}), "desc": "sampling", "leave": False}
        bar_config["disable"] = bar_config.get("disable", False) or not progress
        with tqdm(total=steps, **bar_config) as bar:
            def on_step(i, t, x, x0_pred):
                bar.update()
                if callback is not None:
                    callback(i, t, x, x0_pred)

            if sampler == "ddpm":
                schedule = respaced_schedule(betas, steps, faithful=faithful)
                samples = sample_ddpm(denoiser, x_t, schedule, prediction_type=self.prediction_type,
                                      noise_sampler=noise_sampler, callback=on_step)
            else:
                schedule = ddim_schedule(alphas_cumprod, steps, eta=eta, grid="official" if faithful else "consistent")
                samples = sample_ddim(denoiser, x_t, schedule, prediction_type=self.prediction_type,
                                      noise_sampler=noise_sampler, callback=on_step)
        if not torch.isfinite(samples).all():
            raise NonFiniteOutputError(f"the sampled latent has NaN/Inf values in {self.unet.dtype}; retry in float32")

        # 7. Decode with CFW (encoder features of lr_up per tile), colour-fix, undo the padding
        z = samples.to(vae_dtype) / scaling
        decoded = decode_tiled(self.vae, z, tile_size=max(vae_tile_size // self.vae_scale_factor, 8),
                               tile_overlap=max(vae_tile_size // self.vae_scale_factor // 4, 2),
                               cond_image=lr_up if fidelity > 0 else None, fidelity=fidelity)
        decoded = apply_color_fix(decoded.float(), lr_up.float(), method=color_fix)
        if not torch.isfinite(decoded).all():
            raise NonFiniteOutputError(f"the decoded image has NaN/Inf values in {vae_dtype}; retry in float32")
        sr = postprocess_sr(decoded, pre)  # (1, 3, H_out, W_out) in [-1, 1]
        return ((sr + 1) / 2).clamp(0, 1).cpu()

    # ---------------------------------------------------------------- helpers
    def _check_inputs(self, upscale, steps, sampler, eta, fidelity, tile_size, tile_overlap, guidance_scale,
                      output_type) -> float:
        if upscale <= 0:
            raise StableSRError(f"upscale must be > 0, got {upscale}")
        if sampler not in ("ddpm", "ddim"):
            raise StableSRError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if not 1 <= steps <= self.scheduler.config.num_train_timesteps:
            raise StableSRError(f"num_inference_steps must be in 1..{self.scheduler.config.num_train_timesteps}")
        if eta < 0:
            raise StableSRError(f"eta must be >= 0, got {eta}")
        if not 0 <= tile_overlap < tile_size:
            raise StableSRError(f"need 0 <= tile_overlap < tile_size, got {tile_overlap} and {tile_size}")
        if guidance_scale < 0:
            raise StableSRError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if output_type not in ("pil", "pt", "np"):
            raise StableSRError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        if fidelity is None:
            return 0.5 if self.config.cfw_trained else 0.0
        if not 0.0 <= fidelity <= 1.0:
            raise StableSRError(f"fidelity must be in [0, 1], got {fidelity}")
        if fidelity > 0 and not self.config.cfw_trained:
            raise StableSRError("this model has no trained CFW fusion weights, so fidelity must be 0; "
                                "convert with --cfw vqgan_cfw_00011.ckpt to enable it")
        return fidelity

    @staticmethod
    def _to_tensor_batch(image) -> list[torch.Tensor]:
        """PIL image(s) or a (B, 3, H, W) tensor in [0, 1] -> list of (1, 3, H, W) tensors in [-1, 1]."""
        if isinstance(image, PIL.Image.Image):
            return [image_to_tensor(image.convert("RGB"))]
        if isinstance(image, (list, tuple)):
            return [image_to_tensor(im.convert("RGB")) for im in image]
        if torch.is_tensor(image) and image.ndim == 4 and image.shape[1] == 3:
            return [x[None].float() * 2 - 1 for x in image]
        raise StableSRError("image must be a PIL image, a list of them, or a (B, 3, H, W) tensor in [0, 1]")

    @staticmethod
    def _convert_output(outputs: list[torch.Tensor], output_type: str):
        if output_type == "pt":
            return torch.cat(outputs) if len({o.shape for o in outputs}) == 1 else outputs
        arrays = [o[0].permute(1, 2, 0).numpy() for o in outputs]  # (1, 3, H, W) -> (H, W, 3)
        if output_type == "np":
            return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays
        return [PIL.Image.fromarray((a * 255.0).round().astype(np.uint8)) for a in arrays]

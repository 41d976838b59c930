"""`stablesr train prior`: a latent diffusion UNet prior from scratch (what Stable Diffusion provides).

Rombach et al., CVPR 2022 (https://arxiv.org/abs/2112.10752): a diffusers `UNet2DConditionModel`
learns p(z) on the latents of photo crops under a fixed null context (no text), with the SD 2.x
training schedule (scaled-linear betas, 1000 steps):

    z_0 = scaling * sample(q(z | x)),  t ~ U{0..999},  z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps
    loss = || target - UNet(z_t, t, c_null) ||^2,  target = v = sqrt(a_t) eps - sqrt(1 - a_t) z_0 (or eps)

The export is a complete `StableSRPipeline` folder: this UNet, the VAE, the scheduler, the null
context as the cached '' embedding and a freshly initialised SR module (time-aware encoder + SFT),
so `train stablesr` starts from it with `model.pipeline: <this run>`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from stablesr.data.datasets import HRFolderDataset
from stablesr.errors import StableSRError
from stablesr.models.sft_unet import StableSRModule, resnets_in_order
from stablesr.models.text_encoder import PromptEmbeddings
from stablesr.sampling.samplers import q_sample
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear
from stablesr.training.config import PriorTrainConfig, SRModuleArchitecture, UNetArchitecture
from stablesr.training.loop import Trainer
from stablesr.training.previews import encode_latent
from stablesr.training.stablesr_trainer import diffusion_target
from stablesr.training.vae_trainer import load_trained_vae


def build_unet(architecture: UNetArchitecture, latent_channels: int) -> UNet2DConditionModel:
    """Resnet-only down/up levels and a cross-attention middle block (self + cross attention)."""
    levels = len(architecture.block_out_channels)
    return UNet2DConditionModel(in_channels=latent_channels, out_channels=latent_channels,
                                block_out_channels=tuple(architecture.block_out_channels),
                                layers_per_block=architecture.layers_per_block,
                                norm_num_groups=architecture.norm_num_groups,
                                down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                                mid_block_type="UNetMidBlock2DCrossAttn",
                                cross_attention_dim=architecture.cross_attention_dim,
                                attention_head_dim=architecture.attention_heads, sample_size=32)


def build_sr_module(unet: UNet2DConditionModel, architecture: SRModuleArchitecture) -> StableSRModule:
    """A fresh SR module sized for `unet`: one SFT layer per resnet, encoder levels matching the UNet's."""
    if len(architecture.channel_mult) != len(unet.config.block_out_channels):
        raise StableSRError("sr_module.channel_mult needs one entry per UNet level (so the feature widths match)")
    encoder = dict(in_channels=unet.config.in_channels, model_channels=architecture.model_channels,
                   out_channels=architecture.cond_channels, num_res_blocks=architecture.num_res_blocks,
                   channel_mult=tuple(architecture.channel_mult), attention_resolutions=(),
                   num_heads=architecture.num_heads)
    return StableSRModule(sft_channels=[r.conv2.out_channels for r in resnets_in_order(unet)],
                          cond_channels=architecture.cond_channels,
                          sft_hidden_channels=architecture.sft_hidden_channels, encoder=encoder)


def null_context(architecture: UNetArchitecture) -> PromptEmbeddings:
    """The fixed null context: zeros (1, context_length, D), cached as the '' prompt."""
    zeros = torch.zeros(1, architecture.context_length, architecture.cross_attention_dim)
    return PromptEmbeddings.from_tensors({"null": zeros}, {"null": ""})


class PriorTrainer(Trainer):
    """Unconditional latent prior; `dataset` (optional) replaces the HR folders, `vae` the VAE folder."""

    def __init__(self, config: PriorTrainConfig, *, dataset=None, vae=None) -> None:
        if not config.data.hr_folders and dataset is None:
            raise StableSRError("data.hr_folders is empty: give at least one folder of HR training images")
        if vae is None and config.vae is None:
            raise StableSRError("set `vae:` to the folder written by `stablesr train vae`")
        self.batch_size, self.num_workers = config.data.batch_size, config.data.num_workers
        self._dataset, self._vae = dataset, vae
        super().__init__(config)

    def build(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.vae = (self._vae if self._vae is not None else load_trained_vae(config.vae)).eval().requires_grad_(False)
        self.vae.to(accelerator.device)
        unet = build_unet(config.unet, self.vae.config.latent_channels).train()
        self.trainable = unet
        if config.run.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=config.optimizer.learning_rate,
                                      betas=config.optimizer.betas, weight_decay=config.optimizer.weight_decay,
                                      eps=config.optimizer.eps)
        self.model, optimizer = accelerator.prepare(unet, optimizer)
        self.optimizers, self.accumulate_modules = {"unet": optimizer}, [self.model]
        self.prompt_embeds = null_context(config.unet)
        self.context = self.prompt_embeds.get("null").to(accelerator.device)
        self.alphas_cumprod = alphas_cumprod_from_betas(betas_scaled_linear()).float().to(accelerator.device)
        data = config.data
        self.dataset = self._dataset or HRFolderDataset(
            data.hr_folders, crop_size=data.crop_size, min_size=data.min_size, min_bytes=data.min_bytes,
            hflip=data.hflip, seed=config.run.seed, repeats=data.repeats, cache_images=data.cache_images)

    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        gt = batch["gt"].to(self.accelerator.device) * 2 - 1
        z_0 = encode_latent(self.vae, gt.to(self.vae.dtype), generator).float()  # (B, C, S/f, S/f)
        batch_size = z_0.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (batch_size,), generator=generator, device=z_0.device)
        noise = torch.randn(z_0.shape, generator=generator, device=z_0.device)
        alpha_bar = self.alphas_cumprod[t].view(batch_size, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        target = diffusion_target(z_0, noise, alpha_bar, self.config.prediction_type)
        with self.accelerator.autocast():
            out = self.model(q_sample(z_0, alpha_bar, noise), t, encoder_hidden_states=self.context.expand(
                batch_size, -1, -1)).sample
        loss = F.mse_loss(out.float(), target)
        self.accelerator.backward(loss)
        max_norm = self.config.optimizer.max_grad_norm
        if max_norm > 0 and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.trainable.parameters(), max_norm)
        self.optimizers["unet"].step()
        self.optimizers["unet"].zero_grad(set_to_none=True)
        return {"loss": loss.item()}

    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"trainable": self.trainable.state_dict()}

    def load_trainable_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        self.trainable.load_state_dict(weights["trainable"])

    def export(self, folder: str | Path) -> Path:
        """A StableSRPipeline folder: prior UNet (EMA when on) + VAE + fresh SR module + null context."""
        from stablesr.pipelines.stablesr import StableSRPipeline
        from stablesr.weights.loading import make_scheduler

        folder = Path(folder)
        if self.accelerator.is_main_process:
            unet = copy.deepcopy(self.trainable).eval()
            if self.ema is not None:
                self.ema.copy_to(unet)
            torch.manual_seed(self.config.run.seed)
            sr_module = build_sr_module(unet, self.config.sr_module)
            pipe = StableSRPipeline(unet=unet, sr_module=sr_module, vae=self.vae,
                                    scheduler=make_scheduler(self.config.prediction_type),
                                    prompt_embeds=self.prompt_embeds, cfw_trained=False)
            pipe.save_pretrained(folder, safe_serialization=True)
        self.accelerator.wait_for_everyone()
        return folder

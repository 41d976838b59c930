"""CFW training: only the two fusion layers of the autoencoder learn (https://arxiv.org/abs/2305.07015, 3.3).

    F_e = Encoder_features(lr_up)                     (frozen encoder)
    x_rec = Decoder(z_sampled / 0.18215, F_e, w = 1)  (frozen decoder, trainable fusion C(.; theta))
    L_G = L1(x_rec, gt) + 1.0 * LPIPS_vgg(x_rec, gt) + 0.025 * (-mean D(x_rec))   (GAN from disc_start)
    L_D = hinge(D(gt), D(x_rec))                      (3-layer PatchGAN, from disc_start)

Adam(lr 5e-5, betas (0.5, 0.9)) for both, as the official run. Without the VGG weights for LPIPS
the perceptual term is dropped with a warning written to the log (L1 + GAN only). Losses are
means over pixels. The real and fake images go through the discriminator as one batch (one DDP
forward per backward), so its BatchNorm statistics cover both.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from stablesr.errors import StableSRError, WeightsNotFoundError
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.training.cfw_data import CFWTripletDataset
from stablesr.training.config import CFWTrainConfig
from stablesr.training.discriminator import AdversarialUpdates, hinge_generator_loss
from stablesr.training.loop import Trainer

FUSION_PREFIXES = ("fusion_layer_1.", "fusion_layer_2.")
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


class CFWDecoder(nn.Module):
    """(lr_up (B, 3, S, S) in [-1, 1], z (B, 4, S/8, S/8) UNSCALED) -> image (B, 3, S, S), fidelity w = 1."""

    def __init__(self, vae: CFWAutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, lr_up: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            enc_feats = self.vae.extract_enc_feats(lr_up)
        return self.vae.decode_with_features(z, enc_feats, fidelity=1.0)


def fusion_state(vae: CFWAutoencoderKL, prefixes: tuple[str, ...] = FUSION_PREFIXES) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vae.state_dict().items() if k.startswith(prefixes)}


def reset_fusion_layers(vae: CFWAutoencoderKL) -> None:
    """Fresh fusion weights (the constructor's initialisation), keeping the SD encoder/decoder."""
    fresh = CFWAutoencoderKL.from_config(vae.config)
    vae.load_state_dict(fusion_state(fresh), strict=False)


class CFWTrainer(AdversarialUpdates, Trainer):
    """CFW trainer; `pipeline` (optional) replaces `config.pipeline` as the starting point."""

    def __init__(self, config: CFWTrainConfig, *, pipeline=None, lpips: nn.Module | None = None) -> None:
        if not config.data.folders:
            raise StableSRError("data.folders is empty: give folders written by `stablesr generate-cfw-data`")
        if pipeline is None and config.pipeline is None:
            raise StableSRError("set `pipeline:` to the stage-1 pipeline folder whose VAE gets the CFW layers")
        self.batch_size, self.num_workers = config.data.batch_size, config.data.num_workers
        self._pipeline, self._lpips = pipeline, lpips
        self._triplets = CFWTripletDataset(config.data.folders)  # data errors before the model loads
        super().__init__(config)

    def build(self) -> None:
        from stablesr.weights.loading import load_pipeline

        config = self.config
        self.pipe = self._pipeline if self._pipeline is not None else load_pipeline(config.pipeline)
        vae = self.pipe.vae.eval().requires_grad_(False)
        if config.fresh_fusion:
            reset_fusion_layers(vae)
        self.trained_prefixes = FUSION_PREFIXES + (DECODER_PREFIXES if config.train_decoder else ())
        for name, parameter in vae.named_parameters():
            parameter.requires_grad_(name.startswith(self.trained_prefixes))
        self.trainable = vae
        self.perceptual = self._perceptual_loss()
        self._prepare_with_discriminator(CFWDecoder(vae), [p for p in vae.parameters() if p.requires_grad], "fusion")
        self.dataset = self._triplets

    def _perceptual_loss(self) -> nn.Module | None:
        loss = self.config.loss
        if loss.perceptual_weight == 0:
            return None
        if self._lpips is not None:
            return self._lpips.to(self.accelerator.device).eval().requires_grad_(False)
        from stablesr.metrics.lpips import LPIPS

        try:
            return LPIPS.from_files("vgg", backbone_path=loss.lpips_backbone_path).to(self.accelerator.device)
        except WeightsNotFoundError as error:
            self.note(f"perceptual loss OFF, training with L1 + GAN only: {error}")
            return None

    def note(self, message: str) -> None:
        """A warning that is also written to OUTPUT/logs/notes.txt."""
        warnings.warn(message, stacklevel=2)
        if self.accelerator.is_main_process:
            folder = Path(self.config.run.output_dir) / "logs"
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "notes.txt").open("a") as handle:
                handle.write(message + "\n")

    # ------------------------------------------------------------------ one micro-batch
    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        device, scaling = self.accelerator.device, self.trainable.config.scaling_factor
        lr_up, gt = batch["lr_up"].to(device) * 2 - 1, batch["gt"].to(device) * 2 - 1
        z = batch["latent"].to(device) / scaling  # (B, 4, S/8, S/8) unscaled
        with self.accelerator.autocast():
            reconstruction = self.model(lr_up, z).float()
        metrics = self._generator_update(reconstruction, gt)
        disc_on = self.step >= self.config.loss.disc_start
        metrics["d_loss"] = self._discriminator_update(reconstruction.detach(), gt) if disc_on else 0.0
        return metrics

    def _generator_update(self, reconstruction: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        loss_settings = self.config.loss
        l1 = (reconstruction - gt).abs().mean()
        perceptual = self.perceptual(reconstruction, gt).mean() if self.perceptual is not None else l1.new_zeros(())
        g_loss = l1.new_zeros(())
        if self.step >= loss_settings.disc_start:  # the plain module: D's weights get no grads from L_G
            discriminator = self.accelerator.unwrap_model(self.discriminator).requires_grad_(False)
            g_loss = hinge_generator_loss(discriminator(reconstruction))
            discriminator.requires_grad_(True)
        loss = (loss_settings.l1_weight * l1 + loss_settings.perceptual_weight * perceptual
                + loss_settings.disc_weight * g_loss)
        self.accelerator.backward(loss)
        self._clip([p for p in self.trainable.parameters() if p.requires_grad])
        self.optimizers["fusion"].step()
        self.optimizers["fusion"].zero_grad(set_to_none=True)
        return {"loss": loss.item(), "l1": l1.item(), "perceptual": perceptual.item(), "g_loss": g_loss.item()}

    # ------------------------------------------------------------------ state and export
    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        discriminator = self.accelerator.unwrap_model(self.discriminator)
        return {"trainable": fusion_state(self.trainable, self.trained_prefixes),
                "discriminator": discriminator.state_dict()}

    def load_trainable_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        result = self.trainable.load_state_dict(weights["trainable"], strict=False)
        if result.unexpected_keys or any(k.startswith(self.trained_prefixes) for k in result.missing_keys):
            raise StableSRError("checkpoint fusion weights do not match this autoencoder")
        self.accelerator.unwrap_model(self.discriminator).load_state_dict(weights["discriminator"])

    def export(self, folder: str | Path) -> Path:
        from stablesr.pipelines.stablesr import StableSRPipeline

        folder = Path(folder)
        if self.accelerator.is_main_process:
            vae = self.trainable
            if self.ema is not None:
                vae = copy.deepcopy(vae)
                self.ema.copy_to(vae)
            pipe = self.pipe
            exported = StableSRPipeline(unet=pipe.unet, sr_module=pipe.sr_module, vae=vae, scheduler=pipe.scheduler,
                                        prompt_embeds=pipe.prompt_embeds, cfw_trained=True)
            exported.save_pretrained(folder, safe_serialization=True)
        self.accelerator.wait_for_everyone()
        return folder


def train_cfw(config: CFWTrainConfig, *, pipeline=None, lpips: nn.Module | None = None) -> Path:
    """Run CFW training to `config.run.max_steps`; returns the exported pipeline folder."""
    return CFWTrainer(config, pipeline=pipeline, lpips=lpips).train()

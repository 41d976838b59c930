"""`stablesr train vae`: a KL autoencoder from scratch, the first stage of a from-scratch StableSR.

Latent diffusion's first stage (Rombach et al., CVPR 2022, https://arxiv.org/abs/2112.10752,
section 3 and appendix G) trained on HR photo crops:

    q(z | x) = N(mu, sigma^2),  z = mu + sigma * eps,  x_rec = D(z)
    L = l1 |x_rec - x| + f |F(x_rec) - F(x)| + k KL(q(z|x) || N(0, I)) + p LPIPS + g (-D_patch(x_rec))

F is the orthonormal 2-D FFT (its L1 term keeps the fine detail that pixel L1 alone blurs), means
are over elements; the PatchGAN hinge term (`training/discriminator.py`) starts at `disc_start`.
The model is our `CFWAutoencoderKL`, so the CFW fusion layers exist from the start; they stay
frozen here and train in `train cfw`. At export the latent scaling factor is set to
1 / std(z) over fixed crops, as SD's 0.18215 was chosen, so diffusion sees unit-variance latents.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from stablesr.data.datasets import HRFolderDataset
from stablesr.errors import StableSRError, WeightsNotFoundError
from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
from stablesr.training.config import VAEArchitecture, VAETrainConfig
from stablesr.training.discriminator import AdversarialUpdates, hinge_generator_loss
from stablesr.training.loop import Trainer

FUSION_PREFIXES = ("fusion_layer_1.", "fusion_layer_2.")


def build_vae(architecture: VAEArchitecture, *, initial_logvar: float = -6.0) -> CFWAutoencoderKL:
    """A fresh autoencoder. The log-variance half of quant_conv starts at `initial_logvar` (std 0.05):
    with the default 0 the posterior noise (std 1) drowns the young encoder's small means and the
    decoder learns only the mean colour for hundreds of steps."""
    levels = len(architecture.block_out_channels)
    if levels < 3:
        raise StableSRError("vae.block_out_channels needs >= 3 levels (CFW fuses at H/2 and H/4)")
    vae = _fresh_vae(architecture, levels)
    with torch.no_grad():
        vae.quant_conv.bias[architecture.latent_channels:] = initial_logvar
    return vae


def _fresh_vae(architecture: VAEArchitecture, levels: int) -> CFWAutoencoderKL:
    return CFWAutoencoderKL(block_out_channels=tuple(architecture.block_out_channels),
                            down_block_types=("DownEncoderBlock2D",) * levels,
                            up_block_types=("UpDecoderBlock2D",) * levels,
                            layers_per_block=architecture.layers_per_block,
                            latent_channels=architecture.latent_channels,
                            norm_num_groups=architecture.norm_num_groups,
                            mid_block_add_attention=architecture.mid_block_add_attention,
                            num_fuse_blocks=architecture.num_fuse_blocks,
                            fuse_growth_channels=architecture.fuse_growth_channels,
                            scaling_factor=1.0)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1)) = 0.5 (mean^2 + var - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def frequency_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean |FFT2(x) - FFT2(y)| with the orthonormal transform (Parseval: same scale as pixels)."""
    return (torch.fft.rfft2(x.float(), norm="ortho") - torch.fft.rfft2(y.float(), norm="ortho")).abs().mean()


class Reconstruct(nn.Module):
    """x (B, 3, S, S) in [-1, 1], eps -> (x_rec, mean, logvar): one module call per step (DDP-friendly)."""

    def __init__(self, vae: CFWAutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(image).latent_dist
        z = posterior.mean + posterior.std * eps  # reparameterised sample (B, C, S/f, S/f)
        return self.vae.decode(z).sample, posterior.mean, posterior.logvar


class VAETrainer(AdversarialUpdates, Trainer):
    """Trains every VAE weight except the CFW fusion layers; `dataset` (optional) replaces the HR folders."""

    def __init__(self, config: VAETrainConfig, *, dataset=None, lpips: nn.Module | None = None) -> None:
        if not config.data.hr_folders and dataset is None:
            raise StableSRError("data.hr_folders is empty: give at least one folder of HR training images")
        self.batch_size, self.num_workers = config.data.batch_size, config.data.num_workers
        self._dataset, self._lpips = dataset, lpips
        super().__init__(config)

    def build(self) -> None:
        config = self.config
        vae = build_vae(config.architecture).train()
        for name in ("fusion_layer_1", "fusion_layer_2"):
            getattr(vae, name).requires_grad_(False)
        self.trainable = vae
        self.perceptual = self._perceptual_loss()
        self._prepare_with_discriminator(Reconstruct(vae), [p for p in vae.parameters() if p.requires_grad], "vae")
        data = config.data
        self.dataset = self._dataset or HRFolderDataset(
            data.hr_folders, crop_size=data.crop_size, min_size=data.min_size, min_bytes=data.min_bytes,
            hflip=data.hflip, seed=config.run.seed, repeats=data.repeats, cache_images=data.cache_images)

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
            raise StableSRError(f"loss.perceptual_weight > 0 needs the LPIPS weights: {error}") from error

    # ------------------------------------------------------------------ one micro-batch
    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        gt = batch["gt"].to(self.accelerator.device) * 2 - 1  # (B, 3, S, S) in [-1, 1]
        factor = 2 ** (len(self.trainable.config.block_out_channels) - 1)
        latent_shape = (gt.shape[0], self.trainable.config.latent_channels, gt.shape[2] // factor,
                        gt.shape[3] // factor)
        eps = torch.randn(latent_shape, generator=generator, device=gt.device)
        with self.accelerator.autocast():
            reconstruction, mean, logvar = self.model(gt, eps)
        metrics = self._generator_update(reconstruction.float(), gt, mean.float(), logvar.float())
        disc_on = self.config.loss.disc_weight > 0 and self.step >= self.config.loss.disc_start
        metrics["d_loss"] = self._discriminator_update(reconstruction.detach().float(), gt) if disc_on else 0.0
        return metrics

    def _generator_update(self, reconstruction, gt, mean, logvar) -> dict[str, float]:
        weights = self.config.loss
        l1 = (reconstruction - gt).abs().mean()
        frequency = frequency_l1(reconstruction, gt)
        kl = kl_to_standard_normal(mean, logvar)
        perceptual = self.perceptual(reconstruction, gt).mean() if self.perceptual is not None else l1.new_zeros(())
        g_loss = l1.new_zeros(())
        if weights.disc_weight > 0 and self.step >= weights.disc_start:
            discriminator = self.accelerator.unwrap_model(self.discriminator).requires_grad_(False)
            g_loss = hinge_generator_loss(discriminator(reconstruction))
            discriminator.requires_grad_(True)
        loss = (weights.l1_weight * l1 + weights.frequency_weight * frequency + weights.kl_weight * kl
                + weights.perceptual_weight * perceptual + weights.disc_weight * g_loss)
        self.accelerator.backward(loss)
        self._clip([p for p in self.trainable.parameters() if p.requires_grad])
        self.optimizers["vae"].step()
        self.optimizers["vae"].zero_grad(set_to_none=True)
        psnr = -10 * torch.log10(((reconstruction - gt) / 2).pow(2).mean().clamp_min(1e-10))
        return {"loss": loss.item(), "l1": l1.item(), "frequency": frequency.item(), "kl": kl.item(),
                "g_loss": g_loss.item(), "psnr": psnr.item()}

    # ------------------------------------------------------------------ state and export
    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        discriminator = self.accelerator.unwrap_model(self.discriminator)
        return {"trainable": self.trainable.state_dict(), "discriminator": discriminator.state_dict()}

    def load_trainable_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        self.trainable.load_state_dict(weights["trainable"])
        self.accelerator.unwrap_model(self.discriminator).load_state_dict(weights["discriminator"])

    def exported_vae(self) -> CFWAutoencoderKL:
        vae = copy.deepcopy(self.trainable)
        if self.ema is not None:
            self.ema.copy_to(vae)
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, self.dataset))
        return vae.eval()

    def export(self, folder: str | Path) -> Path:
        """OUTPUT/vae/ (config.json + safetensors), loadable with CFWAutoencoderKL.from_pretrained."""
        folder = Path(folder)
        if self.accelerator.is_main_process:
            self.exported_vae().save_pretrained(folder / "vae", safe_serialization=True)
        self.accelerator.wait_for_everyone()
        return folder


@torch.no_grad()
def latent_scaling_factor(vae: CFWAutoencoderKL, dataset, *, count: int = 32) -> float:
    """1 / std of the posterior means of the first `count` items (SD's 0.18215 was chosen the same way)."""
    device = next(vae.parameters()).device
    items = torch.stack([dataset[index]["gt"] for index in range(min(count, len(dataset)))]).to(device)
    latents = torch.cat([vae.encode(chunk * 2 - 1).latent_dist.mean for chunk in items.split(8)])
    return float(1.0 / latents.float().std().clamp_min(1e-6))


def load_trained_vae(path: str | Path) -> CFWAutoencoderKL:
    """A `train vae` run folder (or its vae/ folder, or a pipeline folder) -> the frozen autoencoder."""
    path = Path(path).expanduser()
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"no VAE at {path} (expected vae/config.json written by `stablesr train vae`)")
    return CFWAutoencoderKL.from_pretrained(folder).eval().requires_grad_(False)

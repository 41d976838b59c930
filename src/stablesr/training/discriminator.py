"""PatchGAN discriminator and hinge losses for CFW training.

Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks" (pix2pix),
CVPR 2017, https://arxiv.org/abs/1611.07004: a fully convolutional classifier whose output is a
map of real/fake logits, one per overlapping receptive-field patch (70 x 70 pixels with 3 layers).
Hinge losses (Lim & Ye 2017, https://arxiv.org/abs/1705.02894) as used by taming-transformers /
latent diffusion for autoencoder training, which StableSR's CFW stage inherits:

    L_D = 0.5 * (mean(relu(1 - D(x_real))) + mean(relu(1 + D(x_fake))))
    L_G = -mean(D(x_fake))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2


def _stage(in_channels: int, out_channels: int, *, stride: int) -> list[nn.Module]:
    """4x4 conv (no bias, BatchNorm follows) -> BatchNorm -> LeakyReLU(0.2)."""
    return [nn.Conv2d(in_channels, out_channels, 4, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(LEAK, inplace=True)]


class PatchDiscriminator(nn.Module):
    """N-layer PatchGAN: image (B, 3, H, W) in [-1, 1] -> logits (B, 1, H', W').

    Layout (channels c = `channels`, n = `num_layers`): conv4x4/2 (3 -> c) + LeakyReLU; n - 1 stages
    conv4x4/2 + BN + LeakyReLU doubling channels (capped at 8c); one stride-1 stage to min(2^n, 8) c;
    a final stride-1 conv4x4 to one logit channel. For 256 x 256 inputs and n = 3: (B, 1, 30, 30).
    """

    def __init__(self, *, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(LEAK, inplace=True)]
        width = channels
        for layer in range(1, num_layers):
            next_width = channels * min(2**layer, 8)
            layers += _stage(width, next_width, stride=2)
            width = next_width
        next_width = channels * min(2**num_layers, 8)
        layers += _stage(width, next_width, stride=1)
        layers.append(nn.Conv2d(next_width, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) -> patch logits (B, 1, H', W')."""
        return self.layers(image)


def _init_weights(module: nn.Module) -> None:
    """pix2pix initialisation: convs N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]); 0 when the margins are met."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)]: the generator raises the discriminator's score of its output."""
    return -logits_fake.mean()


class AdversarialUpdates:
    """Mixin for trainers with a generator and `self.discriminator` (CFW, VAE): the discriminator's hinge
    update and gradient clipping. Needs `accelerator`, `config.optimizer.max_grad_norm` and
    `optimizers["discriminator"]`."""

    def _prepare_with_discriminator(self, generator: nn.Module, parameters: list[torch.Tensor], name: str) -> None:
        """Prepare `generator` (optimised over `parameters` as optimizers[name]) with a fresh PatchGAN and
        its own Adam, both from the config; sets model, discriminator, optimizers, accumulate_modules."""
        config = self.config
        discriminator = PatchDiscriminator(channels=config.loss.disc_channels, num_layers=config.loss.disc_layers)
        adam = dict(lr=config.optimizer.learning_rate, betas=config.optimizer.betas,
                    weight_decay=config.optimizer.weight_decay, eps=config.optimizer.eps)
        prepared = self.accelerator.prepare(generator, discriminator, torch.optim.Adam(parameters, **adam),
                                            torch.optim.Adam(discriminator.parameters(), **adam))
        self.model, self.discriminator, optimizer_g, optimizer_d = prepared
        self.optimizers = {name: optimizer_g, "discriminator": optimizer_d}
        self.accumulate_modules = [self.model, self.discriminator]

    def _discriminator_update(self, fake: torch.Tensor, gt: torch.Tensor) -> float:
        logits = self.discriminator(torch.cat([gt, fake]))  # (2B, 3, S, S) -> (2B, 1, S', S')
        logits_real, logits_fake = logits.chunk(2)
        d_loss = hinge_discriminator_loss(logits_real, logits_fake)
        self.accelerator.backward(d_loss)
        self._clip(list(self.discriminator.parameters()))
        self.optimizers["discriminator"].step()
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        return d_loss.item()

    def _clip(self, parameters: list[torch.Tensor]) -> None:
        max_norm = self.config.optimizer.max_grad_norm
        if max_norm > 0 and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(parameters, max_norm)

"""DeeDSR's degradation learner: block shapes, MoCo queue and loss identities, and that contrastive
training separates light / medium / heavy synthetic degradations (tiny model, CPU)."""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from stablesr.models.degradation_learner import (
    DegradationLearner,
    MoCo,
    contrastive_loss,
    info_nce_logits,
    two_patches,
)

TINY = dict(block="basic", layers=(1, 1), widths=(8, 16), stem_channels=8)
# (blur sigma in pixels, Gaussian noise std) of the three synthetic degradation levels
LEVELS = [(0.4, 0.0), (1.2, 0.04), (2.5, 0.12)]


def test_default_is_the_wide_basic_resnet_with_a_1024_vector():
    defaults = inspect.signature(DegradationLearner.__init__).parameters
    assert (defaults["block"].default, defaults["layers"].default, defaults["widths"].default) == (
        "basic", (3, 4, 6, 3), (128, 256, 512, 1024))
    tiny = DegradationLearner(**TINY)
    assert tiny.vector_dim == 16 and tiny(torch.rand(2, 3, 32, 32)).shape == (2, 16)
    bottleneck = DegradationLearner(block="bottleneck", layers=(1, 1), widths=(4, 8), stem_channels=8)
    assert bottleneck.vector_dim == 32 and bottleneck(torch.rand(1, 3, 32, 32)).shape == (1, 32)


def test_info_nce_identities():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    queue = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # columns are keys (D, K)
    logits = info_nce_logits(q, q, queue, 0.5)
    assert torch.equal(logits, torch.tensor([[2.0, 0.0, -2.0], [2.0, 2.0, 0.0]]))
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
                - math.log(math.exp(2) / (2 * math.exp(2) + 1))) / 2
    assert abs(contrastive_loss(q, q, queue, 0.5).item() - expected) < 1e-6


def test_queue_wraps_and_momentum_follows_the_encoder():
    torch.manual_seed(0)
    moco = MoCo(DegradationLearner(**TINY), head_dim=4, queue_size=5, momentum=0.0)
    moco(torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16))
    moco(torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16))
    assert int(moco.queue_pointer) == 1 and torch.allclose(moco.queue.norm(dim=0), torch.ones(5))
    for p, p_m in zip(moco.encoder.parameters(), moco.momentum_encoder.parameters()):
        assert torch.equal(p, p_m)  # momentum 0: the key encoder is a copy of the query encoder


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = 6
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)  # (3, 1, 1, k)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), kernel, groups=3)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.transpose(2, 3), groups=3)


def textures(count: int, generator: torch.Generator, size: int = 48) -> torch.Tensor:
    """Random coloured textures (B, 3, size, size) in [0, 1]."""
    coarse = torch.rand(count, 3, size // 4, size // 4, generator=generator)
    fine = torch.rand(count, 3, size, size, generator=generator)
    return 0.6 * F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) + 0.4 * fine


def degrade(images: torch.Tensor, sigmas: torch.Tensor, noises: torch.Tensor, generator: torch.Generator):
    """Per-image Gaussian blur (sigma) then Gaussian noise (std), clamped to [0, 1]."""
    blurred = torch.cat([_blur(image[None], float(sigma)) for image, sigma in zip(images, sigmas)])
    return (blurred + noises.view(-1, 1, 1, 1) * torch.randn(blurred.shape, generator=generator)).clamp(0, 1)


def level_batch(per_level: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh textures at the three LEVELS: images (3 per_level, 3, 48, 48), labels (3 per_level,)."""
    labels = torch.arange(3).repeat_interleave(per_level)
    sigmas = torch.tensor([LEVELS[level][0] for level in labels])
    noises = torch.tensor([LEVELS[level][1] for level in labels])
    return degrade(textures(len(labels), generator), sigmas, noises, generator), labels


def nearest_centroid_accuracy(encoder: DegradationLearner, seed: int) -> float:
    """Centroids of 50 patches per level, accuracy on 50 held-out patches per level (other textures)."""
    generator = torch.Generator().manual_seed(seed)
    encoder.eval()
    with torch.no_grad():
        vectors = []
        for _ in range(2):
            images, labels = level_batch(50, generator)
            patches = two_patches(images, patch_size=24, generator=generator)[0]
            vectors.append((F.normalize(encoder(patches), dim=1), labels))
    encoder.train()
    (train_vectors, train_labels), (test_vectors, test_labels) = vectors
    centroids = torch.stack([train_vectors[train_labels == level].mean(0) for level in range(3)])  # (3, D)
    return (torch.cdist(test_vectors, centroids).argmin(dim=1) == test_labels).float().mean().item()


def test_contrastive_training_separates_degradation_levels():
    """Train on continuous random degradations (each image its own blur and noise, as DASR), probe on three
    fixed levels; 400 steps of batch 24 (a few seconds)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    moco = MoCo(DegradationLearner(**TINY), head_dim=16, queue_size=96, momentum=0.99, temperature=0.07)
    untrained = nearest_centroid_accuracy(moco.encoder, seed=1)
    optimizer = torch.optim.SGD(moco.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(400):
        sigmas = 0.3 + 2.7 * torch.rand(24, generator=generator)
        noises = 0.15 * torch.rand(24, generator=generator)
        images = degrade(textures(24, generator), sigmas, noises, generator)
        query, key = two_patches(images, patch_size=24, generator=generator)
        loss = moco(query, key)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    accuracy = nearest_centroid_accuracy(moco.encoder, seed=1)
    print(f"loss {first:.3f} -> {last:.3f}; nearest-centroid accuracy {untrained:.3f} untrained -> {accuracy:.3f}")
    assert last < first - 0.5
    assert accuracy >= 0.75 and accuracy >= untrained + 0.1  # chance: 1/3

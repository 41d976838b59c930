"""DeeDSR stage 1: the degradation learner by MoCo contrastive learning on degraded LR images.

Bi et al., ECCV 2024 (https://arxiv.org/abs/2404.00661), section 3.2; MoCo v2 (He et al. 2020,
https://arxiv.org/abs/1911.05722; Chen et al. 2020, https://arxiv.org/abs/2003.04297):

    lr = degrade(hr crop)                        # Real-ESRGAN second order, on the fly (data/)
    x_q, x_k = two patches of the same lr        # same degradation, different content
    loss = InfoNCE(q(x_q), k_momentum(x_k), queue) / tau

The export is `OUTPUT/degradation_learner/` (a `DegradationLearner` folder), which `stablesr train
deedsr` reads as `degradation_learner`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from stablesr.data.datasets import HRFolderDataset
from stablesr.data.degradations import preset_settings
from stablesr.errors import StableSRError
from stablesr.models.degradation_learner import DegradationLearner, MoCo, two_patches
from stablesr.training.config import DegradationTrainConfig
from stablesr.training.loop import Trainer, warmup_factor

EXPORT_FOLDER = "degradation_learner"


def decayed_learning_rate(config: DegradationTrainConfig, step: int) -> float:
    """Step decay: learning_rate * factor^(number of lr_decay_at fractions of max_steps already passed)."""
    optimizer, max_steps = config.optimizer, config.run.max_steps
    passed = sum(step >= math.ceil(fraction * max_steps) for fraction in optimizer.lr_decay_at)
    return optimizer.learning_rate * optimizer.lr_decay_factor**passed


class DegradationTrainer(Trainer):
    """Stage-1 trainer. `dataset` (optional) replaces the HR folders (items with "lr" (3, h, w) in [0, 1])."""

    def __init__(self, config: DegradationTrainConfig, *, dataset=None) -> None:
        data = config.data
        if not data.hr_folders and dataset is None:
            raise StableSRError("data.hr_folders is empty: give at least one folder of HR training images")
        if config.contrastive.patch_size > data.crop_size // data.scale:
            raise StableSRError(f"contrastive.patch_size {config.contrastive.patch_size} exceeds the LR crop "
                                f"{data.crop_size // data.scale} (data.crop_size / data.scale)")
        self.batch_size, self.num_workers = data.batch_size, data.num_workers
        self._dataset = dataset if dataset is not None else HRFolderDataset(
            data.hr_folders, crop_size=data.crop_size, min_size=data.min_size, min_bytes=data.min_bytes,
            hflip=data.hflip, seed=config.run.seed, degradation=preset_settings(data.degradation, scale=data.scale),
            repeats=data.repeats, cache_images=data.cache_images)
        super().__init__(config)

    def build(self) -> None:
        config, accelerator = self.config, self.accelerator
        contrastive = config.contrastive
        encoder = DegradationLearner(**vars(config.architecture))
        queue_generator = torch.Generator().manual_seed(config.run.seed)
        self.moco = MoCo(encoder, head_dim=contrastive.head_dim, queue_size=contrastive.queue_size,
                         momentum=contrastive.momentum, temperature=contrastive.temperature,
                         generator=queue_generator).train()
        self.trainable = self.moco
        optimizer = torch.optim.SGD([p for p in self.moco.parameters() if p.requires_grad],
                                    lr=config.optimizer.learning_rate, momentum=config.optimizer.momentum,
                                    weight_decay=config.optimizer.weight_decay)
        self.model, optimizer = accelerator.prepare(self.moco, optimizer)
        self.optimizers, self.accumulate_modules = {"moco": optimizer}, [self.model]
        self.dataset = self._dataset
        self.warmup = warmup_factor(config.optimizer.warmup_steps)

    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        lr_image = batch["lr"].to(self.accelerator.device)  # (B, 3, h, w) in [0, 1]
        query, key = two_patches(lr_image, patch_size=self.config.contrastive.patch_size, generator=generator)
        optimizer = self.optimizers["moco"]
        learning_rate = decayed_learning_rate(self.config, self.step) * self.warmup(self.step)
        for group in optimizer.param_groups:  # the loop's LambdaLR only knows the warm-up
            group["lr"] = learning_rate
        loss = self.model(query, key)
        self.accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item()}

    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"trainable": self.moco.state_dict()}  # encoders, heads, queue and its pointer

    def load_trainable_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        self.moco.load_state_dict(weights["trainable"])

    def export(self, folder: Path) -> Path:
        """Write OUTPUT/degradation_learner/ (the query encoder; its EMA weights when EMA is on)."""
        if self.accelerator.is_main_process:
            moco = self.moco
            if self.ema is not None:
                moco = copy.deepcopy(moco)
                self.ema.copy_to(moco)
            moco.encoder.eval().save_pretrained(Path(folder) / EXPORT_FOLDER, safe_serialization=True)
        self.accelerator.wait_for_everyone()
        return Path(folder)

"""Degrade whole GT batches on their device, then mix them through a training-pair queue.

Real-ESRGAN (Wang et al., ICCVW 2021), https://arxiv.org/abs/2107.10833: the resize/noise draws
are shared by a batch, so a shuffle queue (size 180 in Real-ESRGAN and StableSR, 192 in CCSR)
mixes pairs from many batches. Until the queue is full a batch passes through and is stored;
afterwards the queue is shuffled, its first B pairs are returned and replaced by the new batch.
"""

from __future__ import annotations

import json

import torch

from stablesr.data.degradations import DegradationSettings, degrade, params_to_record


class BatchDegrader:
    """gt (B, 3, H, W) on any device -> {"gt", "lr", "lr_up", "params"} after the shuffle queue.

    "gt"/"lr_up": (B, 3, H, W), "lr": (B, 3, H/s, W/s), "params": list of B JSON records.
    `queue_size` 0 turns the queue off; otherwise it must be a multiple of the batch size.
    """

    def __init__(self, settings: DegradationSettings, *, queue_size: int = 180, generator: torch.Generator):
        self.settings, self.queue_size, self.generator = settings, queue_size, generator
        self.queue: dict[str, torch.Tensor] = {}
        self.queue_params: list[str] = []
        self.filled = 0

    def __call__(self, gt: torch.Tensor) -> dict:
        batch, params = degrade(gt, self.settings, generator=self.generator)
        pairs = {"gt": batch.gt, "lr": batch.lr, "lr_up": batch.lr_up}
        records = [json.dumps(params_to_record(p)) for p in params]
        if self.queue_size == 0:
            return {**pairs, "params": records}
        if self.queue_size % gt.shape[0]:
            raise ValueError(f"queue_size {self.queue_size} must be a multiple of the batch size {gt.shape[0]}")
        return self._exchange(pairs, records)

    def _exchange(self, pairs: dict[str, torch.Tensor], records: list[str]) -> dict:
        size = len(records)
        if not self.queue:
            self.queue = {key: value.new_empty((self.queue_size, *value.shape[1:])) for key, value in pairs.items()}
            self.queue_params = [""] * self.queue_size
        if self.filled < self.queue_size:  # still filling: store and pass the batch through
            for key, value in pairs.items():
                self.queue[key][self.filled : self.filled + size] = value
            self.queue_params[self.filled : self.filled + size] = records
            self.filled += size
            return {**pairs, "params": records}
        order = torch.randperm(self.queue_size, generator=self.generator)
        self.queue = {key: value[order.to(value.device)] for key, value in self.queue.items()}
        self.queue_params = [self.queue_params[i] for i in order.tolist()]
        out = {key: value[:size].clone() for key, value in self.queue.items()}
        out["params"] = self.queue_params[:size]
        for key, value in pairs.items():
            self.queue[key][:size] = value
        self.queue_params[:size] = records
        return out

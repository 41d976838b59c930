"""An endless, resumable, sharded stream of training batches.

Exact resume needs the data order to be a pure function of (seed, position): epoch e visits the
items in `randperm(N)` seeded by (seed, e); the global stream is epoch 0, epoch 1, ...; process r
of W takes global positions r, r + W, r + 2W, ... . A run resumed at optimizer step s skips the
first s * accumulation * batch_size items of its shard without loading them. The dataset gets
the epoch with each index, so its per-item randomness (crops, degradations) depends on
(seed, epoch, index) only, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stablesr.data.datasets import item_seed


class StreamSampler(Sampler):
    """Yields (epoch, index) pairs forever for process `rank` of `world`, from its item `start`."""

    def __init__(self, size: int, *, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        self.size, self.seed, self.rank, self.world, self.start = size, seed, rank, world, start

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(item_seed(self.seed, epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start * self.world + self.rank
        epoch, order = -1, []
        while True:
            item_epoch, offset = divmod(position, self.size)
            if item_epoch != epoch:
                epoch, order = item_epoch, self.permutation(item_epoch)
            yield epoch, order[offset]
            position += self.world


class EpochIndexed(Dataset):
    """dataset[(epoch, index)] -> the item of `index` drawn for `epoch` (datasets with `set_epoch`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def batch_stream(dataset: Dataset, *, batch_size: int, seed: int, rank: int, world: int, start_item: int,
                 num_workers: int) -> Iterator[dict]:
    """Endless iterator of collated batches for one process, starting at its item `start_item`."""
    sampler = StreamSampler(len(dataset), seed=seed, rank=rank, world=world, start=start_item)
    loader = DataLoader(EpochIndexed(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=True, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    return iter(loader)


def step_generator(device: torch.device, seed: int, *keys: int) -> torch.Generator:
    """A generator on `device` seeded by (seed, *keys): the noise, t and posterior draws of one micro-batch."""
    return torch.Generator(device=device).manual_seed(item_seed(seed, *keys))

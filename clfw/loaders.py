"""Loaders over in-memory task data: a resumable, rank-sharded training loader and exact evaluation shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clfw.data import Batch, BatchTransform, TaskData


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A generator determined by ``(seed, epoch, salt)`` alone, so every rank and every resumed run draws the same."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + salt)


def shard(order: Tensor, rank: int, world_size: int, pad: bool) -> Tensor:
    """This rank's share of ``order`` (every ``world_size``-th element from ``rank``).

    With ``pad``, ``order`` is first padded by wrapping around so every rank gets the same count (as
    ``DistributedSampler`` does for training, so ranks step together). Without it, the shards partition ``order``
    exactly, which evaluation needs for counts that sum to the single-process value.

    >>> shard(torch.arange(5), 1, 2, pad=False).tolist()
    [1, 3]
    >>> shard(torch.arange(5), 1, 2, pad=True).tolist()
    [1, 3, 0]
    """
    if world_size > 1 and pad and len(order) % world_size:
        extra = world_size - len(order) % world_size
        order = torch.cat([order, order.repeat(extra // max(len(order), 1) + 1)[:extra]])
    return order[rank::world_size]


class _Batches(Dataset):
    """Map-style dataset whose items are whole batches, so workers gather and transform a batch at a time."""

    def __init__(self, data: TaskData, batches: list[Tensor], transform: BatchTransform | None) -> None:
        self.data, self.batches, self.transform = data, batches, transform

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        return self.data.batch(self.batches[i], self.transform)


class TaskLoader:
    """Training loader over in-memory data that can resume in the middle of an epoch.

    The epoch's sample order is given (the datamodule derives it from the seed and the epoch), this rank takes its
    shard, and batches are served in order. ``state_dict()`` records how many batches were served; Lightning stores
    it in the checkpoint and hands it back through ``load_state_dict()`` on resume, so the next ``__iter__`` skips
    exactly the batches the interrupted run had already trained on. It is deliberately not a ``DataLoader``
    subclass, so Lightning does not replace its sampler under DDP: sharding is done here.

    Args:
        data: The samples to serve.
        order: Positions into ``data`` for this epoch, in serving order (all ranks pass the same).
        batch_size: Samples per batch on this rank.
        transform: Batch transform applied to the inputs.
        epoch: The stream epoch this loader serves (checked on resume).
        rank: This process's rank.
        world_size: Number of processes.
        drop_last: Drop a last incomplete batch.
        num_workers: Worker processes that gather and transform batches (0: in the main process).
    """

    def __init__(
        self,
        data: TaskData,
        order: Tensor,
        batch_size: int,
        transform: BatchTransform | None = None,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data, self.transform, self.epoch, self.num_workers = data, transform, epoch, num_workers
        mine = shard(order, rank, world_size, pad=True)
        n = len(mine) // batch_size if drop_last else -(-len(mine) // batch_size)
        self.batches = [mine[i * batch_size : (i + 1) * batch_size] for i in range(n)]
        self._served = 0
        self._resume_from = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        start, self._resume_from = self._resume_from, 0
        self._served = start
        dataset = _Batches(self.data, self.batches[start:], self.transform)
        if self.num_workers > 0:
            source: Any = DataLoader(
                dataset, batch_size=None, shuffle=False, num_workers=self.num_workers, persistent_workers=False
            )
        else:
            source = (dataset[i] for i in range(len(dataset)))
        for batch in source:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("epoch") != self.epoch:
            raise ValueError(
                f"loader state is for epoch {state.get('epoch')}, but this loader serves epoch {self.epoch}"
            )
        self._resume_from = int(state["served"]) % max(len(self.batches), 1)


class EvalLoader:
    """Evaluation loader: this rank's exact (unpadded) shard of ``data`` in fixed order, in batches.

    Summing per-rank correct/total counts over ranks gives exactly the single-process counts.
    """

    def __init__(
        self,
        data: TaskData,
        batch_size: int,
        transform: BatchTransform | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data, self.transform, self.batch_size = data, transform, batch_size
        self.positions = shard(torch.arange(len(data)), rank, world_size, pad=False)

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self.positions), self.batch_size):
            yield self.data.batch(self.positions[i : i + self.batch_size], self.transform)

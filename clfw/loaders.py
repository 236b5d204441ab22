"""Loaders over in-memory task data: a resumable, rank-sharded training loader and exact evaluation shards."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clfw.data import Batch, BatchTransform, TaskData
from clfw.seeding import derived_generator


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A generator determined by ``(seed, epoch, salt)`` alone, so every rank and every resumed run draws the same."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + salt)


def order_key(order: Tensor) -> int:
    """A 62-bit digest of an epoch's serving order, which the datamodule draws from ``(data seed, epoch)``.

    It keys the training loader's per-batch augmentation generators, so they follow the data seed without the loader
    being told it. Equal orders give equal keys on every rank, process and machine.

    >>> order_key(torch.tensor([2, 0, 1])) == order_key(torch.tensor([2, 0, 1])) != order_key(torch.tensor([0, 2, 1]))
    True
    """
    digest = hashlib.blake2b(order.to(torch.int64).contiguous().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


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
    """Map-style dataset whose items are whole batches, so workers gather and transform a batch at a time.

    Item ``i`` is batch ``first + i`` of the epoch. Its transform runs with the global CPU generator set to a state
    derived from ``(key, first + i)`` and restored afterwards, so its random draws (crops, flips) depend on the batch
    alone: not on the process that transforms it, on what that process drew before, or on where a resume started.
    """

    def __init__(
        self, data: TaskData, batches: list[Tensor], transform: BatchTransform | None, key: tuple[int, ...], first: int
    ) -> None:
        self.data, self.batches, self.transform, self.key, self.first = data, batches, transform, key, first

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        if self.transform is None:
            return self.data.batch(self.batches[i])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.set_state(derived_generator(*self.key, self.first + i).get_state())
            return self.data.batch(self.batches[i], self.transform)


class TaskLoader:
    """Training loader over in-memory data that can resume in the middle of an epoch.

    The epoch's sample order is given (the datamodule derives it from the seed and the epoch), this rank takes its
    shard, and batches are served in order. ``state_dict()`` records how many batches were served; Lightning stores
    it in the checkpoint and hands it back through ``load_state_dict()`` on resume, so the next ``__iter__`` skips
    exactly the batches the interrupted run had already trained on. It is deliberately not a ``DataLoader``
    subclass, so Lightning does not replace its sampler under DDP: sharding is done here.

    The transform of batch ``b`` (augmentation) runs with the global CPU generator seeded from ``(order_key(order),
    epoch, rank, b)`` and restored afterwards, and worker processes get their own generator. So the batches, and the
    global generator that the model draws from (dropout), are the same with any ``num_workers`` and after a resume.
    Transforms should draw from torch's global CPU generator (NumPy's and Python's are not seeded per batch).

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
        self._key = (order_key(order), epoch, rank)
        self._served = 0
        self._resume_from = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        start, self._resume_from = self._resume_from, 0
        self._served = start
        dataset = _Batches(self.data, self.batches[start:], self.transform, self._key, start)
        if self.num_workers > 0:
            # its own generator: the workers' base seed would otherwise be drawn from the global one (shifting dropout)
            source: Any = DataLoader(
                dataset,
                batch_size=None,
                shuffle=False,
                num_workers=self.num_workers,
                persistent_workers=False,
                generator=derived_generator(*self._key, start, 1),
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

"""Loaders over task data: a resumable, rank-sharded training loader and exact evaluation shards.

Data held in memory is gathered in the main process or in per-epoch workers. Data on disk (:class:`~clfw.lazy.
FileInputs`, the lazy path) is decoded by worker processes kept across the epochs of a task (:class:`WorkerPool`);
either way batch ``b`` of an epoch is the same bytes, transformed with the same random draws.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from clfw.data import Batch, BatchTransform, TaskData, draws_random
from clfw.lazy import is_lazy
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


def rank_batches(order: Tensor, batch_size: int, rank: int, world_size: int, drop_last: bool = False) -> list[Tensor]:
    """This rank's training batches of an epoch served in ``order``: step ``s`` trains on the global batch
    ``order[s * B * W : (s + 1) * B * W]`` (``B`` = ``batch_size`` per rank, ``W`` = ``world_size``), which rank ``r``
    takes as its ``r``-th consecutive block of ``B``. So the ranks' batches, concatenated in rank order (as a gather
    does), are the global batch in serving order: what one process with batch ``B * W`` trains on at that step.

    The last global batch, if shorter, is split into ``W`` consecutive blocks whose sizes differ by at most one. Only
    when it has fewer than ``W`` samples does a rank repeat one (the epoch's first, as ``DistributedSampler`` pads), so
    every rank takes the same number of steps.

    >>> [[b.tolist() for b in rank_batches(torch.arange(10), 2, rank, 2)] for rank in (0, 1)]
    [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7], [9]]]
    >>> [b.tolist() for b in rank_batches(torch.arange(9), 2, 1, 2)]
    [[2, 3], [6, 7], [0]]
    """
    step, batches = batch_size * world_size, []
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        if len(chunk) == step:
            batches.append(chunk[rank * batch_size : (rank + 1) * batch_size])
        elif not drop_last:
            if len(chunk) < world_size:
                chunk = torch.cat([chunk, order[: world_size - len(chunk)]])
            batches.append(chunk.tensor_split(world_size)[rank])
    return batches


class _Batches(Dataset):
    """Map-style dataset whose items are whole batches, so workers gather and transform a batch at a time.

    Item ``i`` is batch ``first + i`` of the epoch. Its transform runs with the global CPU generator set to a state
    derived from ``(key, first + i)`` and restored afterwards, so its random draws (crops, flips) depend on the batch
    alone: not on the process that transforms it, on what that process drew before, or on where a resume started.
    A transform that draws nothing (:func:`~clfw.data.draws_random`) runs without touching the generator.
    """

    def __init__(
        self,
        data: TaskData,
        batches: list[Tensor],
        transform: BatchTransform | None,
        key: tuple[int, ...],
        first: int,
        keep_raw: bool = False,
    ) -> None:
        self.data, self.batches, self.transform, self.key, self.first = data, batches, transform, key, first
        self.keep_raw = keep_raw
        self.seeded = draws_random(transform)  # else the generator's state would be set and restored for nothing

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch | tuple[Batch, Tensor]:
        if self.keep_raw:
            return _raw_batch(self.data, self.batches[i], self.transform, self.key, self.first + i)
        if not self.seeded:
            return self.data.batch(self.batches[i], self.transform)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.set_state(derived_generator(*self.key, self.first + i).get_state())
            return self.data.batch(self.batches[i], self.transform)


def _raw_batch(
    data: TaskData, positions: Tensor, transform: BatchTransform | None, key: tuple[int, ...], b: int
) -> tuple[Batch, Tensor]:
    """Batch ``b`` of an epoch (as :class:`_Batches` makes it) and its untransformed inputs, which the lazy path hands
    to replay memories instead of decoding them again."""
    raw = data.x[positions]
    if transform is None:
        x = raw.clone()  # the batch may be changed in place; the kept copy must not
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.set_state(derived_generator(*key, b).get_state())
            x = transform(raw)
    return Batch(x, data.y[positions], data.task[positions], data.index[positions]), raw


class _Jobs(Sampler):
    """The jobs of the current epoch, read in the main process: a persistent ``DataLoader`` asks its sampler for a new
    iterator at every epoch, so the workers it keeps receive each epoch's batches without being restarted."""

    def __init__(self) -> None:
        self.jobs: list[tuple[list[int], tuple[int, ...], int]] = []

    def __iter__(self) -> Iterator[tuple[list[int], tuple[int, ...], int]]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


class _JobBatches(Dataset):
    """In a worker: job ``(positions, key, b)`` -> batch ``b`` of an epoch and its raw inputs (:func:`_raw_batch`)."""

    def __init__(self, data: TaskData, transform: BatchTransform | None) -> None:
        self.data, self.transform = data, transform

    def __getitem__(self, job: tuple[list[int], tuple[int, ...], int]) -> tuple[Batch, Tensor]:  # type: ignore[override]
        positions, key, b = job
        return _raw_batch(self.data, torch.tensor(positions, dtype=torch.long), self.transform, key, b)


class WorkerPool:
    """Worker processes that gather, decode and transform the batches of one training set, kept across the epochs
    of a task (``persistent_workers``): the datamodule makes one per task for data on disk, so workers start once per
    task, not once per epoch. Each epoch's :class:`TaskLoader` hands it its batches as jobs; what a job yields is
    decided by the job alone (positions, augmentation key, batch number), so it equals the batch made in the main
    process or in fresh workers.

    Args:
        data: The training set of the task (or of the tasks seen so far).
        transform: Batch transform the workers apply (``None`` on an accelerator, where it runs on the device).
        num_workers: Worker processes.
        pin_memory: Put batches in page-locked memory for faster transfer to an accelerator.
    """

    def __init__(
        self, data: TaskData, transform: BatchTransform | None, num_workers: int, pin_memory: bool = False
    ) -> None:
        if num_workers <= 0:
            raise ValueError(f"a worker pool needs num_workers >= 1, got {num_workers}")
        self.data, self._jobs = data, _Jobs()
        self.loader = DataLoader(
            _JobBatches(data, transform),
            batch_size=None,
            sampler=self._jobs,
            num_workers=num_workers,
            persistent_workers=True,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(0),  # never the global one, which dropout draws from
        )

    def serve(self, jobs: list[tuple[list[int], tuple[int, ...], int]]) -> Iterator[Any]:
        """Iterates over the results of ``jobs``, in order (any earlier pass still running is abandoned)."""
        self._jobs.jobs = jobs
        return iter(self.loader)

    def close(self) -> None:
        """Stops the workers."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None


class TaskLoader:
    """Training loader over task data (in memory or on disk) that can resume in the middle of an epoch.

    The epoch's sample order is given (the datamodule derives it from the seed and the epoch), this rank takes its
    block of each step's global batch (:func:`rank_batches`), and batches are served in order. ``state_dict()``
    records how many batches were served; Lightning stores it in the checkpoint and hands it back through
    ``load_state_dict()`` on resume, so the next ``__iter__`` skips exactly the batches the interrupted run had already
    trained on. It is deliberately not a ``DataLoader`` subclass, so Lightning does not replace its sampler under DDP:
    sharding is done here.

    The transform of batch ``b`` (augmentation) runs with the global CPU generator seeded from ``(order_key(order),
    epoch, rank, b)`` and restored afterwards, and worker processes get their own generator. So the batches, and the
    global generator that the model draws from (dropout), are the same with any ``num_workers`` and after a resume.
    Transforms should draw from torch's global CPU generator (NumPy's and Python's are not seeded per batch).

    Data on disk (``data.x`` a :class:`~clfw.lazy.FileInputs`) is decoded where the batch is made: in the main
    process, in per-epoch workers, or in a ``pool`` kept across a task's epochs. The loader then also keeps the
    untransformed inputs of its last few batches (:meth:`raw_inputs`), so replay memories store the decoded sample
    without reading the file again.

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
        pin_memory: Put batches in page-locked memory (for an accelerator).
        pool: Persistent workers to make the batches (lazy data; ``num_workers`` is then the pool's).
    """

    #: How many recent batches' untransformed inputs the lazy path keeps for :meth:`raw_inputs`.
    RECENT = 8

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
        pin_memory: bool = False,
        pool: WorkerPool | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data, self.transform, self.epoch, self.num_workers = data, transform, epoch, num_workers
        self.pin_memory, self.pool, self.lazy = pin_memory, pool, is_lazy(data.x)
        self._recent: deque[tuple[Tensor, Tensor, Tensor]] = deque(maxlen=self.RECENT)
        self.batches = rank_batches(order, batch_size, rank, world_size, drop_last)
        self._key = (order_key(order), epoch, rank)
        self._served = 0
        self._resume_from = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        start, self._resume_from = self._resume_from, 0
        self._served = start
        self._recent.clear()
        if self.pool is not None:
            jobs = [(b.tolist(), self._key, start + i) for i, b in enumerate(self.batches[start:])]
            source: Any = self.pool.serve(jobs)
        else:
            dataset = _Batches(self.data, self.batches[start:], self.transform, self._key, start, keep_raw=self.lazy)
            if self.num_workers > 0:
                # its own generator: the workers' base seed would otherwise come from the global one (shifting dropout)
                source = DataLoader(
                    dataset,
                    batch_size=None,
                    shuffle=False,
                    num_workers=self.num_workers,
                    persistent_workers=False,
                    pin_memory=self.pin_memory,
                    generator=derived_generator(*self._key, start, 1),
                )
            else:
                source = (dataset[i] for i in range(len(dataset)))
                if self.pin_memory:
                    source = (_pinned(item) for item in source)
        for item in source:
            self._served += 1
            if self.lazy:
                batch, raw = item
                self._recent.append((batch.task, batch.index, raw))
                yield batch
            else:
                yield item

    def raw_inputs(self, task: Tensor, index: Tensor) -> Tensor | None:
        """The untransformed inputs of a recently served batch of lazy data whose ``(task, index)`` pairs are exactly
        ``task`` and ``index`` (CPU tensors), else ``None``."""
        for t, i, raw in reversed(self._recent):
            if len(i) == len(index) and torch.equal(i, index) and torch.equal(t, task):
                return raw
        return None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("epoch") != self.epoch:
            raise ValueError(
                f"loader state is for epoch {state.get('epoch')}, but this loader serves epoch {self.epoch}"
            )
        self._resume_from = int(state["served"]) % max(len(self.batches), 1)


def _pinned(item: Any) -> Any:
    """A batch (or ``(batch, raw inputs)``) with its batch in page-locked memory."""
    if isinstance(item, Batch):
        return Batch(*(t.pin_memory() for t in item))
    batch, raw = item
    return _pinned(batch), raw


class _EvalBatches(Dataset):
    """Map-style dataset of evaluation batches, for workers that decode data on disk."""

    def __init__(self, data: TaskData, chunks: list[Tensor], transform: BatchTransform | None) -> None:
        self.data, self.chunks, self.transform = data, chunks, transform

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Batch:
        return self.data.batch(self.chunks[i], self.transform)


class EvalLoader:
    """Evaluation loader: this rank's exact (unpadded) shard of ``data`` in fixed order, in batches.

    Summing per-rank correct/total counts over ranks gives exactly the single-process counts. Data in memory is
    gathered in the calling process; data on disk is decoded by ``num_workers`` worker processes when there are any.
    """

    def __init__(
        self,
        data: TaskData,
        batch_size: int,
        transform: BatchTransform | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.data, self.transform, self.batch_size = data, transform, batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.positions = shard(torch.arange(len(data)), rank, world_size, pad=False)

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.num_workers > 0 and is_lazy(self.data.x) and len(self) > 0:
            chunks = list(self.positions.split(self.batch_size))
            yield from DataLoader(
                _EvalBatches(self.data, chunks, self.transform),
                batch_size=None,
                num_workers=min(self.num_workers, len(chunks)),
                pin_memory=self.pin_memory,
                generator=torch.Generator().manual_seed(0),  # never the global one, which dropout draws from
            )
            return
        for i in range(0, len(self.positions), self.batch_size):
            yield self.data.batch(self.positions[i : i + self.batch_size], self.transform)

"""Replay memories: tensors inside the strategy, so they ride in checkpoints and follow the device."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

_MIX = 1_000_003


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * _MIX + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(t: Tensor, world: int) -> Tensor:
    """Concatenation of ``t`` from every rank, in rank order (first dimensions may differ across ranks)."""
    size = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


class ReservoirBuffer(nn.Module):
    """Fixed-capacity replay memory filled by reservoir sampling (Vitter 1985, algorithm R).

    When the ``n``-th sample is offered (``n`` counting it), it fills slot ``n - 1`` while ``n <= capacity``; after
    that it replaces slot ``j``, with ``j`` uniform on ``{0, ..., n - 1}``, when ``j < capacity``. So after ``n``
    samples each of them is held with probability ``capacity / n``.

    It stores whatever named fields it is given (raw ``uint8`` inputs stay ``uint8``; labels, task ids, logits ...) as
    buffers, allocated at the first insertion and rebuilt from checkpoints. Insertion and sampling cost O(batch), not
    O(capacity). Random draws come from generators derived from ``(seed, samples seen)`` for insertion and
    ``(seed, rank, sample calls)`` for sampling, both counters being buffers, so a resumed run draws exactly what an
    uninterrupted one would.

    Under DDP, :meth:`add` gathers each field from every rank and inserts the gathered batch in rank order with the same
    draws on every rank: all ranks hold the same buffer, the one a single process would hold over the gathered stream.
    Each rank draws its own replay minibatches.

    Args:
        capacity: Number of samples held.
        seed: Seed of the insertion and sampling draws.
    """

    def __init__(self, capacity: int = 500, seed: int = 0) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.seed = capacity, seed
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("sample_calls", torch.zeros((), dtype=torch.long))
        self.fields: list[str] = []

    def __len__(self) -> int:
        return min(int(self.seen), self.capacity)

    def _allocate(self, fields: dict[str, Tensor]) -> None:
        for name, value in fields.items():
            self.register_buffer(
                name, torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=value.device)
            )
        self.fields = list(fields)

    @torch.no_grad()
    def add(self, **fields: Tensor) -> Tensor:
        """Offers a batch of samples (each field's first dimension is the sample); returns the slots written to.

        Under DDP it must be called on every rank: the batch is first gathered from all ranks.
        """
        if not fields:
            raise ValueError("add needs at least one field, e.g. add(x=..., y=...)")
        sizes = {name: len(v) for name, v in fields.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all fields need the same number of samples, got {sizes}")
        if self.fields and sorted(fields) != sorted(self.fields):
            raise ValueError(f"this buffer stores fields {self.fields}, got {sorted(fields)}")
        _, world = _world()
        fields = {k: (_gather(v.detach(), world) if world > 1 else v.detach()) for k, v in fields.items()}
        if not self.fields:
            self._allocate(fields)
        batch = len(next(iter(fields.values())))
        n0 = int(self.seen)
        counts = torch.arange(n0 + 1, n0 + batch + 1, dtype=torch.float64)  # n for each offered sample
        j = (torch.rand(batch, generator=_generator(self.seed, n0), dtype=torch.float64) * counts).long()
        j = torch.minimum(j, counts.long() - 1)
        slots = torch.where(counts <= self.capacity, counts.long() - 1, torch.where(j < self.capacity, j, -1))
        items = torch.nonzero(slots >= 0).flatten()
        if len(items):
            # several samples of one batch may land in the same slot: the later one wins, as in sequential insertion
            rev_items, rev_slots = items.flip(0), slots[items].flip(0)
            uniq, inverse = torch.unique(rev_slots, return_inverse=True)
            first = torch.full((len(uniq),), len(rev_slots), dtype=torch.long)
            first.scatter_reduce_(0, inverse, torch.arange(len(rev_slots)), reduce="amin")
            items, written = rev_items[first], uniq
            for name in self.fields:
                store = getattr(self, name)
                store[written.to(store.device)] = fields[name][items.to(store.device)].to(store.dtype)
        else:
            written = items
        self.seen += batch
        return written

    def sample(self, n: int) -> dict[str, Tensor]:
        """``min(n, len(self))`` distinct stored samples, uniformly at random, as a dict of fields."""
        size = len(self)
        if size == 0:
            raise ValueError("cannot sample from an empty buffer")
        n = min(n, size)
        rank, _ = _world()
        u = torch.rand(n, generator=_generator(self.seed, 1 + rank, int(self.sample_calls)), dtype=torch.float64)
        chosen: list[int] = []
        taken: set[int] = set()
        for k, top in enumerate(range(size - n, size)):  # Floyd's algorithm: n draws, no pass over the buffer
            t = min(int(u[k] * (top + 1)), top)
            t = top if t in taken else t
            taken.add(t)
            chosen.append(t)
        self.sample_calls += 1
        idx = torch.tensor(chosen, dtype=torch.long, device=self.seen.device)
        return {name: getattr(self, name)[idx] for name in self.fields}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        names = [k[len(prefix) :] for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix) :]]
        stored = {name: state_dict[prefix + name] for name in names if name not in ("seen", "sample_calls")}
        if stored and not self.fields:
            self._allocate({k: v[:0] for k, v in stored.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

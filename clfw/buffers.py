"""Replay memories: tensors inside the strategy, so they ride in checkpoints and follow the device."""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.distributed import world
from clfw.seeding import derived_generator


def _gather_fields(fields: dict[str, Tensor], world: int) -> dict[str, Tensor]:
    """Every rank's ``fields``, each concatenated in rank order (ranks may hold different numbers of samples).

    Two collectives whatever the number of fields: an all-gather of the sample counts, and one of the fields packed
    side by side as bytes (on the first non-CPU field's device, so NCCL can carry them); each field is unpacked to its
    dtype, shape and device, bit for bit.
    """
    first = next(iter(fields.values()))
    n, device = len(first), next((v.device for v in fields.values() if v.device.type != "cpu"), first.device)
    columns, layout = [], []
    for name, value in fields.items():
        flat = value.detach().to(device).contiguous().reshape(n, math.prod(value.shape[1:]))
        columns.append(flat.view(torch.uint8))
        layout.append((name, value.dtype, value.shape[1:], columns[-1].shape[1], value.device))
    packed = torch.cat(columns, 1)
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(counts), packed.shape[1]), dtype=torch.uint8, device=device)
    padded[:n] = packed
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    joint = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
    out, start = {}, 0
    for name, dtype, shape, width, home in layout:
        out[name] = joint[:, start : start + width].contiguous().view(dtype).reshape(len(joint), *shape).to(home)
        start += width
    return out


class Memory(nn.Module):
    """Base of the replay memories: named fields stored as buffers, allocated at the first insertion.

    Whatever fields it is given (raw ``uint8`` inputs stay ``uint8``; labels, task ids, logits ...) are kept in
    tensors of ``capacity`` rows, so the contents ride in checkpoints (rebuilt on load) and follow the device. Slots
    ``0 .. len(self) - 1`` hold the samples. Subclasses decide which slots new samples go to.

    :meth:`sample` draws distinct stored samples with Floyd's algorithm, O(n) and not O(capacity), from a generator
    derived from ``(seed, sample calls)``: under DDP the ranks split one draw (see :meth:`sample`), and a resumed run
    draws exactly what an uninterrupted one would.

    Args:
        capacity: Number of samples held.
        seed: Seed of the memory's random draws.
        argument: The user's name for ``capacity`` in error messages (a strategy's ``buffer_size``).
    """

    def __init__(self, capacity: int = 500, seed: int = 0, argument: str = "capacity") -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"{argument} must be >= 1, got {capacity}")
        self.capacity, self.seed, self.argument = capacity, seed, argument
        self.replayable = True  # False: held-out data (BiC's validation samples), never found by replay_memory
        self.register_buffer("size", torch.zeros((), dtype=torch.long))
        self.register_buffer("sample_calls", torch.zeros((), dtype=torch.long))
        self.fields: list[str] = []

    _counters: tuple[str, ...] = ("size", "sample_calls")

    def __len__(self) -> int:
        return int(self.size)

    def nbytes_per_sample(self) -> dict[str, int]:
        """Bytes one stored sample takes in each field (the memory's footprint is ``capacity`` times their sum)."""
        return {name: getattr(self, name)[0].numel() * getattr(self, name).element_size() for name in self.fields}

    def _allocate(self, fields: dict[str, Tensor]) -> None:
        device = self.size.device  # the strategy's device, wherever the first samples come from
        for name, value in fields.items():
            self.register_buffer(name, torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=device))
        self.fields = list(fields)

    def _incoming(self, fields: dict[str, Tensor], gather: bool) -> tuple[dict[str, Tensor], int]:
        """Checks a batch of fields, gathers it from every rank (``gather`` under DDP), allocates storage."""
        if not fields:
            raise ValueError("add needs at least one field, e.g. add(x=..., y=...)")
        sizes = {name: len(v) for name, v in fields.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all fields need the same number of samples, got {sizes}")
        if self.fields and sorted(fields) != sorted(self.fields):
            raise ValueError(f"this buffer stores fields {self.fields}, got {sorted(fields)}")
        _, size = world()
        fields = _gather_fields(fields, size) if gather and size > 1 else {k: v.detach() for k, v in fields.items()}
        if not self.fields:
            self._allocate(fields)
        return fields, len(next(iter(fields.values())))

    def _write(self, slots: Tensor, fields: dict[str, Tensor], items: Tensor) -> None:
        for name in self.fields:
            store = getattr(self, name)
            store[slots.to(store.device)] = fields[name][items.to(fields[name].device)].to(store.device, store.dtype)

    @torch.no_grad()
    def assign(self, **fields: Tensor) -> None:
        """Replaces the whole contents by the given samples (at most ``capacity``), in order.

        For memories whose strategy selects the samples itself (iCaRL's herding, A-GEM's per-task episodes). It does
        not gather across ranks: under DDP every rank must assign the same samples.
        """
        fields, n = self._incoming(fields, gather=False)
        if n > self.capacity:
            raise ValueError(f"cannot assign {n} samples to a memory of capacity {self.capacity}")
        self._write(torch.arange(n), fields, torch.arange(n))
        self.size.fill_(n)

    def sample(self, n: int) -> dict[str, Tensor]:
        """``min(n, len(self))`` distinct stored samples, uniformly at random, as a dict of fields.

        Under DDP with ``W`` ranks, all ranks make the same draw of ``min(n * W, len(self))`` distinct samples (the
        one a single process makes when asked for ``n * W``) and each takes its consecutive block of it, as the
        training loader splits a global batch: the ranks' replay minibatches together are one process's replay
        minibatch of ``n * W``, without a sample drawn twice.
        """
        size = len(self)
        if size == 0:
            raise ValueError("cannot sample from an empty buffer")
        rank, ranks = world()
        n = min(n * ranks, size)
        u = torch.rand(n, generator=derived_generator(self.seed, 1, int(self.sample_calls)), dtype=torch.float64)
        chosen: list[int] = []
        taken: set[int] = set()
        for k, u_k in enumerate(u.tolist()):  # Floyd's algorithm: n draws, no pass over the buffer (Python floats:
            top = size - n + k  # a tensor element per draw cost 10 us each)
            t = min(int(u_k * (top + 1)), top)
            t = top if t in taken else t
            taken.add(t)
            chosen.append(t)
        self.sample_calls.add_(1)  # in place: not through nn.Module.__setattr__
        idx = torch.tensor(chosen, dtype=torch.long, device=self.sample_calls.device)
        if ranks > 1 and n >= ranks:  # fewer stored samples than ranks: every rank replays the whole draw
            idx = idx.tensor_split(ranks)[rank]
        return {name: getattr(self, name)[idx] for name in self.fields}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        names = [k[len(prefix) :] for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix) :]]
        stored = {n: state_dict[prefix + n] for n in names if n not in self._counters and n != "_extra_state"}
        if stored and not self.fields:
            self._allocate({k: v[:0] for k, v in stored.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ReservoirBuffer(Memory):
    """Fixed-capacity replay memory filled by reservoir sampling (Vitter 1985, algorithm R).

    When the ``n``-th sample is offered (``n`` counting it), it fills slot ``n - 1`` while ``n <= capacity``; after
    that it replaces slot ``j``, with ``j`` uniform on ``{0, ..., n - 1}``, when ``j < capacity``. So after ``n``
    samples each of them is held with probability ``capacity / n``. Insertion costs O(batch); its draws come from a
    generator derived from ``(seed, samples seen)``, the counter being a buffer, so a resumed run inserts exactly
    what an uninterrupted one would.

    Under DDP, :meth:`add` gathers each field from every rank and inserts the gathered batch in rank order with the same
    draws on every rank: all ranks hold the same buffer, the one a single process would hold over the gathered stream
    (the training loader gives each rank a consecutive block of the global batch, so the gathered batch is the global
    batch in order). The ranks split one replay draw (:meth:`Memory.sample`).

    Args:
        capacity: Number of samples held.
        seed: Seed of the insertion and sampling draws.
        argument: The user's name for ``capacity`` in error messages (a strategy's ``buffer_size``).
    """

    _counters = ("size", "sample_calls", "seen")

    def __init__(self, capacity: int = 500, seed: int = 0, argument: str = "capacity") -> None:
        super().__init__(capacity, seed, argument)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def add(self, gather: bool = True, **fields: Tensor) -> Tensor:
        """Offers a batch of samples (each field's first dimension is the sample); returns the slots written to.

        Under DDP it must be called on every rank: the batch is first gathered from all ranks (``gather=False`` when
        every rank offers the same samples).
        """
        fields, batch = self._incoming(fields, gather)
        n0, capacity = int(self.seen), self.capacity
        u = torch.rand(batch, generator=derived_generator(self.seed, n0), dtype=torch.float64).tolist()
        target: dict[int, int] = {}  # slot -> the offered sample it receives; a later sample of the batch overwrites
        for i, u_i in enumerate(u):  # an earlier one in the same slot, as in sequential insertion
            n = n0 + i + 1  # the offered sample's count
            j = n - 1 if n <= capacity else min(int(u_i * n), n - 1)  # in Python numbers: a few us per batch, where
            if j < capacity:  # the same arithmetic in tensor operations cost 150 us
                target[j] = i
        written = torch.tensor(sorted(target), dtype=torch.long)
        if len(written):
            self._write(written, fields, torch.tensor([target[j] for j in written.tolist()], dtype=torch.long))
        self.seen.add_(batch)
        self.size.fill_(min(int(self.seen), self.capacity))
        return written


class EpisodicMemory(ReservoirBuffer):
    """A per-task episodic memory (A-GEM's and GEM's): ``capacity // n_tasks`` random training samples of each task,
    stored at the task's end by :meth:`store_task`, drawn with a generator seeded from ``seed`` and the task. Every
    rank stores the same samples, so nothing is gathered."""

    def check_tasks(self, n_tasks: int) -> None:
        """Refuses a capacity that leaves no sample for each of ``n_tasks`` tasks (naming the user's argument)."""
        if self.capacity < n_tasks:
            raise ValueError(f"{self.argument}={self.capacity} leaves no memory for each of {n_tasks} tasks")

    def store_task(self, module: Any, task: int) -> None:
        """Adds ``task``'s samples, from ``module.datamodule.train_data(task)``."""
        data = module.datamodule.train_data(task)
        per_task = self.capacity // module.stream.n_tasks
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + task))
        idx = idx[:per_task]
        self.add(gather=False, x=data.x[idx], y=data.y[idx], task=data.task[idx])


class ClassBalancedBuffer(Memory):
    """GDumb's greedy class-balanced memory (Prabhu, Torr & Dokania, ECCV 2020, the sampler of Algorithm 1).

    Each offered sample ``(x, y)`` is stored while the memory has room. Once it is full, it is stored only if its class
    holds fewer than ``capacity / |Y|`` samples (``|Y|``: the classes offered so far, including ``y``); it then
    replaces a uniformly random sample of the largest class (the smallest label among equally large ones; the victim is
    the k-th of that class's slots in slot order, so the choice does not depend on the slots' history). The stored
    classes thus stay as balanced as the stream allows. Decisions are sequential, O(number of classes) per sample;
    the random draws come from a generator derived from ``(seed, samples seen)``.

    Fields must include the label ``y``. Under DDP :meth:`add` gathers the batch from every rank and all ranks make
    the same decisions, as :class:`ReservoirBuffer` does.

    Args:
        capacity: Number of samples held.
        seed: Seed of the eviction and sampling draws.
        argument: The user's name for ``capacity`` in error messages (a strategy's ``buffer_size``).
    """

    _counters = ("size", "sample_calls", "seen")

    def __init__(self, capacity: int = 500, seed: int = 0, argument: str = "capacity") -> None:
        super().__init__(capacity, seed, argument)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.classes: set[int] = set()
        self._slots: dict[int, list[int]] | None = None  # class -> its sorted slots, rebuilt from ``y`` after a load

    def class_counts(self) -> dict[int, int]:
        """Number of stored samples of each class."""
        return {c: len(s) for c, s in sorted(self._class_slots().items()) if s}

    def _class_slots(self) -> dict[int, list[int]]:
        if self._slots is None:
            self._slots = {}
            if self.fields:
                for slot, c in enumerate(self.y[: len(self)].tolist()):
                    self._slots.setdefault(int(c), []).append(slot)
        return self._slots

    @torch.no_grad()
    def add(self, gather: bool = True, **fields: Tensor) -> Tensor:
        """Offers a batch of samples with their labels ``y``; returns the slots written to (in offer order)."""
        if "y" not in fields:
            raise ValueError(f"ClassBalancedBuffer needs the labels as field y, got fields {sorted(fields)}")
        fields, batch = self._incoming(fields, gather)
        slots_of = self._class_slots()
        u = torch.rand(batch, generator=derived_generator(self.seed, int(self.seen)), dtype=torch.float64).tolist()
        size, slots, items = len(self), [], []
        for i, c in enumerate(fields["y"].tolist()):
            self.classes.add(c)
            mine = slots_of.setdefault(c, [])
            if size < self.capacity:
                slot, size = size, size + 1
            elif len(mine) < self.capacity / len(self.classes):
                largest = max(slots_of, key=lambda k: (len(slots_of[k]), -k))
                victims = slots_of[largest]
                pos = min(int(u[i] * len(victims)), len(victims) - 1)
                slot = victims.pop(pos)
            else:
                continue
            bisect.insort(mine, slot)
            slots.append(slot)
            items.append(i)
        # a slot written twice in one batch keeps the later sample, as sequential insertion would
        last = {s: i for s, i in zip(slots, items, strict=True)}
        written = torch.tensor(list(last), dtype=torch.long)
        self._write(written, fields, torch.tensor(list(last.values()), dtype=torch.long))
        self.seen += batch
        self.size.fill_(size)
        return written

    @override
    def get_extra_state(self) -> dict[str, list[int]]:
        return {"classes": sorted(self.classes)}

    @override
    def set_extra_state(self, state: dict[str, list[int]]) -> None:
        self.classes = set(state["classes"])
        self._slots = None


def herding(features: Tensor, m: int) -> Tensor:
    """iCaRL's herding selection (Rebuffi et al., CVPR 2017, Algorithm 4): indices of ``m`` exemplars, in order.

    With ``mu`` the mean of the (L2-normalised) ``features`` ``[N, D]``, the ``k``-th exemplar is the sample ``x``
    minimising ``|| mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||``, among the samples not chosen yet (the paper's
    pseudo-code does not exclude them; every implementation does). The order is a priority: keeping the first ``m'``
    gives the herding selection of size ``m'``.

    >>> herding(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), 2).tolist()
    [2, 0]
    """
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    phi = F.normalize(features.double(), dim=1)
    mu = phi.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(phi), dtype=torch.bool)
    for k in range(1, min(m, len(phi)) + 1):
        dist_ = (mu - (running + phi) / k).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(dist_.argmin())
        chosen.append(i)
        available[i] = False
        running += phi[i]
    return torch.tensor(chosen, dtype=torch.long)


def replay_memory(module: nn.Module, user: str) -> Memory:
    """The replay memory a plugin (``user``, named in the error) reads: the strategy's own (the first
    :class:`Memory` among its submodules outside ``plugins``, e.g. ER's ``buffer``), else the first one a plugin holds.

    Raises:
        ValueError: the strategy and its plugins hold no replay memory.
    """
    plugins = getattr(module, "plugins", None)
    inside = {id(m) for m in plugins.modules()} if isinstance(plugins, nn.Module) else set()
    found = [m for m in module.modules() if isinstance(m, Memory) and m.replayable]
    own = [m for m in found if id(m) not in inside]
    if own or found:
        return (own or found)[0]
    raise ValueError(
        f"{user} needs a replay memory, but {type(module).__name__} and its plugins hold none: use it with a replay "
        "strategy (ER, DER++, ER-ACE, ...)"
    )

"""The stream data model: tasks of in-memory tensors, the batch format, and batch-wise transforms.

Tasks and classes are numbered from 0. Inputs are held as tensors in their compact form (images as ``uint8``) and turned
into model inputs by a transform that takes a whole batch, so replay buffers and evaluators can call the same transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from clfw.lazy import FileInputs

ScenarioName = Literal["class", "task", "domain"]
SCENARIOS: tuple[str, ...] = ("class", "task", "domain")

BatchTransform = Callable[[Tensor], Tensor]

Inputs = Tensor | FileInputs
"""Stored inputs: a tensor in memory, or files decoded on access (:class:`~clfw.lazy.FileInputs`, the lazy path)."""


def take(x: Inputs, idx: Tensor) -> Inputs:
    """The inputs at ``idx`` (positions or a boolean mask) without decoding: ``x[idx]`` for a tensor, a lazy selection
    for :class:`~clfw.lazy.FileInputs` (whose ``x[idx]`` would decode). Stream builders select samples with it."""
    return x.take(idx) if isinstance(x, FileInputs) else x[idx]


class Batch(NamedTuple):
    """The one batch format of clfw: every loader yields it, every strategy receives it.

    Attributes:
        x: Model inputs after the transform, shape ``[B, ...]``.
        y: Class labels in ``[0, num_classes)``, shape ``[B]``.
        task: Task id of each sample, shape ``[B]``.
        index: Each sample's index within its task's split, shape ``[B]`` (a stable key for caches and buffers).
    """

    x: Tensor
    y: Tensor
    task: Tensor
    index: Tensor


@dataclass
class TaskData:
    """The samples of one split of one or more tasks, as tensors.

    Attributes:
        x: Raw inputs in their stored form (``uint8`` images stay ``uint8``), first dimension the sample: a tensor, or
            :class:`~clfw.lazy.FileInputs` on the lazy path, where ``x[idx]`` decodes the same ``uint8`` tensor.
        y: Labels, ``int64``.
        task: Task id per sample, ``int64``.
        index: Index of each sample within its task's split, ``int64``.
    """

    x: Inputs
    y: Tensor
    task: Tensor
    index: Tensor

    @classmethod
    def for_task(cls, x: Inputs, y: Tensor, task_id: int) -> TaskData:
        """Wraps one task's samples, numbering them ``0..n-1`` in the given order."""
        y = torch.as_tensor(y, dtype=torch.long)
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} inputs, {len(y)} labels")
        n = len(y)
        return cls(x, y, torch.full((n,), task_id, dtype=torch.long), torch.arange(n))

    @classmethod
    def cat(cls, parts: Sequence[TaskData]) -> TaskData:
        """Concatenates splits (for example all tasks seen so far), keeping each sample's task id and index."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of task data")
        xs = [p.x for p in parts]
        x = FileInputs.cat(xs) if any(isinstance(v, FileInputs) for v in xs) else torch.cat(xs)  # type: ignore[arg-type]
        return cls(x, *(torch.cat([getattr(p, f) for p in parts]) for f in ("y", "task", "index")))

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Tensor) -> TaskData:
        """The samples at positions ``idx`` (their task ids and indices are kept)."""
        return TaskData(take(self.x, idx), self.y[idx], self.task[idx], self.index[idx])

    def batch(self, idx: Tensor, transform: BatchTransform | None = None) -> Batch:
        """The samples at positions ``idx`` as a :class:`Batch`, inputs passed through ``transform``."""
        x = self.x[idx]
        return Batch(transform(x) if transform is not None else x, self.y[idx], self.task[idx], self.index[idx])


@dataclass
class Task:
    """One task of a stream.

    Attributes:
        id: Position in the stream, from 0.
        classes: The classes the task holds (in domain-IL, every task holds all classes).
        train: Training split.
        test: Test split.
        val: Optional validation split carved from the training data, for tuning without test data.
    """

    id: int
    classes: tuple[int, ...]
    train: TaskData
    test: TaskData
    val: TaskData | None = None


@dataclass
class Stream:
    """A sequence of tasks and how they are to be learned.

    Attributes:
        tasks: The tasks, in order.
        scenario: ``"class"`` (one head over all classes, no task label at test time), ``"task"`` (task label known at
            test time: logits masked to the task's classes) or ``"domain"`` (same classes, new input distribution).
        num_classes: Size of the single classifier head.
        input_shape: Shape of one raw input (without the batch dimension).
        boundaries_visible: Whether strategies are told when a task starts and ends (``False`` for task-free streams).
    """

    tasks: list[Task]
    scenario: ScenarioName
    num_classes: int
    input_shape: tuple[int, ...]
    boundaries_visible: bool = True
    _class_masks: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if not self.tasks:
            raise ValueError("a stream needs at least one task")
        for t, task in enumerate(self.tasks):
            if task.id != t:
                raise ValueError(f"task at position {t} has id {task.id}; tasks must be numbered 0..T-1 in order")
            for split in ("train", "test"):
                if len(getattr(task, split)) == 0:
                    raise ValueError(f"task {t} has no {split} samples (classes {list(task.classes)})")
            bad = [c for c in task.classes if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f"task {t} holds classes {bad} outside [0, {self.num_classes})")

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def task_class_masks(self) -> Tensor:
        """Boolean ``[n_tasks, num_classes]``: row ``t`` marks the classes of task ``t``."""
        if self._class_masks is None:
            masks = torch.zeros(self.n_tasks, self.num_classes, dtype=torch.bool)
            for task in self.tasks:
                masks[task.id, list(task.classes)] = True
            self._class_masks = masks
        return self._class_masks

    def seen_class_mask(self, tasks: Sequence[int]) -> Tensor:
        """Boolean ``[num_classes]`` marking the classes of ``tasks``."""
        if len(tasks) == 0:
            return torch.zeros(self.num_classes, dtype=torch.bool)
        return self.task_class_masks()[list(tasks)].any(0)


def check_class_order(class_order: Sequence[int], classes: Sequence[int]) -> list[int]:
    """Returns ``class_order`` as a list after checking it is a permutation of ``classes``.

    >>> check_class_order([2, 0, 1], [0, 1, 2])
    [2, 0, 1]
    >>> check_class_order([0, 0, 1], [0, 1, 2])
    Traceback (most recent call last):
    ...
    ValueError: class_order [0, 0, 1] is not a permutation of the dataset's classes [0, 1, 2]: repeats [0]; misses [2]
    """
    order = [int(c) for c in class_order]
    expected = sorted(int(c) for c in classes)
    if sorted(order) != expected:
        repeats = sorted({c for c in order if order.count(c) > 1})
        missing = sorted(set(expected) - set(order))
        extra = sorted(set(order) - set(expected))
        detail = "; ".join(
            f"{name} {vals}" for name, vals in (("repeats", repeats), ("misses", missing), ("unknown", extra)) if vals
        )
        raise ValueError(f"class_order {order} is not a permutation of the dataset's classes {expected}: {detail}")
    return order


ClassOrder = list[int] | Literal["sorted", "random", "icarl"] | None
"""How a class-incremental stream deals its classes to tasks: see :func:`resolve_class_order`."""

ICARL_SEED = 1993
"""The seed of iCaRL's class order (Rebuffi et al. 2017), which PyCIL, SLCA and many others reuse."""


def resolve_class_order(class_order: ClassOrder, classes: Sequence[int], seed: int) -> list[int]:
    """The order in which a stream deals ``classes`` to tasks.

    - ``None``: ``classes`` as given (each stream's default, usually ``0..C-1``);
    - ``"sorted"``: ascending label order;
    - ``"random"``: a permutation drawn from the data ``seed`` (``torch.randperm`` with a generator seeded from
      ``(seed, 1)``), so every data seed has its own order and the same seed always gives the same one;
    - ``"icarl"``: the literature's order, iCaRL's and PyCIL's ``np.random.seed(1993); np.random.permutation(C)``
      applied to the sorted classes. It is drawn from a private ``np.random.RandomState(1993)``, which gives the same
      permutation without touching NumPy's global random state;
    - a list: an explicit permutation of ``classes`` (checked by :func:`check_class_order`).

    >>> resolve_class_order(None, [3, 1, 2], seed=0)
    [3, 1, 2]
    >>> resolve_class_order("sorted", [3, 1, 2], seed=0)
    [1, 2, 3]
    >>> resolve_class_order("icarl", range(10), seed=0)
    [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]
    >>> resolve_class_order("random", range(5), seed=0) == resolve_class_order("random", range(5), seed=0)
    True
    >>> resolve_class_order("shuffled", range(3), seed=0)
    Traceback (most recent call last):
    ...
    ValueError: class_order must be a list of classes, 'sorted', 'random' or 'icarl' (or null), got 'shuffled'
    """
    if class_order is None:
        return check_class_order(classes, classes)
    if isinstance(class_order, str):
        ordered = sorted(int(c) for c in classes)
        if class_order == "sorted":
            return ordered
        if class_order == "random":
            from clfw.seeding import derived_generator

            perm = torch.randperm(len(ordered), generator=derived_generator(seed, 1)).tolist()
        elif class_order == "icarl":
            import numpy as np

            perm = np.random.RandomState(ICARL_SEED).permutation(len(ordered)).tolist()
        else:
            raise ValueError(
                f"class_order must be a list of classes, 'sorted', 'random' or 'icarl' (or null), got {class_order!r}"
            )
        return [ordered[i] for i in perm]
    return check_class_order(class_order, classes)


def classes_per_task_split(num_classes: int, n_tasks: int | None, classes_per_task: Sequence[int] | None) -> list[int]:
    """How many classes each task gets: ``n_tasks`` equal parts, or an explicit uneven ``classes_per_task``.

    >>> classes_per_task_split(10, 5, None)
    [2, 2, 2, 2, 2]
    >>> classes_per_task_split(10, None, [5, 1, 1, 1, 1, 1])
    [5, 1, 1, 1, 1, 1]
    >>> classes_per_task_split(10, 3, None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: n_tasks=3 does not divide the 10 classes evenly; pass classes_per_task (e.g. [4, 3, 3]) ...
    >>> classes_per_task_split(3, 5, None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: n_tasks=5: 3 classes cannot be cut into 5 tasks (each task needs at least one class); use n_tasks 1 ...
    """
    if classes_per_task is not None:
        sizes = [int(s) for s in classes_per_task]
        if any(s <= 0 for s in sizes) or sum(sizes) != num_classes:
            raise ValueError(f"classes_per_task {sizes} must be positive and sum to the {num_classes} classes")
        if n_tasks is not None and n_tasks != len(sizes):
            raise ValueError(f"n_tasks={n_tasks} disagrees with classes_per_task {sizes} ({len(sizes)} tasks)")
        return sizes
    if n_tasks is None or n_tasks <= 0:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks}")
    if n_tasks > num_classes:
        divisors = [str(d) for d in range(1, num_classes + 1) if num_classes % d == 0]
        choices = divisors[0] if len(divisors) == 1 else f"{', '.join(divisors[:-1])} or {divisors[-1]}"
        raise ValueError(
            f"n_tasks={n_tasks}: {num_classes} classes cannot be cut into {n_tasks} tasks (each task needs at least "
            f"one class); use n_tasks {choices} for equal tasks, or classes_per_task for at most {num_classes} tasks"
        )
    if num_classes % n_tasks:
        base, extra = divmod(num_classes, n_tasks)
        example = [base + 1] * extra + [base] * (n_tasks - extra)
        raise ValueError(
            f"n_tasks={n_tasks} does not divide the {num_classes} classes evenly; "
            f"pass classes_per_task (e.g. {example}) for an uneven split"
        )
    return [num_classes // n_tasks] * n_tasks


def stratified_split(y: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Splits sample positions per class: ``round(fraction * n_c)`` of each class go to the second part.

    Returns the (sorted) positions of the two parts. Seeded by ``generator``, so the split is reproducible.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    keep, held = [], []
    for c in torch.unique(y).tolist():
        pos = torch.nonzero(y == c).flatten()
        pos = pos[torch.randperm(len(pos), generator=generator)]
        k = round(fraction * len(pos))
        held.append(pos[:k])
        keep.append(pos[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def class_incremental_tasks(
    train: tuple[Inputs, Tensor],
    test: tuple[Inputs, Tensor],
    class_order: Sequence[int],
    classes_per_task: Sequence[int],
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[Task]:
    """Cuts a labelled dataset into tasks of disjoint classes, following ``class_order``.

    Args:
        train: Training inputs and labels.
        test: Test inputs and labels.
        class_order: Permutation of the classes; task ``t`` gets the next ``classes_per_task[t]`` of them.
        classes_per_task: Number of classes per task.
        val_fraction: Fraction of each task's training samples (stratified per class) held out for validation.
        seed: Seed of the validation split.
    """
    g = torch.Generator().manual_seed(seed)
    tasks, start = [], 0
    for t, size in enumerate(classes_per_task):
        classes = tuple(int(c) for c in class_order[start : start + size])
        start += size
        keep_train, keep_test = (torch.isin(split[1], torch.tensor(classes)) for split in (train, test))
        splits = (take(train[0], keep_train), train[1][keep_train]), (take(test[0], keep_test), test[1][keep_test])
        tasks.append(_make_task(t, classes, *splits, val_fraction, g))
    return tasks


def domain_incremental_tasks(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    warps: Sequence[Callable[[Tensor], Tensor]],
    num_classes: int,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[Task]:
    """One task per input transformation in ``warps`` (a permutation, a rotation ...), each over the same samples.

    Every task holds all ``num_classes`` classes; ``warps[t]`` is applied once to the stored inputs of task ``t``, so
    they must be tensors in memory: lazy inputs (:class:`~clfw.lazy.FileInputs`, ``in_memory=False``) are refused.
    """
    for name, x in (("train", train[0]), ("test", test[0])):
        if isinstance(x, FileInputs):
            raise ValueError(
                f"domain_incremental_tasks warps input tensors, but the {name} inputs are {x!r} (decoded from disk, "
                "in_memory=false): warped domains need the inputs in memory (in_memory=true)"
            )
    g = torch.Generator().manual_seed(seed)
    classes = tuple(range(num_classes))
    return [
        _make_task(t, classes, (warp(train[0]), train[1]), (warp(test[0]), test[1]), val_fraction, g)
        for t, warp in enumerate(warps)
    ]


def domain_tasks(
    domains: Sequence[tuple[tuple[Inputs, Tensor], tuple[Inputs, Tensor]]],
    num_classes: int,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[Task]:
    """One task per domain, each with its own ``((train x, y), (test x, y))`` samples (DomainNet domains, CORe50
    sessions ...); every task holds all ``num_classes`` classes (domain-IL)."""
    g = torch.Generator().manual_seed(seed)
    classes = tuple(range(num_classes))
    return [_make_task(t, classes, train, test, val_fraction, g) for t, (train, test) in enumerate(domains)]


def blurry_tasks(tasks: Sequence[Task], blurry_m: float, iblurry_n: float = 0.0, seed: int = 0) -> list[Task]:
    """Blurs the boundaries of class-incremental tasks: Blurry-M, or i-Blurry-N-M (Koh et al., ICLR 2022).

    As the reference code's stream files (``naver-ai/i-Blurry``, ``collections/``) are built:

    1. In each task, ``iblurry_n`` % of its classes are *disjoint*: their samples stay in that task alone. The counts
       are rounded on the running total, so every task gets its share and the stream ``round(N% of all classes)``;
       which classes is drawn at random. The other classes are *blurry*, with the task as their home.
    2. From every task, ``blurry_m`` % of its blurry classes' training samples (drawn at random) go into one pool; the
       pool is shuffled and dealt back so that each task receives as many samples as it gave. A sample can land in its
       own task again (with T tasks, about (T-1)/T of the pool changes task); task sizes are kept.

    ``iblurry_n = 0`` is Blurry-M (Bang et al., CVPR 2021's Blurry10 is M = 10); ``blurry_m = 0`` or ``iblurry_n =
    100`` keeps the tasks as they are. Test and validation splits are untouched: a task is tested on its home classes.
    ``Task.classes`` becomes the task's home classes followed by the other classes present in its training split.
    Every draw comes from a generator seeded by ``seed`` (the data seed).

    Args:
        tasks: Class-incremental tasks (disjoint classes), in order.
        blurry_m: M, the percentage of each task's blurry-class training samples mixed across tasks, in [0, 100].
        iblurry_n: N, the percentage of classes kept disjoint, in [0, 100].
        seed: Seed of the draws.
    """
    for name, value in (("blurry_m", blurry_m), ("iblurry_n", iblurry_n)):
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"{name} must be a percentage in [0, 100], got {value}")
    if blurry_m == 0 or iblurry_n == 100:
        return list(tasks)
    from clfw.seeding import derived_generator

    g = derived_generator(seed, 0xB1)
    moved, kept, running, disjoint_total = [], [], 0, 0
    for task in tasks:
        running += len(task.classes)
        n_disjoint = round(iblurry_n / 100 * running) - disjoint_total
        disjoint_total += n_disjoint
        pick = torch.randperm(len(task.classes), generator=g)[n_disjoint:].sort().values
        blurry = torch.tensor([task.classes[i] for i in pick.tolist()], dtype=torch.long)
        pos = torch.nonzero(torch.isin(task.train.y, blurry)).flatten()
        pos = pos[torch.randperm(len(pos), generator=g)][: round(blurry_m / 100 * len(pos))]
        stays = torch.ones(len(task.train), dtype=torch.bool)
        stays[pos] = False
        moved.append(task.train.subset(pos.sort().values))
        kept.append(task.train.subset(torch.nonzero(stays).flatten()))
    pool = TaskData.cat(moved)
    pool = pool.subset(torch.randperm(len(pool), generator=g))
    out, start = [], 0
    for t, (task, stay, gave) in enumerate(zip(tasks, kept, moved, strict=True)):
        merged = TaskData.cat([stay, pool.subset(torch.arange(start, start + len(gave)))])
        start += len(gave)
        n = len(merged)
        train = TaskData(merged.x, merged.y, torch.full((n,), t, dtype=torch.long), torch.arange(n))
        extra = sorted(set(merged.y.tolist()) - set(task.classes))
        out.append(Task(t, (*task.classes, *extra), train, task.test, task.val))
    return out


def _make_task(
    t: int,
    classes: tuple[int, ...],
    train: tuple[Inputs, Tensor],
    test: tuple[Inputs, Tensor],
    val_fraction: float,
    g: torch.Generator,
) -> Task:
    """A task, with ``val_fraction`` of its training samples (stratified per class) held out for validation."""
    x, y = train
    val = None
    if val_fraction > 0:
        keep, held = stratified_split(y, val_fraction, g)
        if len(held) == 0 or len(keep) == 0:
            raise ValueError(f"val_fraction={val_fraction} leaves task {t} with an empty train or validation split")
        val = TaskData.for_task(take(x, held), y[held], t)
        x, y = take(x, keep), y[keep]
    return Task(t, classes, TaskData.for_task(x, y, t), TaskData.for_task(*test, t), val)


def draws_random(transform: BatchTransform | None) -> bool:
    """Whether a batch transform may draw from torch's global generator. ``False`` for ``None``, for transforms whose
    class says ``random_draws = False`` (:class:`Normalize`, :class:`CenterCrop`, :class:`Resize`) and for a plain
    ``nn.Sequential`` of such; any other callable is assumed to draw. The training loader seeds the generator per batch
    only around transforms that draw.

    >>> draws_random(nn.Sequential(CenterCrop(2), Normalize())), draws_random(nn.Sequential(RandomCropFlip(), Resize()))
    (False, True)
    """
    if transform is None:
        return False
    if type(transform) is nn.Sequential:
        return any(draws_random(t) for t in transform)
    return bool(getattr(transform, "random_draws", True))


class Normalize(nn.Module):
    """Batch transform: scales stored inputs to ``[0, 1]`` (dividing by ``scale``) and normalises per channel.

    Args:
        mean: Per-channel mean (after scaling).
        std: Per-channel standard deviation (after scaling).
        scale: Divisor applied first (255 for ``uint8`` images).
    """

    random_draws: ClassVar[bool] = False  # see draws_random

    def __init__(self, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), scale: float = 255.0) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() / self.scale  # a new tensor (even for float input): the in-place steps below are safe
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


class RandomCropFlip(nn.Module):
    """Batch augmentation: a random ``H x W`` crop of the input zero-padded by ``padding`` on each side, then a
    horizontal flip with probability 1/2, drawn independently per sample (torchvision's ``RandomCrop(size,
    padding)`` + ``RandomHorizontalFlip()``, as the CIFAR streams of DER/Mammoth use). Works on ``uint8`` images; its
    draws come from the global generator on the input's device. In the training loader (CPU) that generator is seeded
    per batch from the data seed, epoch, rank and batch index (:class:`~clfw.loaders.TaskLoader`); elsewhere (replay,
    on-device augmentation) it is the process's own stream, seeded by ``seed_everything`` and restored by clfw's
    checkpoints.

    Args:
        padding: Zero padding on each side before cropping back to the input's size.
        flip: Also flip horizontally with probability 1/2.
        size: Side of the square crop; ``None`` crops back to the input's size. A smaller size (``padding=0``) is
            torchvision's ``RandomCrop(size)`` of stored images larger than the model's input (e.g. 224 of 256).
    """

    def __init__(self, padding: int = 4, flip: bool = True, size: int | None = None) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1 or None, got {size}")
        self.padding, self.flip, self.size = padding, flip, size

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p, dev = self.padding, x.device
        th, tw = (h, w) if self.size is None else (self.size, self.size)
        if th > h + 2 * p or tw > w + 2 * p:
            raise ValueError(f"crop size {self.size} exceeds the padded input ({h + 2 * p} x {w + 2 * p})")
        padded = nn.functional.pad(x, (p, p, p, p))
        rows = torch.randint(0, h + 2 * p - th + 1, (b, 1), device=dev) + torch.arange(th, device=dev)
        cols = torch.randint(0, w + 2 * p - tw + 1, (b, 1), device=dev) + torch.arange(tw, device=dev)
        batch, channel = torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1)
        out = padded[batch, channel, rows.view(b, 1, th, 1), cols.view(b, 1, 1, tw)]
        if self.flip:
            out = torch.where(torch.rand(b, 1, 1, 1, device=dev) < 0.5, out.flip(-1), out)
        return out


class StrongAugment(nn.Module):
    """Batch augmentation of images ``[B, C, H, W]`` valued in ``[0, scale]`` (``uint8`` as stored), each sample drawn
    independently: the SimCLR-style strong augmentation of Mammoth's ``strong_aug`` (X-DER's future preparation): a
    horizontal flip (p 1/2), ``RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3))`` back to ``H x W``, with
    probability 0.8 a colour jitter (brightness, contrast, saturation 0.4, hue 0.1; saturation and hue leave 1-channel
    images alone, as torchvision does) and with probability 0.2 grayscale (3-channel images). Returns floats in
    ``[0, scale]``, for the stream's evaluation transform (normalisation) to take. Draws come from the global generator
    on the input's device.

    Deviations from torchvision's per-image transforms: the crop is resampled bilinearly without antialiasing and not
    rounded to ``uint8``; the jitter applies brightness, contrast, saturation, hue in this order (torchvision draws a
    random order); a crop that finds no valid box in its 10 tries takes the whole image (torchvision's fallback for a
    square image; for other aspects it would clamp the ratio).

    Args:
        scale: The inputs' maximum value (255 for ``uint8`` images, 1 for images in ``[0, 1]``).
    """

    def __init__(self, scale: float = 255.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        dev, img = x.device, x.float() / self.scale
        img = torch.where(torch.rand(b, 1, 1, 1, device=dev) < 0.5, img.flip(-1), img)
        area = h * w * torch.empty(b, 10, device=dev).uniform_(0.2, 1.0)
        ratio = torch.exp(torch.empty(b, 10, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
        ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
        first = ok.int().argmax(1, keepdim=True)  # the first valid try, as torchvision's loop
        cw = torch.where(ok.any(1), cw.gather(1, first).squeeze(1), torch.full_like(area[:, 0], w))
        ch = torch.where(ok.any(1), ch.gather(1, first).squeeze(1), torch.full_like(area[:, 0], h))
        top = torch.floor(torch.rand(b, device=dev) * (h - ch + 1))
        left = torch.floor(torch.rand(b, device=dev) * (w - cw + 1))
        theta = torch.zeros(b, 2, 3, device=dev)  # output [-1, 1] -> the box's edges, in align_corners=False units
        theta[:, 0, 0], theta[:, 0, 2] = cw / w, (2 * left + cw) / w - 1
        theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
        grid = nn.functional.affine_grid(theta, [b, c, h, w], align_corners=False)
        lo = torch.stack([(2 * left + 1) / w, (2 * top + 1) / h], 1).view(b, 1, 1, 2) - 1  # the box's pixel centres:
        hi = torch.stack([(2 * (left + cw) - 1) / w, (2 * (top + ch) - 1) / h], 1).view(b, 1, 1, 2) - 1  # its edges
        grid = torch.minimum(torch.maximum(grid, lo), hi)  # repeat, as a resize of the cropped image does
        img = nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        jitter = (torch.rand(b, device=dev) < 0.8).view(b, 1, 1, 1)
        factors = torch.empty(b, 3, 1, 1, 1, device=dev).uniform_(0.6, 1.4)  # brightness, contrast, saturation
        hue = torch.empty(b, device=dev).uniform_(-0.1, 0.1)
        out = (img * factors[:, 0]).clamp(0, 1)
        mean = _gray(out).mean((1, 2, 3), keepdim=True)
        out = (factors[:, 1] * out + (1 - factors[:, 1]) * mean).clamp(0, 1)
        if c == 3:
            out = (factors[:, 2] * out + (1 - factors[:, 2]) * _gray(out)).clamp(0, 1)
            out = _shift_hue(out, hue)
        img = torch.where(jitter, out, img)
        if c == 3:
            img = torch.where(torch.rand(b, 1, 1, 1, device=dev) < 0.2, _gray(img).expand_as(img), img)
        return img * self.scale


def _gray(x: Tensor) -> Tensor:
    """Luma ``[B, 1, H, W]`` of RGB images (ITU-R 601-2 weights, as torchvision), or the image if it has one channel."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """RGB images in ``[0, 1]`` with their hue rotated by ``shift[i]`` turns (through HSV, as torchvision's
    ``adjust_hue``)."""
    v, _ = x.max(1)
    delta = v - x.min(1).values
    r, g, b = x.unbind(1)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    sat = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    k = torch.remainder(torch.stack([5.0 + 6 * hue, 3.0 + 6 * hue, 1.0 + 6 * hue], 1), 6.0)
    return v.unsqueeze(1) * (1 - sat.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1))


class CenterCrop(nn.Module):
    """Batch transform: the central ``size x size`` crop of images ``[B, C, H, W]`` (torchvision's ``CenterCrop``,
    offsets rounded as there).

    Args:
        size: Output height and width (at most the input's).
    """

    random_draws: ClassVar[bool] = False

    def __init__(self, size: int = 224) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.size > h or self.size > w:
            raise ValueError(f"crop size {self.size} exceeds the input ({h} x {w})")
        top, left = round((h - self.size) / 2), round((w - self.size) / 2)
        return x[..., top : top + self.size, left : left + self.size]


class Resize(nn.Module):
    """Batch transform: bilinear resizing of float images ``[B, C, H, W]`` to ``size x size`` (e.g. 32 -> 224 for a
    pretrained ViT). Put it after :class:`Normalize`.

    Args:
        size: Output height and width.
    """

    random_draws: ClassVar[bool] = False

    def __init__(self, size: int = 224) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return nn.functional.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)

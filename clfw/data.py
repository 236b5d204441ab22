"""The stream data model: tasks of in-memory tensors, the batch format, and batch-wise transforms.

Tasks and classes are numbered from 0. Inputs are held as tensors in their compact form (images as ``uint8``) and turned
into model inputs by a transform that takes a whole batch, so replay buffers and evaluators can call the same transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

ScenarioName = Literal["class", "task", "domain"]
SCENARIOS: tuple[str, ...] = ("class", "task", "domain")

BatchTransform = Callable[[Tensor], Tensor]


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
        x: Raw inputs in their stored form (``uint8`` images stay ``uint8``), first dimension the sample.
        y: Labels, ``int64``.
        task: Task id per sample, ``int64``.
        index: Index of each sample within its task's split, ``int64``.
    """

    x: Tensor
    y: Tensor
    task: Tensor
    index: Tensor

    @classmethod
    def for_task(cls, x: Tensor, y: Tensor, task_id: int) -> TaskData:
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
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "y", "task", "index")))

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Tensor) -> TaskData:
        """The samples at positions ``idx`` (their task ids and indices are kept)."""
        return TaskData(self.x[idx], self.y[idx], self.task[idx], self.index[idx])

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
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
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
        splits = (train[0][keep_train], train[1][keep_train]), (test[0][keep_test], test[1][keep_test])
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

    Every task holds all ``num_classes`` classes; ``warps[t]`` is applied once to the stored inputs of task ``t``.
    """
    g = torch.Generator().manual_seed(seed)
    classes = tuple(range(num_classes))
    return [
        _make_task(t, classes, (warp(train[0]), train[1]), (warp(test[0]), test[1]), val_fraction, g)
        for t, warp in enumerate(warps)
    ]


def _make_task(
    t: int,
    classes: tuple[int, ...],
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
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
        val = TaskData.for_task(x[held], y[held], t)
        x, y = x[keep], y[keep]
    return Task(t, classes, TaskData.for_task(x, y, t), TaskData.for_task(*test, t), val)


class Normalize(nn.Module):
    """Batch transform: scales stored inputs to ``[0, 1]`` (dividing by ``scale``) and normalises per channel.

    Args:
        mean: Per-channel mean (after scaling).
        std: Per-channel standard deviation (after scaling).
        scale: Divisor applied first (255 for ``uint8`` images).
    """

    def __init__(self, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), scale: float = 255.0) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() / self.scale
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


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
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.flip = padding, flip

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p, dev = self.padding, x.device
        padded = nn.functional.pad(x, (p, p, p, p))
        rows = torch.randint(0, 2 * p + 1, (b, 1), device=dev) + torch.arange(h, device=dev)
        cols = torch.randint(0, 2 * p + 1, (b, 1), device=dev) + torch.arange(w, device=dev)
        batch, channel = torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1)
        out = padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
        if self.flip:
            out = torch.where(torch.rand(b, 1, 1, 1, device=dev) < 0.5, out.flip(-1), out)
        return out


class Resize(nn.Module):
    """Batch transform: bilinear resizing of float images ``[B, C, H, W]`` to ``size x size`` (e.g. 32 -> 224 for a
    pretrained ViT). Put it after :class:`Normalize`.

    Args:
        size: Output height and width.
    """

    def __init__(self, size: int = 224) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return nn.functional.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)

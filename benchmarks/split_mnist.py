"""Split MNIST: the ten digits cut into tasks of disjoint classes."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from clfw import Stream
from clfw.benchmarks.mnist import MNISTStream
from clfw.data import ClassOrder, class_incremental_tasks, classes_per_task_split, resolve_class_order


class SplitMNIST(MNISTStream):
    """Split MNIST (class- or task-incremental): ``n_tasks`` tasks of disjoint digits, 2 per task by default.

    Args:
        n_tasks: Number of tasks; must divide the number of digits unless ``classes_per_task`` is given.
        class_order: Order in which the digits are dealt to tasks: a list, ``"sorted"``, ``"random"`` (drawn from
            ``seed``) or ``"icarl"`` (iCaRL/PyCIL's seed-1993 order); default ``0..9``, or ``classes`` as given
            (:func:`~clfw.data.resolve_class_order`).
        classes_per_task: Uneven split, e.g. ``[5, 1, 1, 1, 1, 1]`` (half the classes first, then increments).
        classes: Only these digits form the stream (e.g. ``[4, 5, 6, 7, 8, 9]`` after pretraining on 0-3); the labels
            and the head keep all 10 digits.
        **kwargs: Source arguments of :class:`~clfw.benchmarks.mnist.MNISTStream` and stream arguments of
            :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        n_tasks: int | None = 5,
        class_order: ClassOrder = None,
        classes_per_task: list[int] | None = None,
        classes: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError(
                f"{type(self).__name__} is class- or task-incremental; use PermutedMNIST or RotatedMNIST for 'domain'"
            )
        digits = list(range(10)) if classes is None else [int(c) for c in classes]
        if not digits or len(set(digits)) != len(digits) or not set(digits) <= set(range(10)):
            what = "digits" if self.dataset == "MNIST" else "labels"
            raise ValueError(f"classes must be distinct {what} in 0..9, got {classes}")
        try:
            self.sizes = classes_per_task_split(len(digits), n_tasks, classes_per_task)
        except ValueError as err:
            if classes is None:
                raise
            raise ValueError(f"{err} (classes={digits} are {len(digits)} classes)") from err
        self.class_order = resolve_class_order(class_order, digits, self.seed)

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.sizes)

    @override
    def build_stream(self) -> Stream:
        train, test = self.load()
        tasks = class_incremental_tasks(train, test, self.class_order, self.sizes, self.val_fraction, self.seed)
        return Stream(tasks, self.scenario, 10, (1, 28, 28), self.task_boundaries_visible)

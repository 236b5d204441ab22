"""Split MNIST: the ten digits cut into tasks of disjoint classes."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from benchmarks.mnist import MNISTStream
from clfw import Stream
from clfw.data import check_class_order, class_incremental_tasks, classes_per_task_split


class SplitMNIST(MNISTStream):
    """Split MNIST (class- or task-incremental): ``n_tasks`` tasks of disjoint digits, 2 per task by default.

    Args:
        n_tasks: Number of tasks; must divide 10 unless ``classes_per_task`` is given.
        class_order: Order in which the digits are dealt to tasks (default ``0..9``).
        classes_per_task: Uneven split, e.g. ``[5, 1, 1, 1, 1, 1]`` (half the classes first, then increments).
        **kwargs: Source arguments of :class:`~benchmarks.mnist.MNISTStream` and stream arguments of
            :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        n_tasks: int | None = 5,
        class_order: list[int] | None = None,
        classes_per_task: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError("SplitMNIST is class- or task-incremental; use PermutedMNIST or RotatedMNIST for 'domain'")
        self.sizes = classes_per_task_split(10, n_tasks, classes_per_task)
        self.class_order = check_class_order(class_order if class_order is not None else range(10), range(10))

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.sizes)

    @override
    def build_stream(self) -> Stream:
        train, test = self.load()
        tasks = class_incremental_tasks(train, test, self.class_order, self.sizes, self.val_fraction, self.seed)
        return Stream(tasks, self.scenario, 10, (1, 28, 28), self.task_boundaries_visible)

"""Split CIFAR-10: the ten classes cut into tasks of disjoint classes (Seq-CIFAR-10 of DER and Mammoth)."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from clfw import Stream
from clfw.benchmarks.cifar import CIFARStream
from clfw.data import ClassOrder, class_incremental_tasks, classes_per_task_split, resolve_class_order


class SplitCIFAR10(CIFARStream):
    """Split CIFAR-10 (class- or task-incremental): ``n_tasks`` tasks of disjoint classes, 5 x 2 by default.

    Args:
        n_tasks: Number of tasks; must divide 10 unless ``classes_per_task`` is given.
        class_order: Order in which the classes are dealt to tasks: a list, ``"sorted"``, ``"random"`` (drawn
            from ``seed``) or ``"icarl"`` (iCaRL/PyCIL's seed-1993 order); default ``0..C-1``, as DER's
            Seq-CIFAR-10 (:func:`~clfw.data.resolve_class_order`).
        classes_per_task: Uneven split, e.g. ``[4, 2, 2, 2]``.
        **kwargs: Source arguments of :class:`~clfw.benchmarks.cifar.CIFARStream` and stream arguments of
            :class:`~clfw.ContinualDataModule`.
    """

    dataset = "cifar10"
    classes = 10

    def __init__(
        self,
        n_tasks: int | None = 5,
        class_order: ClassOrder = None,
        classes_per_task: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError(f"{type(self).__name__} is class- or task-incremental, not 'domain'")
        self.sizes = classes_per_task_split(self.classes, n_tasks, classes_per_task)
        self.class_order = resolve_class_order(class_order, range(self.classes), self.seed)

    @property
    @override
    def num_classes(self) -> int:
        return self.classes

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.sizes)

    @override
    def build_stream(self) -> Stream:
        train, test = self.load()
        tasks = class_incremental_tasks(train, test, self.class_order, self.sizes, self.val_fraction, self.seed)
        return Stream(tasks, self.scenario, self.classes, (3, 32, 32), self.task_boundaries_visible)

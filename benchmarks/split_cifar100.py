"""Split CIFAR-100: the hundred classes cut into tasks of disjoint classes (Seq-CIFAR-100 of Mammoth)."""

from __future__ import annotations

from typing import Any

from clfw.benchmarks.split_cifar10 import SplitCIFAR10


class SplitCIFAR100(SplitCIFAR10):
    """Split CIFAR-100 (class- or task-incremental, fine labels): 10 tasks of 10 classes by default.

    Args:
        n_tasks: Number of tasks; must divide 100 unless ``classes_per_task`` is given.
        **kwargs: ``class_order`` and ``classes_per_task`` of :class:`~clfw.benchmarks.SplitCIFAR10`, source
            arguments of :class:`~clfw.benchmarks.cifar.CIFARStream` and stream arguments of
            :class:`~clfw.ContinualDataModule`.
    """

    dataset = "cifar100"
    classes = 100

    def __init__(self, n_tasks: int | None = 10, **kwargs: Any) -> None:
        super().__init__(n_tasks=n_tasks, **kwargs)

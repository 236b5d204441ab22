"""Rotated MNIST: the same digits rotated by a different fixed angle per task (domain-incremental)."""

from __future__ import annotations

from typing import Any

from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812
from typing_extensions import override

from clfw import Stream
from clfw.benchmarks.mnist import MNISTStream
from clfw.data import ScenarioName, domain_incremental_tasks


class RotatedMNIST(MNISTStream):
    """Rotated MNIST (domain-IL): every task holds all ten digits, rotated by the task's angle.

    Every task reuses the same training and test images (only the angle differs). By default the ``n_tasks`` angles
    are evenly spaced in ``[0, max_angle)``: ``0, 36, 72, 108, 144`` degrees for 5 tasks. Images are rotated once,
    counter-clockwise with bilinear interpolation, and stored as ``uint8``.

    Args:
        n_tasks: Number of tasks; ignored when ``angles`` is given.
        angles: Explicit angle in degrees per task.
        max_angle: Upper end (excluded) of the evenly spaced default angles.
        scenario: Only ``"domain"`` is supported.
        **kwargs: Source arguments of :class:`~clfw.benchmarks.mnist.MNISTStream` and stream arguments of
            :class:`~clfw.ContinualDataModule` (seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        n_tasks: int = 5,
        angles: list[float] | None = None,
        max_angle: float = 180.0,
        scenario: ScenarioName = "domain",
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario=scenario, **kwargs)
        if scenario != "domain":
            raise ValueError(f"RotatedMNIST supports only scenario='domain', got {scenario!r}")
        if angles is None:
            if n_tasks <= 0:
                raise ValueError(f"n_tasks must be positive, got {n_tasks}")
            angles = [i * max_angle / n_tasks for i in range(n_tasks)]
        if not angles:
            raise ValueError(f"angles must name at least one angle, got {angles}")
        self.angles = [float(a) for a in angles]

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.angles)

    @override
    def build_stream(self) -> Stream:
        train, test = self.load()
        warps = [lambda x, a=a: TF.rotate(x, a, interpolation=InterpolationMode.BILINEAR) for a in self.angles]
        tasks = domain_incremental_tasks(train, test, warps, 10, self.val_fraction, self.seed)
        return Stream(tasks, "domain", 10, (1, 28, 28), self.task_boundaries_visible)

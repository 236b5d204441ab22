"""Permuted MNIST: the same digits under a different fixed pixel permutation per task (domain-incremental)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from clfw import Stream
from clfw.benchmarks.mnist import MNISTStream
from clfw.data import ScenarioName, domain_incremental_tasks


class PermutedMNIST(MNISTStream):
    """Permuted MNIST (domain-IL): every task holds all ten digits, its pixels shuffled by the task's permutation.

    Every task reuses the same training and test images (only the permutation differs). Task 0 keeps the original
    pixel order when ``identity_first`` (as in van de Ven et al.'s code); the other permutations are drawn from a
    generator seeded by ``seed``. Permuted copies are stored as ``uint8``: ``n_tasks`` times the source's memory.

    Args:
        n_tasks: Number of tasks (permutations).
        identity_first: Task 0 is unpermuted MNIST.
        scenario: Only ``"domain"`` is supported.
        **kwargs: Source arguments of :class:`~clfw.benchmarks.mnist.MNISTStream` and stream arguments of
            :class:`~clfw.ContinualDataModule` (seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        n_tasks: int = 10,
        identity_first: bool = True,
        scenario: ScenarioName = "domain",
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario=scenario, **kwargs)
        if scenario != "domain":
            raise ValueError(f"PermutedMNIST supports only scenario='domain', got {scenario!r}")
        if n_tasks <= 0:
            raise ValueError(f"n_tasks must be positive, got {n_tasks}")
        self._n_tasks, self.identity_first = n_tasks, identity_first

    @property
    @override
    def n_tasks(self) -> int:
        return self._n_tasks

    def permutations(self) -> list[Tensor]:
        """The pixel permutation of each task (over the 784 flattened pixels)."""
        g = torch.Generator().manual_seed(self.seed)
        perms = [torch.randperm(784, generator=g) for _ in range(self._n_tasks)]
        if self.identity_first:
            perms[0] = torch.arange(784)
        return perms

    @override
    def build_stream(self) -> Stream:
        train, test = self.load()
        warps = [lambda x, p=p: x.flatten(1)[:, p].reshape(x.shape) for p in self.permutations()]
        tasks = domain_incremental_tasks(train, test, warps, 10, self.val_fraction, self.seed)
        return Stream(tasks, "domain", 10, (1, 28, 28), self.task_boundaries_visible)

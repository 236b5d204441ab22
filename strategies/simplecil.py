"""SimpleCIL: a prototype classifier on a frozen pretrained model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.distributed import sum_across_ranks
from clfw.frozen import FrozenFeatureModule


class SimpleCIL(FrozenFeatureModule):
    """SimpleCIL (Zhou, Cai, Ye & Zhan, IJCV 2024, "Revisiting Class-Incremental Learning with Pre-Trained Models:
    Generalizability and Adaptivity are All You Need").

    The backbone (a pretrained model) is never trained. At each task's end its features of the task's training data
    (eval transform, one pass) are summed per class, and the prototype of a class is the mean of all its features seen
    so far (across tasks, so in domain-IL over every domain). A sample's score for a class is the cosine similarity of
    its features and the class prototype, as the reference's cosine classifier whose weights are the prototypes;
    classes without a prototype score ``-inf``. Sums are in float64 and summed across DDP ranks.

    Args:
        adapt_first_task: Train the backbone's trainable parameters on the first task before freezing it (not
            SimpleCIL: the adaptation of :class:`~clfw.strategies.APER`, which also concatenates the features).
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(self, adapt_first_task: bool = False, **kwargs: Any) -> None:
        super().__init__(adapt_first_task=adapt_first_task, **kwargs)

    def feature_dim(self) -> int:
        """Size of :meth:`frozen_features`."""
        return self._num_features(self.backbone)

    @override
    def build_for_stream(self) -> None:
        device = self.head.weight.device
        shape = (self.stream.num_classes, self.feature_dim())
        self.register_buffer("class_sums", torch.zeros(shape, dtype=torch.float64, device=device))
        self.register_buffer("class_counts", torch.zeros(shape[0], dtype=torch.float64, device=device))

    def prototypes(self) -> Tensor:
        """Mean features of each class ``[num_classes, D]`` (zero rows for classes not seen)."""
        return (self.class_sums / self.class_counts.clamp_min(1)[:, None]).float()

    @override
    @torch.no_grad()
    def absorb(self, task: int) -> None:
        sums, counts = torch.zeros_like(self.class_sums), torch.zeros_like(self.class_counts)
        for features, labels, _ in self.task_features(task):
            sums.index_add_(0, labels, features.double())
            counts += torch.bincount(labels, minlength=len(counts)).double()
        sum_across_ranks([sums, counts])
        self.class_sums += sums
        self.class_counts += counts

    @override
    def classify(self, features: Tensor) -> Tensor:
        scores = F.normalize(features, dim=1) @ F.normalize(self.prototypes(), dim=1).T
        return scores.masked_fill(self.class_counts[None, :] == 0, float("-inf"))

"""``FrozenFeatureModule``: the base of the pretrained-model methods that classify frozen features (SimpleCIL, APER,
RanPAC): an optional first-task adaptation, then statistics gathered over each task's data at its end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from clfw.data import Batch
from clfw.evaluation import eval_mode
from clfw.module import ContinualModule


class FrozenFeatureModule(ContinualModule):
    """A strategy whose classifier is computed, not trained: with ``adapt_first_task`` the first task trains what the
    backbone leaves trainable (and the linear head) with cross-entropy, and the backbone is frozen at that task's end;
    every later step has nothing to learn by gradient (a zero loss on the head keeps Lightning's step and the plugins'
    hooks in step, as GDumb does). Subclasses implement :meth:`absorb` (a task's statistics, from
    :meth:`task_features`, at its end) and :meth:`classify` (scores from features); until the first task has ended
    (no statistics yet) the linear head predicts.

    Args:
        adapt_first_task: Train the first task with cross-entropy before freezing the backbone.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(self, adapt_first_task: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.adapt_first_task = adapt_first_task

    @override
    def training_loss(self, batch: Batch) -> Tensor | dict[str, Tensor] | None:
        if self.adapt_first_task and self.current_task == 0:
            return super().training_loss(batch)
        return self.head.bias.sum() * 0.0

    def task_features(self, task: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(features, labels, index in the task)`` of this rank's shard of ``task``'s training data, batch by batch
        (eval transform, eval mode, no gradients); sum what is gathered across ranks."""
        with eval_mode(self), torch.no_grad():
            for batch in self.datamodule.task_loader(task):
                x = batch.x.to(self.device)
                yield self.frozen_features(x), batch.y.to(self.device), batch.index.to(self.device)

    def frozen_features(self, x: Tensor) -> Tensor:
        """The features the statistics are gathered on and :meth:`classify` receives (default: :meth:`features`)."""
        return self.features(x)

    def absorb(self, task: int) -> None:
        """Adds ``task``'s statistics (called at its end, after the first task's adaptation)."""
        raise NotImplementedError

    def classify(self, features: Tensor) -> Tensor:
        """Class scores ``[B, num_classes]`` of the features, from the statistics absorbed so far."""
        raise NotImplementedError

    @override
    def on_task_end(self, task: int) -> None:
        if task == 0:
            self.backbone.requires_grad_(False)
        self.absorb(task)

    @override
    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        if self.current_task == 0 and not self.task_ended:  # nothing absorbed yet: the (adapted) linear head
            return super().predict(x, task_ids)
        return self.masked(self.classify(self.frozen_features(x)), task_ids)

"""``FrozenFeatureModule``: the base of the pretrained-model methods that classify frozen features (SimpleCIL, APER,
RanPAC): an optional first-task adaptation, then statistics gathered over each task's data at its end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from clfw.data import Batch
from clfw.distributed import zero_reaching
from clfw.evaluation import eval_mode
from clfw.module import ContinualModule


class FrozenFeatureModule(ContinualModule):
    """A strategy whose classifier is computed, not trained: with ``adapt_first_task`` the first task trains what the
    backbone leaves trainable (and the linear head) with cross-entropy; from then on (from the start without it) the
    network is frozen. Frozen steps keep Lightning's step and the plugins' hooks in step with a zero loss that reaches
    every parameter (so DDP, which reduces the gradients of the parameters it was given, sees each of them), and the
    network's gradients are dropped before the optimizer step, so no optimizer (momentum, weight decay) moves them.
    Subclasses implement :meth:`absorb` (a task's statistics, from
    :meth:`task_features`, at its end) and :meth:`classify` (scores from features); until the first task has ended
    (no statistics yet) the linear head predicts.

    Args:
        adapt_first_task: Train the first task with cross-entropy before freezing the backbone.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(self, adapt_first_task: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.adapt_first_task = adapt_first_task

    @property
    def adapting(self) -> bool:
        """Whether the network is being trained: the first task, with ``adapt_first_task``."""
        return self.adapt_first_task and self.current_task == 0 and not self.task_ended

    def network_parameters(self) -> list[nn.Parameter]:
        """The strategy's own trainable parameters (its plugins' left out)."""
        return [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("plugins.")]

    @override
    def training_loss(self, batch: Batch) -> Tensor | dict[str, Tensor] | None:
        if self.adapting:
            return super().training_loss(batch)
        return zero_reaching(self.network_parameters(), self.device)

    @override
    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.adapting:
            for p in self.network_parameters():
                p.grad = None

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
        self.absorb(task)

    @override
    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        if self.current_task == 0 and not self.task_ended:  # nothing absorbed yet: the (adapted) linear head
            return super().predict(x, task_ids)
        return self.masked(self.classify(self.frozen_features(x)), task_ids)

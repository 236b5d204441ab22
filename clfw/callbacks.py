"""``ContinualCallback``: Lightning callbacks that also hear about task boundaries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytorch_lightning as pl

if TYPE_CHECKING:
    from clfw.module import ContinualModule


class ContinualCallback(pl.Callback):
    """A Lightning callback with two more hooks, called by :class:`~clfw.ContinualModule` at task boundaries.

    ``on_task_end`` runs after the strategy's and its plugins' ``on_task_end``, so what a strategy prepares at task end
    (exemplars, Fisher, a retrained model) is in place when a callback evaluates.
    """

    def on_task_start(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        """Called when training on ``task`` begins, after the strategy's hooks."""

    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        """Called when training on ``task`` is over, after the strategy's hooks."""

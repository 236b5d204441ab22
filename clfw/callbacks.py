"""``ContinualCallback``: Lightning callbacks that also hear about task boundaries; a task-aware progress bar."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from typing_extensions import override

from clfw.datamodule import ContinualDataModule

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


class ContinualProgressBar(TQDMProgressBar):
    """Lightning's progress bar, labelled with the stream position: ``Task 2 (3/5), epoch 1/2``.

    The ``clfw`` CLI uses it instead of Lightning's default bar; pass it in ``callbacks`` when using the Python API.
    """

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        dm = trainer.datamodule
        if isinstance(dm, ContinualDataModule):
            epoch, per_task = trainer.current_epoch, dm.epochs_per_task
            task = dm.task_of_epoch(epoch)
            self.train_progress_bar.set_description(
                f"Task {task} ({task + 1}/{dm.n_tasks}), epoch {epoch % per_task + 1}/{per_task}"
            )

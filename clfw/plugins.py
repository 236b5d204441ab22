"""Plugins: behaviours that switch on for any strategy (clfw's composition mechanism).

A strategy is a :class:`~clfw.ContinualModule` subclass; a plugin is a :class:`Plugin` passed in its ``plugins``
argument, so a config can add one to any strategy, including one written outside clfw::

    model:
      class_path: mylab.MyStrategy
      init_args:
        plugins:
          - class_path: mylab.MyRegularizer
            init_args: {weight: 0.5}

The module calls each hook on itself first, then on each plugin in list order. A plugin is an ``nn.Module`` held
inside the strategy, so its buffers (importance weights, anchors) are saved in checkpoints, moved to the device and
seen by DDP without extra code; other state goes in ``get_extra_state``/``set_extra_state``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from clfw.data import Batch

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from clfw.module import ContinualModule


class Plugin(nn.Module):
    """Base class of plugins. Override only the hooks you need; each receives the strategy module first."""

    def on_setup(self, module: ContinualModule) -> None:
        """Called once the stream is known (``module.stream``), before training."""

    def on_task_start(self, module: ContinualModule, task: int) -> None:
        """Called when training on ``task`` begins, after the strategy's own ``on_task_start``."""

    def on_task_end(self, module: ContinualModule, task: int) -> None:
        """Called after the last training epoch of ``task``, before the task-end evaluation."""

    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        """Called at the start of each training step, before the loss is computed (refresh learning unlearns here)."""

    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Extra loss terms, added to the strategy's loss and logged as ``train/<name>``.

        ``outputs`` holds the strategy's ``"loss"`` and, when it computed them, the current batch's raw ``"logits"``.
        """
        return {}

    def before_optimizer_step(self, module: ContinualModule, optimizer: Optimizer) -> None:
        """Called with the final gradients in ``.grad`` (accumulated, DDP-averaged, unscaled), before clipping/step."""

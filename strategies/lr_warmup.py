"""Learning-rate warm-up at every task start (Hess et al.), as a plugin for any strategy."""

from __future__ import annotations

import torch
from typing_extensions import override

from clfw import ContinualModule, Plugin


class LRWarmup(Plugin):
    """Linear learning-rate warm-up at the start of every task (Hess, Tuytelaars & van de Ven, "Two complementary
    perspectives to continual learning: ask not only what to optimize, but also how", 2023; reference code
    TimmHess/ContinualEvaluation, ``lr_warmup_scheduler.py``): the ``k``-th optimizer step of a task (``k = 1, 2,
    ...``) runs at ``min(1, k / warmup_steps)`` times the learning rate it would have had, so each task starts with
    small steps, where the stability gap opens.

    The factor scales each parameter group's learning rate for the step only (set before the step, restored right
    after it), so it composes with any scheduler and checkpoints hold the unscaled rates. The step count of the task
    is a buffer: a resumed run continues the ramp where it stopped. Deviations from the reference code: there the
    first step after a task switch still ran at the full rate (the rate was rewritten only after it) and the ramp
    overwrote any other scheduler's rate; here the ramp starts at the task's first step and multiplies the current
    rate. ``first_task=False`` skips the first task's ramp (the reference warms up every task).

    Args:
        warmup_steps: Optimizer steps of the ramp at each task start (the reference's ``lr_warmup_steps``; its default
            0 switches it off, so this has no published default).
        first_task: Also warm up the first task.
    """

    def __init__(self, warmup_steps: int = 100, first_task: bool = True) -> None:
        super().__init__()
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps, self.first_task = warmup_steps, first_task
        self.register_buffer("task_steps", torch.zeros((), dtype=torch.long))
        self._restore: list[tuple[dict, float]] = []  # (parameter group, its rate) during a step

    def factor(self, task: int) -> float:
        """The learning-rate factor of the next optimizer step of ``task``.

        >>> w = LRWarmup(warmup_steps=4)
        >>> w.factor(1), w.factor(0)
        (0.25, 0.25)
        >>> _ = w.task_steps.fill_(3)
        >>> w.factor(1), LRWarmup(warmup_steps=4, first_task=False).factor(0)
        (1.0, 1.0)
        """
        if task == 0 and not self.first_task:
            return 1.0
        return min(1.0, (int(self.task_steps) + 1) / self.warmup_steps)

    @override
    def on_task_start(self, module: ContinualModule, task: int) -> None:
        self.task_steps.zero_()

    @override
    def before_optimizer_step(self, module: ContinualModule, optimizer: torch.optim.Optimizer) -> None:
        factor = self.factor(module.current_task)
        self._restore = [(group, group["lr"]) for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        module.log_train_term("lr_factor", torch.tensor(factor))

    @override
    def after_optimizer_step(self, module: ContinualModule) -> None:
        for group, lr in self._restore:
            group["lr"] = lr
        self._restore = []
        self.task_steps.add_(1)

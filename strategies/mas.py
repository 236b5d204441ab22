"""Memory Aware Synapses, as a plugin for any strategy."""

from __future__ import annotations

import torch
from typing_extensions import override

from clfw import ContinualModule
from clfw.fisher import output_sensitivity
from clfw.plugins import QuadraticPenalty


class MAS(QuadraticPenalty):
    """Memory Aware Synapses (Aljundi et al., ECCV 2018).

    After each task ``t`` it computes the importance ``Omega_t,i = (1/N) sum_k |d ||F(x_k)||_2^2 / d theta_i|`` over the
    task's N training samples, without labels (``clfw.fisher.output_sensitivity``; ``F`` is the model's logits
    restricted to its class mask). As in the paper, the absolute value is taken per sample (the authors' code takes it
    of each batch's summed gradient). The importances add up over tasks, ``Omega <- Omega + Omega_t``, without decay,
    as the authors' code does, and the anchor ``theta*`` becomes the current parameters. The loss gets the paper's
    penalty ``lambda sum_i Omega_i (theta_i - theta*_i)^2`` (no 1/2). Logged as ``train/mas``.

    A plugin, so it combines with any strategy: ``--model Naive --model.plugins+=clfw.strategies.MAS`` is MAS
    (``configs/model/mas.yaml``). Under DDP the importance is summed over the ranks' shards and divided by the global
    count, so every rank holds the same penalty.

    Args:
        mas_lambda: Penalty weight lambda (tune it per benchmark).
    """

    term = "mas"

    def __init__(self, mas_lambda: float = 1.0) -> None:
        if mas_lambda < 0:
            raise ValueError(f"mas_lambda must be >= 0, got {mas_lambda}")
        super().__init__(weight=mas_lambda)
        self.mas_lambda = mas_lambda

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        sensitivity = output_sensitivity(module, module.datamodule.task_loader(task, "train"))
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        importance = torch.cat([sensitivity[n].flatten() for n, _ in named])
        anchor = torch.cat([p.detach().flatten() for _, p in named])
        if self.tasks:
            self.importance.add_(importance)
            self.anchor.copy_(anchor)
        else:
            self.importance, self.anchor = importance, anchor
        self.tasks += 1

"""Gradient projection on top of replay (Hess et al.): a plugin for any replay strategy."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from clfw import ContinualModule, Plugin
from clfw.buffers import Memory, replay_memory
from clfw.strategies.agem import project_gradients


class GradientProjection(Plugin):
    """A-GEM-style projection of a replay strategy's update (Hess, Tuytelaars & van de Ven, "Two complementary
    perspectives to continual learning: ask not only what to optimize, but also how", 2023; reference code
    TimmHess/TwoComplementaryPerspectivesCL, ``er_agem.py``).

    The strategy keeps its objective (ER's joint loss on current and replayed samples, DER++'s ...); the plugin changes
    only how it is optimised. With the final gradient ``g`` of that loss (accumulated, DDP-averaged), it computes the
    reference gradient ``g_ref`` of the mean cross-entropy on ``sample_size`` samples of the strategy's replay memory
    (forward with BatchNorm layers in eval mode, as the reference code does) and, when they conflict, replaces ``g``
    by ``g - (g . g_ref / (g_ref . g_ref + eps)) g_ref`` (over all trainable parameters as one vector); otherwise
    ``g`` is left unchanged. Nothing happens while the memory is empty or during the first task.

    Deviations from the reference code: ``g_ref`` comes from its own draw of the memory (the reference code reuses
    the replayed samples of the loss, which a plugin does not see; its earlier ContinualEvaluation version drew
    separately, as here); the strategy's loss weighting is kept (the reference ER weights new data ``1/t`` and replay
    ``1 - 1/t``; clfw's ER averages over the joint batch). The projection is A-GEM's
    (:func:`clfw.strategies.agem.project_gradients`) with ``eps``. Under DDP each rank takes its block of one draw and
    ``g_ref`` is averaged across ranks, so every replica makes the same projection. Cost: one forward and backward pass
    of ``sample_size`` samples per step. Logged: ``train/projected`` (1 when the step was projected).

    Args:
        sample_size: Memory samples per reference gradient (the reference code: the training batch size).
        eps: Added to ``g_ref . g_ref`` (the reference code's 1e-7).
    """

    needs_task_boundaries = True  # projects from the second task on

    def __init__(self, sample_size: int = 32, eps: float = 1e-7) -> None:
        super().__init__()
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.sample_size, self.eps = sample_size, eps
        self._memory: list[Memory] = []  # a list: not a submodule of the plugin (the strategy owns it)

    @override
    def on_setup(self, module: ContinualModule) -> None:
        self._memory = [replay_memory(module, "GradientProjection")]

    @override
    def before_optimizer_step(self, module: ContinualModule, optimizer: torch.optim.Optimizer) -> None:
        memory = self._memory[0] if self._memory else replay_memory(module, "GradientProjection")
        if module.current_task < 1 or not len(memory):
            return
        drawn = memory.sample(self.sample_size)
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in norms:
            m.eval()
        try:
            projected = project_gradients(module, drawn, self.eps)
        finally:
            for m in norms:
                m.train()
        module.log_train_term("projected", torch.tensor(float(projected)))

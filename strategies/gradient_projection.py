"""Gradient projection on top of replay (Hess et al.): a plugin for any replay strategy."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import ContinualModule, Plugin
from clfw.buffers import Memory, replay_memory
from clfw.distributed import average_across_ranks


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
    ``1 - 1/t``; clfw's ER averages over the joint batch). Under DDP each rank takes its block of one draw and
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

    @staticmethod
    def project(g: Tensor, g_ref: Tensor, eps: float = 1e-7) -> Tensor:
        """``g`` with its component against ``g_ref`` removed when ``g . g_ref < 0``; else ``g`` itself.

        >>> GradientProjection.project(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 2.0]), eps=0.0).tolist()
        [1.0, 0.0]
        >>> GradientProjection.project(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])).tolist()
        [1.0, 1.0]
        """
        dot = torch.dot(g, g_ref)
        return g - (dot / (torch.dot(g_ref, g_ref) + eps)) * g_ref if dot < 0 else g

    @override
    def before_optimizer_step(self, module: ContinualModule, optimizer: torch.optim.Optimizer) -> None:
        memory = self._memory[0] if self._memory else replay_memory(module, "GradientProjection")
        if module.current_task < 1 or not len(memory):
            return
        params = [p for p in module.trainable_parameters() if p.grad is not None]
        drawn = memory.sample(self.sample_size)
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in norms:
            m.eval()
        try:
            with torch.enable_grad():
                logits = module.masked(module(module.replay_inputs(drawn["x"])), drawn["task"])
                ref = torch.autograd.grad(F.cross_entropy(logits, drawn["y"]), params, allow_unused=True)
        finally:
            for m in norms:
                m.train()
        g_ref = torch.cat(
            [(r if r is not None else torch.zeros_like(p)).flatten() for r, p in zip(ref, params, strict=True)]
        )
        average_across_ranks([g_ref])
        g = torch.cat([p.grad.flatten() for p in params])
        projected = self.project(g, g_ref, self.eps)
        module.log_train_term("projected", torch.tensor(float(projected is not g)))
        if projected is not g:
            for p, new in zip(params, projected.split([p.numel() for p in params]), strict=True):
                p.grad.copy_(new.view_as(p.grad))

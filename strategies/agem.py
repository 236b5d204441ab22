"""A-GEM: averaged gradient episodic memory."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import ContinualModule
from clfw.buffers import EpisodicMemory
from clfw.distributed import average_across_ranks
from clfw.plugins import split_like


class AGEM(ContinualModule):
    """Averaged GEM (Chaudhry, Ranzato, Rohrbach & Elhoseiny, ICLR 2019, "Efficient Lifelong Learning with A-GEM").

    The episodic memory gets ``buffer_size // n_tasks`` random samples of each task at the task's end (the paper's
    per-task episodic memory; the samples are drawn with a generator seeded from ``buffer_seed`` and the task). While
    training later tasks, the reference gradient ``g_ref`` is the gradient of the loss on ``sample_size`` samples drawn
    from the memory, and the final gradient ``g`` (after accumulation and DDP averaging) is replaced by
    ``g - (g . g_ref / g_ref . g_ref) g_ref`` when ``g . g_ref < 0`` (Eq. 11), over all trainable parameters as one
    vector. Under DDP each rank draws its own memory minibatch and ``g_ref`` is averaged across ranks, so every
    replica applies the same projection.

    Args:
        buffer_size: Memory capacity (samples), split evenly across the stream's tasks.
        sample_size: Memory samples per reference gradient (the paper's 256).
        buffer_seed: Seed of the memory's selection and sampling draws.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(self, buffer_size: int = 500, sample_size: int = 256, buffer_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        self.sample_size, self.buffer_seed = sample_size, buffer_seed
        self.buffer = EpisodicMemory(buffer_size, buffer_seed, "buffer_size")

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        self.buffer.check_tasks(self.stream.n_tasks)

    @staticmethod
    def project(g: Tensor, g_ref: Tensor, eps: float = 0.0) -> Tensor:
        """A-GEM's projection of the flat gradient ``g`` against ``g_ref``: ``g`` itself unless ``g . g_ref < 0``, else
        ``g - (g . g_ref / (g_ref . g_ref + eps)) g_ref``.

        >>> AGEM.project(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])).tolist()
        [1.0, 0.0]
        >>> AGEM.project(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])).tolist()
        [1.0, 1.0]
        """
        dot = torch.dot(g, g_ref)
        return g - (dot / (torch.dot(g_ref, g_ref) + eps)) * g_ref if dot < 0 else g

    @override
    def on_task_end(self, task: int) -> None:
        self.buffer.store_task(self, task)

    @override
    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not len(self.buffer):
            return
        project_gradients(self, self.buffer.sample(self.sample_size))


def project_gradients(module: ContinualModule, memory: dict[str, Tensor], eps: float = 0.0) -> bool:
    """A-GEM's step on the final gradients of ``module``'s trainable parameters: ``g_ref`` is the gradient of the
    cross-entropy (masked as the scenario masks) on the drawn ``memory`` samples, averaged across DDP ranks, and the
    gradients are replaced by :meth:`AGEM.project` of them against it. Returns whether they were projected."""
    params = [p for p in module.trainable_parameters() if p.grad is not None]
    with torch.enable_grad():
        logits = module.masked(module(module.replay_inputs(memory["x"])), memory["task"])
        ref = torch.autograd.grad(F.cross_entropy(logits, memory["y"]), params, allow_unused=True)
    g_ref = torch.cat(
        [(r if r is not None else torch.zeros_like(p)).flatten() for r, p in zip(ref, params, strict=True)]
    )
    average_across_ranks([g_ref])
    g = torch.cat([p.grad.flatten() for p in params])
    projected = AGEM.project(g, g_ref, eps)
    if projected is g:
        return False
    for p, new in zip(params, split_like(projected, params), strict=True):
        p.grad.copy_(new)
    return True

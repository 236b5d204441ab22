"""GEM: gradient episodic memory, with its quadratic program."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import ContinualModule
from clfw.buffers import EpisodicMemory
from clfw.plugins import split_like


class GEM(ContinualModule):
    """Gradient Episodic Memory (Lopez-Paz & Ranzato, NeurIPS 2017, "Gradient Episodic Memory for Continual Learning").

    Each task leaves ``buffer_size // n_tasks`` of its training samples in an episodic memory. At every step of a
    later task, the gradient ``g_k`` of the loss on each earlier task ``k``'s whole memory (outputs masked as the
    scenario masks them: the task's classes in task-IL) is computed; if the update conflicts with one of them
    (``g . g_k < 0``), it is replaced by the solution of the paper's quadratic program (Eq. 10-13): the closest
    ``g~`` to ``g`` with ``g~ . g_k >= 0`` for every ``k``, solved in its dual ``min_v 1/2 v^T G G^T v + g^T G^T v``
    subject to ``v >= memory_strength`` (``G`` the rows ``g_k``), ``g~ = G^T v + g``, by the Goldfarb-Idnani solver
    of ``quadprog`` (``pip install "clfw[gem]"``), as the reference code does. The gradients are those of all trainable
    parameters as one vector, after accumulation and DDP averaging; every rank holds the same memory and computes the
    same ``G``, so all replicas apply the same update.

    Deviations: the reference code keeps the last ``n_memories`` samples of each task seen in its single pass; here
    the memory is filled at the task's end with random samples of the task (the same distribution for i.i.d. task
    data, and valid with several epochs). Under DDP every rank computes ``G`` on the whole memory (no split).

    Args:
        buffer_size: Memory capacity (samples), split evenly across the stream's tasks (the paper keeps 256 per task).
        memory_strength: The dual variables' lower bound ``gamma`` (the reference code's ``memory_strength``, 0.5),
            which biases the update towards positive backward transfer; 0 gives the exact projection.
        eps: Added to the diagonal of ``G G^T`` so the solver's matrix is positive definite (the reference's 1e-3).
        buffer_seed: Seed of the memory's selection.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(
        self,
        buffer_size: int = 500,
        memory_strength: float = 0.5,
        eps: float = 1e-3,
        buffer_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if memory_strength < 0 or eps < 0:
            raise ValueError(f"memory_strength and eps must be >= 0, got {memory_strength} and {eps}")
        try:
            import quadprog  # noqa: F401
        except ImportError as err:
            raise ImportError(f'GEM needs quadprog: pip install "clfw[gem]" ({err})', name="quadprog") from err
        self.memory_strength, self.eps, self.buffer_seed = memory_strength, eps, buffer_seed
        self.buffer = EpisodicMemory(buffer_size, buffer_seed, "buffer_size")

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        self.buffer.check_tasks(self.stream.n_tasks)

    @staticmethod
    def project(g: Tensor, G: Tensor, memory_strength: float = 0.0, eps: float = 0.0) -> Tensor:
        """The GEM update of the flat gradient ``g`` against the rows of ``G`` (one per earlier task): ``g`` itself
        when ``G g >= 0``, else ``G^T v + g`` with ``v`` the dual QP's solution (quadprog, in float64).

        >>> GEM.project(torch.tensor([-1.0, -2.0]), torch.tensor([[1.0, 0.0], [-1.0, 1.0]])).tolist()
        [0.0, 0.0]
        """
        if bool((G @ g >= 0).all()):
            return g
        import quadprog

        Gd, gd = G.detach().double().cpu().numpy(), g.detach().double().cpu().numpy()
        P = Gd @ Gd.T
        P = 0.5 * (P + P.T) + eps * np.eye(len(P))
        v = quadprog.solve_qp(P, -(Gd @ gd), np.eye(len(P)), np.full(len(P), memory_strength))[0]
        return torch.from_numpy(Gd.T @ v + gd).to(g.dtype).to(g.device)

    @override
    def on_task_end(self, task: int) -> None:
        self.buffer.store_task(self, task)

    @override
    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not len(self.buffer):
            return
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        n = len(self.buffer)
        x, y, task = self.buffer.x[:n], self.buffer.y[:n], self.buffer.task[:n]
        rows = []
        with torch.enable_grad():
            for k in task.unique().tolist():
                pick = task == k
                logits = self.masked(self(self.replay_inputs(x[pick])), task[pick])
                grads = torch.autograd.grad(F.cross_entropy(logits, y[pick]), params, allow_unused=True)
                rows.append(torch.cat([(r if r is not None else torch.zeros_like(p)).flatten()
                                       for r, p in zip(grads, params, strict=True)]))  # fmt: skip
        g = torch.cat([p.grad.flatten() for p in params])
        new = self.project(g, torch.stack(rows), self.memory_strength, self.eps)
        if new is not g:
            for p, part in zip(params, split_like(new, params), strict=True):
                p.grad.copy_(part)

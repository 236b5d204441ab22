"""MIR: experience replay of the maximally interfered memory samples."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch
from clfw.evaluation import eval_mode
from clfw.strategies.er import ER


class MIR(ER):
    """Maximally Interfered Retrieval (Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin & Tuytelaars, NeurIPS 2019,
    "Online Continual Learning with Maximally Interfered Retrieval"; ER-MIR).

    ER whose replayed samples are chosen, not drawn: each step ``subsample`` candidates are drawn from the reservoir
    memory, the model takes a virtual SGD step on the incoming batch, ``theta_v = theta - lr * grad CE(batch)`` (``lr``
    the optimizer's current rate), and the ``replay_batch_size`` candidates whose loss increases most,
    ``CE(theta_v; x_c) - CE(theta; x_c)``, are replayed with the batch in ER's joint cross-entropy
    (:meth:`interference`).

    Deviations: the candidates' losses are computed in eval mode (no running-statistics updates from the virtual
    passes); under DDP each rank scores its own candidates with the gradient of its own part of the batch.

    Args:
        subsample: Candidates drawn from the memory per step (the reference code's default, 50).
        **kwargs: Arguments of :class:`~clfw.strategies.ER` (buffer_size, replay_batch_size ...) and
            :class:`~clfw.ContinualModule`.
    """

    def __init__(self, subsample: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if subsample < self.replay_batch_size:
            raise ValueError(f"subsample must be >= replay_batch_size ({self.replay_batch_size}), got {subsample}")
        self.subsample = subsample

    def interference(self, batch: Batch, candidates: dict[str, Tensor], lr: float) -> Tensor:
        """Per candidate, its loss after a virtual SGD step of rate ``lr`` on ``batch`` minus its loss now."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        loss = F.cross_entropy(self.masked(self(batch.x), batch.task), batch.y)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        virtual = {n: p.detach() - lr * g if g is not None else p.detach()
                   for (n, p), g in zip(params.items(), grads, strict=True)}  # fmt: skip
        x, y, task = self.replay_inputs(candidates["x"]), candidates["y"], candidates["task"]
        with torch.no_grad(), eval_mode(self):
            before = F.cross_entropy(self.masked(self(x), task), y, reduction="none")
            after = F.cross_entropy(self.masked(functional_call(self, virtual, (x,)), task), y, reduction="none")
        return after - before

    @override
    def draw_replay(self, batch: Batch) -> dict[str, Tensor]:
        candidates = self.buffer.sample(self.subsample)
        lr = float(self.optimizers().param_groups[0]["lr"]) if self._trainer is not None else 0.0
        chosen = (
            self.interference(batch, candidates, lr).topk(min(self.replay_batch_size, len(candidates["y"]))).indices
        )
        return {name: value[chosen] for name, value in candidates.items()}

"""ER-AML: experience replay with an asymmetric metric-learning loss on the incoming data."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch
from clfw.seeding import derived_generator
from clfw.strategies.er import ER


class ERAML(ER):
    """ER-AML (Caccia, Aljundi, Asadi, Tuytelaars, Pineau & Belilovsky, ICLR 2022, "New Insights on Reducing Abrupt
    Representation Change in Online Continual Learning").

    The incoming samples never meet the old classes' logits: they are trained with a supervised-contrastive loss in
    feature space against memory samples, while the replayed samples are trained with cross-entropy (the asymmetry
    that keeps the new classes from pushing the old representations away). For each incoming sample a positive (a
    stored sample of its class) and a negative (a stored sample of another class, of the same task when one is
    stored, else of any task) are drawn; with ``z`` the L2-normalised features, every anchor ``z_i`` (taken twice, as
    in Avalanche's ``AMLCriterion``) is scored against the ``2B`` drawn features ``z_j``, and
    ``L = -(tau / tau_base) mean_i mean_{j: y_j = y_i} log softmax_j(z_i . z_j / tau)`` (:meth:`supcon`). The total
    is that loss plus the cross-entropy of the replayed minibatch; while the memory is empty, the incoming batch's
    cross-entropy. Draws come from a generator derived from ``buffer_seed`` and the step, so a resume repeats them.

    Deviations: an incoming sample whose class has no stored sample yet is its own positive. The log-partition is
    taken per anchor (Avalanche 0.6's ``AMLCriterion`` subtracts it across the wrong axis).

    Args:
        temperature: ``tau`` of the contrastive loss (0.1).
        base_temperature: ``tau_base`` (0.07).
        **kwargs: Arguments of :class:`~clfw.strategies.ER` (buffer_size, replay_batch_size ...) and
            :class:`~clfw.ContinualModule`.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float = 0.07, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperature} and {base_temperature}")
        self.temperature, self.base_temperature = temperature, base_temperature

    @staticmethod
    def supcon(anchors: Tensor, anchor_y: Tensor, features: Tensor, y: Tensor, tau: float, tau_base: float) -> Tensor:
        """``-(tau / tau_base) mean_i mean_{j: y_j = y_i} log softmax_j(anchors_i . features_j / tau)``.

        >>> a, f = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> import math
        >>> expected = -(0.1 / 0.07) * (10 - math.log(math.exp(10) + 1))
        >>> abs(float(ERAML.supcon(a, torch.tensor([0]), f, torch.tensor([0, 1]), 0.1, 0.07)) - expected) < 1e-5
        True
        """
        log_prob = torch.log_softmax(anchors @ features.T / tau, dim=1)
        positive = (anchor_y[:, None] == y[None, :]).float()
        return -(tau / tau_base) * ((positive * log_prob).sum(1) / positive.sum(1).clamp_min(1)).mean()

    def draw_pairs(self, y: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        """Memory positions of a positive and a negative for each incoming label (``-1``: none stored)."""
        n = len(self.buffer)
        stored_y, stored_task = self.buffer.y[:n].to(y.device), self.buffer.task[:n].to(y.device)
        g = derived_generator(self.buffer.seed, 2, int(self.trainer.global_step) if self._trainer is not None else 0)
        u = torch.rand(len(y), 2, n, generator=g).to(y.device)
        same = y[:, None] == stored_y[None, :]
        other = ~same
        other_same_task = other & (task[:, None] == stored_task[None, :])
        other = torch.where(other_same_task.any(1, keepdim=True), other_same_task, other)
        pos = torch.where(same, u[:, 0], -1.0).argmax(1)
        neg = torch.where(other, u[:, 1], -1.0).argmax(1)
        return torch.where(same.any(1), pos, -1), torch.where(other.any(1), neg, -1)

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        if not len(self.buffer):
            return super().training_loss(batch)
        memory = self.draw_replay(batch)
        replay_x = self.replay_inputs(memory["x"])
        logits = self(replay_x)
        loss = F.cross_entropy(self.masked(logits, memory["task"]), memory["y"])
        pos, neg = self.draw_pairs(batch.y, batch.task)
        keep = neg >= 0  # an anchor needs a negative
        terms: dict[str, Tensor] = {}
        if bool(keep.any()):
            y = batch.y[keep]
            stored = self.buffer.x[: len(self.buffer)]
            has_pos = pos[keep] >= 0
            picks = torch.cat([pos[keep].clamp_min(0), neg[keep]])
            z = F.normalize(
                self.features(torch.cat([batch.x[keep], self.replay_inputs(stored[picks.to(stored.device)])])), dim=1
            )
            anchors, drawn = z[: len(y)], z[len(y) :]
            positives = torch.where(has_pos[:, None], drawn[: len(y)], anchors)  # no stored sample: its own positive
            drawn_y = torch.cat([y, self.buffer.y[: len(self.buffer)][neg[keep].to(stored.device)].to(y.device)])
            terms["aml"] = self.supcon(anchors.repeat(2, 1), y.repeat(2), torch.cat([positives, drawn[len(y) :]]),
                                       drawn_y, self.temperature, self.base_temperature)  # fmt: skip
            loss = loss + terms["aml"]
        self.buffer.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task)
        return {"loss": loss, **terms}

"""DER++: Dark Experience Replay plus replayed labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch
from clfw.strategies.der import DER


class DERPP(DER):
    """DER++ (Buzzega et al., NeurIPS 2020, Eq. 6): DER plus ``beta`` times the cross-entropy of a second replayed
    minibatch against its stored labels.

    Loss = CE(current batch) + ``alpha`` MSE(f(x'), z') + ``beta`` CE(f(x''), y''), where ``(x', z')`` and
    ``(x'', y'')`` are two independent draws from the memory (two calls of ``sample``, from different generator
    states), as in the paper and its code. Replayed labels are masked like the current batch's (the classes seen so
    far in class-IL, the sample's task in task-IL). Logged as ``train/der`` and ``train/derpp``.

    ``single_draw=True`` switches to Avalanche's cheaper formulation (``avalanche.training.DER``), which is not the
    paper's: one memory draw serves both terms, and one forward pass runs over the current batch and the replayed one
    together (their BatchNorm statistics are shared). It saves a draw and two forwards per step.

    Args:
        beta: Weight of the replayed-label cross-entropy (0.5 is the paper's best for Seq-CIFAR-10, 500 samples).
        alpha: Weight of the logit-matching term (0.2 is the paper's best with beta for Seq-CIFAR-10, 500 samples).
        single_draw: One memory draw and one joint forward for both terms (Avalanche's formulation), instead of the
            paper's two independent draws and separate forwards.
        **kwargs: Arguments of :class:`~clfw.strategies.DER` (buffer_size, replay_batch_size, buffer_seed,
            backbone ...).
    """

    def __init__(self, beta: float = 0.5, alpha: float = 0.2, single_draw: bool = False, **kwargs: Any) -> None:
        super().__init__(alpha=alpha, **kwargs)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta, self.single_draw = beta, single_draw

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        if not self.single_draw or not len(self.buffer):
            return super().training_loss(batch)
        memory, n = self.buffer.sample(self.replay_batch_size), len(batch.y)
        logits = self(torch.cat([batch.x, self.replay_inputs(memory["x"])]))
        current, replayed = logits[:n], logits[n:]
        loss = F.cross_entropy(self.masked(current, batch.task), batch.y)
        terms = {
            "der": self.alpha * F.mse_loss(replayed, memory["logits"]),
            "derpp": self.beta * F.cross_entropy(self.masked(replayed, memory["task"]), memory["y"]),
        }
        self.buffer.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task, logits=current.detach())
        return {"loss": loss + sum(terms.values()), "logits": current, **terms}

    @override
    def replay_terms(self) -> dict[str, Tensor]:
        terms = super().replay_terms()
        memory = self.buffer.sample(self.replay_batch_size)
        logits = self.masked(self(self.replay_inputs(memory["x"])), memory["task"])
        return {**terms, "derpp": self.beta * F.cross_entropy(logits, memory["y"])}

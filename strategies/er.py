"""Experience Replay with a reservoir buffer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.buffers import ReservoirBuffer


class ER(ContinualModule):
    """Experience Replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning"; reservoir memory as
    in Riemer et al. 2019 and Mammoth's ``er``).

    Each step, a minibatch drawn from the memory is concatenated with the current batch and the cross-entropy of the
    joint batch is minimised; then the current batch's raw inputs are offered to the reservoir memory. Replayed inputs
    go through the training transform when drawn (the memory stores them untransformed, e.g. uint8). Under DDP every
    rank holds the same memory (see :class:`~clfw.buffers.ReservoirBuffer`) and takes its block of one replay draw.

    Args:
        buffer_size: Memory capacity (samples).
        replay_batch_size: Samples replayed per step (Mammoth's ``minibatch_size``).
        buffer_seed: Seed of the memory's insertion and sampling draws.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(
        self, buffer_size: int = 500, replay_batch_size: int = 32, buffer_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be >= 1, got {replay_batch_size}")
        self.replay_batch_size = replay_batch_size
        self.buffer = ReservoirBuffer(buffer_size, buffer_seed, "buffer_size")

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        x, y, task, memory = self.joint_batch(batch)
        terms: dict[str, Tensor] = {}
        logits = self(x)
        loss = F.cross_entropy(self.masked(logits, task), y)
        if memory is not None:
            terms = self.replay_terms(x[len(batch.y) :], memory, logits[len(batch.y) :])
        self.buffer.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task)
        for term in terms.values():
            loss = loss + term
        return {"loss": loss, **terms, "logits": logits[: len(batch.y)]}

    def joint_batch(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor] | None]:
        """Model inputs, labels and task ids of ``batch`` followed by a replayed draw (:meth:`draw_replay`, through the
        training transform), and the draw itself (``None`` while the memory is empty)."""
        if not len(self.buffer):
            return batch.x, batch.y, batch.task, None
        memory = self.draw_replay(batch)
        x = torch.cat([batch.x, self.replay_inputs(memory["x"])])
        return x, torch.cat([batch.y, memory["y"]]), torch.cat([batch.task, memory["task"]]), memory

    def draw_replay(self, batch: Batch) -> dict[str, Tensor]:
        """The memory samples replayed with ``batch``: a uniform draw of ``replay_batch_size`` for ER (MIR's choice)."""
        return self.buffer.sample(self.replay_batch_size)

    def replay_terms(self, x: Tensor, memory: dict[str, Tensor], logits: Tensor) -> dict[str, Tensor]:
        """Extra loss terms on the replayed samples (their model inputs ``x``, the drawn ``memory`` fields, and their
        raw ``logits`` from the joint forward), added to the loss and logged: none for ER (CLS-ER's consistency)."""
        return {}

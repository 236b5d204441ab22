"""ER-ACE: experience replay with the asymmetric cross-entropy."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch
from clfw.strategies.er import ER


class ERACE(ER):
    """ER-ACE (Caccia et al., ICLR 2022, "New Insights on Reducing Abrupt Representation Change in Online Continual
    Learning").

    Asymmetric cross-entropy: the incoming batch's softmax runs only over the classes present in that batch (so new
    classes do not push the old ones' logits down), while a replayed minibatch from a reservoir memory gets the usual
    cross-entropy over all classes seen so far. The two are separate forward passes and their losses are added, as in
    the paper's Eq. 6. In task-IL the incoming mask is further restricted to each sample's task (a no-op when a batch
    holds one task). Logged as ``train/replay``.

    Args:
        **kwargs: Arguments of :class:`~clfw.strategies.ER` (buffer_size, replay_batch_size, buffer_seed, backbone ...).
    """

    def incoming_mask(self, batch: Batch) -> Tensor:
        """Boolean ``[B, num_classes]``: the classes present in the incoming batch (within each sample's class mask)."""
        present = torch.zeros(self.stream.num_classes, dtype=torch.bool, device=batch.y.device)
        present[batch.y] = True
        mask = self.class_mask(batch.task)
        return present.expand(len(batch.y), -1) if mask is None else mask & present

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        logits = self(batch.x)
        loss = F.cross_entropy(logits.masked_fill(~self.incoming_mask(batch), float("-inf")), batch.y)
        terms = {}
        if len(self.buffer):
            memory = self.buffer.sample(self.replay_batch_size)
            replay = self.masked(self(self.replay_inputs(memory["x"])), memory["task"])
            terms["replay"] = F.cross_entropy(replay, memory["y"])
        self.buffer.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task)
        return {"loss": loss + sum(terms.values()), "logits": logits, **terms}

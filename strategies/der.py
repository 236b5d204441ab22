"""Dark Experience Replay: replay the logits seen at insertion."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.buffers import ReservoirBuffer


class DER(ContinualModule):
    """Dark Experience Replay (Buzzega et al., NeurIPS 2020, "Dark Experience for General Continual Learning").

    A reservoir memory stores each training sample's raw input, label, task id and the raw logits the network gave it
    when it was inserted (all classes, before that step's update). The loss is the cross-entropy of the current batch
    plus ``alpha`` times the mean squared error between the network's logits on a replayed minibatch and the stored
    ones (Eq. 4 of the paper; the MSE averages over samples and logits, as the reference code does). Replayed inputs go
    through the training transform when drawn. The current batch and the replayed one are separate forward passes, as in
    the reference code. Logged as ``train/der``. :class:`~clfw.strategies.DERPP` adds the label term.

    Args:
        buffer_size: Memory capacity (samples).
        replay_batch_size: Samples replayed per step (the paper's minibatch size of the memory).
        alpha: Weight of the logit-matching term (0.3 is the paper's best for Seq-CIFAR-10 with 500 samples).
        buffer_seed: Seed of the memory's insertion and sampling draws.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(
        self,
        buffer_size: int = 500,
        replay_batch_size: int = 32,
        alpha: float = 0.3,
        buffer_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if replay_batch_size < 1 or alpha < 0:
            raise ValueError(f"replay_batch_size must be >= 1 and alpha >= 0, got {replay_batch_size}, {alpha}")
        self.replay_batch_size, self.alpha = replay_batch_size, alpha
        self.buffer = ReservoirBuffer(buffer_size, buffer_seed, "buffer_size")

    def replay_terms(self) -> dict[str, Tensor]:
        """The memory terms of the loss, each already weighted."""
        memory = self.buffer.sample(self.replay_batch_size)
        return {"der": self.alpha * F.mse_loss(self(self.replay_inputs(memory["x"])), memory["logits"])}

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        logits = self(batch.x)
        loss = F.cross_entropy(self.masked(logits, batch.task), batch.y)
        terms = self.replay_terms() if len(self.buffer) else {}
        self.buffer.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task, logits=logits.detach())
        return {"loss": loss + sum(terms.values()), "logits": logits, **terms}

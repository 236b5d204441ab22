"""DER++: Dark Experience Replay plus replayed labels."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.strategies.der import DER


class DERPP(DER):
    """DER++ (Buzzega et al., NeurIPS 2020, Eq. 6): DER plus ``beta`` times the cross-entropy of a second replayed
    minibatch against its stored labels.

    Loss = CE(current batch) + ``alpha`` MSE(f(x'), z') + ``beta`` CE(f(x''), y''), where ``(x', z')`` and
    ``(x'', y'')`` are two independent draws from the memory (two calls of ``sample``, from different generator
    states), as in the paper and its code. Replayed labels are masked like the current batch's (the classes seen so
    far in class-IL, the sample's task in task-IL). Logged as ``train/der`` and ``train/derpp``.

    Args:
        beta: Weight of the replayed-label cross-entropy (0.5 is the paper's best for Seq-CIFAR-10, 500 samples).
        alpha: Weight of the logit-matching term (0.2 is the paper's best with beta for Seq-CIFAR-10, 500 samples).
        **kwargs: Arguments of :class:`~clfw.strategies.DER` (buffer_size, replay_batch_size, buffer_seed,
            backbone ...).
    """

    def __init__(self, beta: float = 0.5, alpha: float = 0.2, **kwargs: Any) -> None:
        super().__init__(alpha=alpha, **kwargs)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    @override
    def replay_terms(self) -> dict[str, Tensor]:
        terms = super().replay_terms()
        memory = self.buffer.sample(self.replay_batch_size)
        logits = self.masked(self(self.replay_inputs(memory["x"])), memory["task"])
        return {**terms, "derpp": self.beta * F.cross_entropy(logits, memory["y"])}

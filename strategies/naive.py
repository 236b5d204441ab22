"""Naive fine-tuning: the lower bound."""

from __future__ import annotations

from clfw import ContinualModule


class Naive(ContinualModule):
    """Fine-tuning: trains on each task in turn with the plain cross-entropy of :class:`~clfw.ContinualModule`.

    Nothing protects old tasks, so it shows catastrophic forgetting: the lower bound every method is compared with
    (called "SGD" or "Fine-tune" in the literature). All arguments are those of :class:`~clfw.ContinualModule`.
    """

"""Cumulative: retrain on all data seen so far."""

from __future__ import annotations

from typing import ClassVar

from clfw import ContinualModule
from clfw.datamodule import TrainingData


class Cumulative(ContinualModule):
    """Cumulative training: during task ``t`` the model trains on the union of tasks ``0..t``, for the same number of
    epochs per task as any strategy.

    An upper reference that stores everything. Its training budget grows with the stream: task ``t`` costs
    ``t + 1`` times the samples of one task, ``(T + 1) / 2`` times a sequential strategy's total over ``T`` equal tasks
    (as Avalanche's ``Cumulative``). All arguments are those of :class:`~clfw.ContinualModule`.
    """

    training_data: ClassVar[TrainingData] = "seen"

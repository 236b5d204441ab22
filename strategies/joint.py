"""Joint: all tasks' data at once, the upper bound."""

from __future__ import annotations

from typing import ClassVar

from clfw import ContinualModule
from clfw.datamodule import TrainingData


class Joint(ContinualModule):
    """Joint training on the union of all tasks, i.i.d., from the first step: the usual upper bound.

    Budget: the same number of optimizer steps and sample visits as a sequential strategy. Over the stream's
    ``n_tasks * epochs_per_task`` epochs, each epoch serves the next ``1/n_tasks`` of a shuffled pass over all data, so
    Joint makes ``epochs_per_task`` full passes (as Mammoth's and Avalanche's joint training, which run the per-task
    epoch count over the union). Rows of its accuracy matrix are snapshots along the way; the last row is the bound.
    In class-IL every class is unmasked from the start. All arguments are those of :class:`~clfw.ContinualModule`.
    """

    training_data: ClassVar[TrainingData] = "all"

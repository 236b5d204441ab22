"""``TrainLog``: the ``train/*`` series (the loss and its terms), logged as means over Lightning's logging interval.

Lightning's ``self.log`` costs about 0.7 ms a call on a small CPU, and Lightning sends step metrics to the loggers only
every ``trainer.log_every_n_steps`` steps anyway, so logging each term at every step mostly paid for values that were
thrown away. Instead, each step adds its detached terms to running sums on their device (no host synchronisation),
and on the steps where Lightning would log step metrics the means over the interval go to the loggers in one
``log_metrics`` call (one synchronisation per interval), at the global step and with the ``epoch`` key that Lightning
would give them. Under DDP every rank keeps its own sums and global rank 0's means are logged (no collective), as
``self.log`` without ``sync_dist`` logs rank 0's values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    import pytorch_lightning as pl


class TrainLog:
    """Running sums of named scalars over the current logging interval."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: Tensor) -> None:
        """Adds a scalar (detached, summed in at least float32 on its device; never modified in place)."""
        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        total = self.sums.get(name)
        if total is None:  # a copy, once an interval: the caller may change its tensor in place later
            self.sums[name], self.counts[name] = value.clone(), 1
        else:
            self.sums[name], self.counts[name] = total + value, self.counts[name] + 1

    def means(self) -> dict[str, float]:
        """The mean of each series over the interval (one host synchronisation)."""
        if not self.sums:
            return {}
        sums = torch.stack([s.reshape(()).float() for s in self.sums.values()]).tolist()
        return {n: s / self.counts[n] for n, s in zip(self.sums, sums, strict=True)}

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def flush(self, trainer: pl.Trainer) -> None:
        """Logs the interval's means as ``train/<name>`` and starts a new interval.

        Global rank 0 sends them to every logger at Lightning's step for this batch's metrics, with ``epoch``, as
        Lightning's own row of step metrics would be; every rank puts them in ``trainer.logged_metrics`` and
        ``train/loss`` in the progress bar's metrics.
        """
        if not self.sums:
            return
        means = {f"train/{n}": m for n, m in self.means().items()}
        self.clear()
        connector = trainer._logger_connector
        connector._logged_metrics.update({k: torch.tensor(v) for k, v in means.items()})
        if "train/loss" in means:
            connector._progress_bar_metrics["train/loss"] = means["train/loss"]
        if trainer.is_global_zero and trainer.loggers:
            row: dict[str, Any] = {**means, "epoch": trainer.current_epoch}
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in trainer.loggers:
                logger.log_metrics(row, step=step)

    def state_dict(self) -> dict[str, Any]:
        """The interval so far (sums on the CPU), for checkpoints: a resumed run logs the same means."""
        return {"sums": {n: s.cpu() for n, s in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {n: s.to(device) for n, s in state["sums"].items()}
        self.counts = dict(state["counts"])

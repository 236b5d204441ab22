"""The ``train/*`` series: interval means at Lightning's logging steps, every value with ``log_every_step``, and a
resume in the middle of an interval that logs what the uninterrupted run logs.

The stream: 2 tasks x 2 epochs x 6 batches, 24 optimizer steps; Lightning logs step metrics at the steps ``s`` with
``(s + 1) % log_every_n_steps == 0`` (the CSV's ``step`` column counts optimizer steps from 0).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw import Batch, ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.strategies import Naive
from tests.helpers import Interrupt, TinyStream, fit

STEPS = 24


class Recorder(Plugin):
    """A loss term ``weight * mean(logits^2)``; records each step's strategy loss, term and total (as the module adds
    them) by the step's index."""

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__()
        self.weight = weight
        self.values: dict[int, dict[str, float]] = {}

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        term = self.weight * outputs["logits"].pow(2).mean()
        total = outputs["loss"] + term  # the same float operation as the module's
        step = module.trainer.global_step
        self.values[step] = {"train/loss": float(total.detach()), "train/l2": float(term.detach())}
        return {"l2": term}


def model(**kwargs: Any) -> tuple[Naive, Recorder]:
    torch.manual_seed(0)
    recorder = Recorder()
    return Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[recorder], **kwargs), recorder


def stream() -> TinyStream:
    return TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)


def train_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "run" / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("train/loss")]


def logger(root: Path) -> pl.loggers.CSVLogger:
    return pl.loggers.CSVLogger(root, name="", version="run")


def test_the_interval_mean_is_logged_at_lightnings_logging_steps(tmp_path: Path) -> None:
    m, rec = model()
    trainer, _ = fit(m, stream(), logger=logger(tmp_path), log_every_n_steps=5)
    assert sorted(rec.values) == list(range(STEPS))
    rows = train_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [4, 9, 14, 19], "steps 20-23 end no interval"
    assert [int(r["epoch"]) for r in rows] == [s // 6 for s in (4, 9, 14, 19)]
    for row in rows:  # the interval of step 14 spans the end of epoch 1: it is counted in steps, not epochs
        step = int(row["step"])
        interval = [rec.values[s] for s in range(step - 4, step + 1)]
        for key in ("train/loss", "train/l2"):
            assert float(row[key]) == pytest.approx(sum(v[key] for v in interval) / 5, rel=1e-6, abs=1e-9), (step, key)
    # callbacks (monitors) still read each step's value; the progress bar shows the last interval's mean
    assert float(trainer.callback_metrics["train/loss"]) == rec.values[STEPS - 1]["train/loss"]
    assert trainer.progress_bar_metrics["train/loss"] == pytest.approx(float(rows[-1]["train/loss"]), rel=1e-6)


def test_log_every_step_logs_every_value_whatever_log_every_n_steps(tmp_path: Path) -> None:
    m, rec = model(log_every_step=True)
    fit(m, stream(), logger=logger(tmp_path), log_every_n_steps=5)
    rows = train_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(STEPS))
    for row in rows:
        expected = rec.values[int(row["step"])]
        assert int(row["epoch"]) == int(row["step"]) // 6
        for key in ("train/loss", "train/l2"):
            assert float(row[key]) == pytest.approx(expected[key], rel=1e-6, abs=1e-9)


def test_a_resume_in_the_middle_of_an_interval_logs_the_uninterrupted_means(tmp_path: Path) -> None:
    """Checkpoints every 4 steps, logs every 3: the run dies after step 10 and resumes from global step 8, whose
    interval (batches 6 and 7 of the steps logged at 8) is half done; the CSV history must equal the reference's."""

    def run(root: Path, extra: list[pl.Callback], ckpt_path: str | None = None) -> None:
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=4)
        fit(model()[0], stream(), [*extra, ckpt], logger=logger(root), log_every_n_steps=3, enable_checkpointing=True,
            root=str(root), ckpt_path=ckpt_path)  # fmt: skip

    run(tmp_path / "ref", [])
    reference = train_rows(tmp_path / "ref")
    assert [int(r["step"]) for r in reference] == list(range(2, STEPS, 3))
    with pytest.raises(RuntimeError, match="interrupted"):
        run(tmp_path / "run", [Interrupt(10)])
    run(tmp_path / "run", [], ckpt_path=str(tmp_path / "run" / "ckpt" / "last.ckpt"))
    assert train_rows(tmp_path / "run") == reference

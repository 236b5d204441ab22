"""ContinualEvaluation: per-iteration curves, no effect on training, agreement with the accuracy matrix, logging."""

from __future__ import annotations

import csv
import json
import os

import pytest
import pytorch_lightning as pl
import torch

from clfw import ContinualEvaluation
from clfw.backbones import MLP
from clfw.strategies import Naive
from tests.helpers import TinyStream, fit


def model(dropout: float = 0.0) -> Naive:
    return Naive(
        backbone=MLP(in_features=16, hidden=(16,), dropout=dropout), optimizer=lambda p: torch.optim.SGD(p, lr=0.2)
    )


def stream(**kwargs) -> TinyStream:
    return TinyStream(n_tasks=3, num_classes_total=6, train_per_class=24, test_per_class=10, batch_size=8, **kwargs)


def test_curves_drop_on_old_tasks_when_a_new_task_starts() -> None:
    torch.manual_seed(0)
    ce = ContinualEvaluation(windows=[4])
    fit(model(), stream(epochs_per_task=2), callbacks=[ce])
    tr = ce.tracker
    end0 = tr.ends[0]
    task0_during_1 = [row[0] for row, c in zip(tr.acc, tr.current, strict=True) if c == 1]
    assert tr.acc[end0][0] >= 0.9, "task 0 is learned by its end"
    assert min(task0_during_1) <= tr.acc[end0][0] - 0.5, "class-IL Naive: task 0 collapses once task 1 trains"
    gaps = tr.stability_gaps()
    assert [g["task"] for g in gaps] == [0, 1] and gaps[0]["drop"] >= 0.5
    assert ce.last["min_acc"] is not None and ce.last["min_acc"] < 0.5
    # one evaluation per optimizer step plus the point before training
    assert tr.steps == list(range(0, 3 * 2 * 6 + 1))


def test_final_weights_are_bit_identical_with_and_without_the_callback() -> None:
    weights = []
    for callbacks in ([], [ContinualEvaluation()]):
        torch.manual_seed(0)
        m = model(dropout=0.3)
        fit(m, stream(), callbacks=callbacks)
        weights.append(m.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("tasks", ["seen", "all"])
def test_task_end_points_equal_the_accuracy_matrix_on_the_whole_test_set(tasks: str) -> None:
    ce = ContinualEvaluation(samples_per_task=10_000, tasks=tasks)
    _, matrix = fit(model(), stream(), callbacks=[ce])
    for i, index in ce.tracker.ends.items():
        point = ce.tracker.acc[index]
        evaluated = range(i + 1) if tasks == "seen" else range(3)
        for j in evaluated:
            assert point[j] == matrix.rows[i][j]
        assert all(point[j] is None for j in range(3) if j not in evaluated)


def test_every_evaluation_reaches_the_logger_despite_log_every_n_steps(tmp_path) -> None:
    ce = ContinualEvaluation(every_n_steps=3)
    logger = pl.loggers.CSVLogger(tmp_path)
    fit(model(), stream(), callbacks=[ce], logger=logger, log_every_n_steps=50)
    rows = list(csv.DictReader(open(os.path.join(logger.log_dir, "metrics.csv"))))
    logged_steps = sorted({int(r["step"]) for r in rows if r.get("cl/acc")})
    # multiples of 3 among the 18 steps, the point before training, and the task ends (steps 6, 12, 18)
    assert logged_steps == ce.tracker.steps == [0, 3, 6, 9, 12, 15, 18]
    assert any(r.get("cl/min_acc") for r in rows) and any(r.get("cl/task_2/acc") for r in rows)


def test_metrics_json_holds_curves_summary_and_run_metadata(tmp_path) -> None:
    ce = ContinualEvaluation(windows=[3])
    fit(model(), stream(), callbacks=[ce], root=str(tmp_path))
    data = json.load(open(tmp_path / "metrics.json"))
    assert data["accuracy_matrix"] and data["summary"]["average_accuracy"] is not None
    cont = data["continual"]
    assert cont["steps"] == ce.tracker.steps and len(cont["accuracy"]) == len(cont["steps"])
    assert set(cont["last"]) >= {"acc", "min_acc", "wc_acc", "forgetting", "bwt", "wf_3", "wp_3"}
    assert len(cont["stability_gaps"]) == 2
    assert data["run"]["versions"]["torch"] == torch.__version__.split("+")[0]


def test_state_round_trip() -> None:
    ce = ContinualEvaluation(windows=[3])
    fit(model(), stream(), callbacks=[ce])
    copy = ContinualEvaluation(windows=[3])
    copy.load_state_dict(ce.state_dict())
    assert copy.tracker.acc == ce.tracker.acc and copy.tracker.stability_gaps() == ce.tracker.stability_gaps()
    assert copy.last == ce.last


def test_subsample_is_fixed_and_seeded() -> None:
    a, b, c = (
        ContinualEvaluation(samples_per_task=5),
        ContinualEvaluation(samples_per_task=5),
        ContinualEvaluation(samples_per_task=5, seed=1),
    )
    pa, pb, pc = (cb.subsample_positions([20, 8]) for cb in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert not torch.equal(pa[0], pc[0]) and [len(p) for p in pa] == [5, 5]
    assert len(ContinualEvaluation(samples_per_task=50).subsample_positions([8])[0]) == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"samples_per_task": 0}, "samples_per_task"),
        ({"tasks": "future"}, "tasks must be"),
        ({"windows": [1]}, "at least 2"),
        ({"split": "train"}, "split must be"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContinualEvaluation(**kwargs)


def test_val_split_is_evaluated_instead_of_test_and_needs_one(tmp_path) -> None:
    """split='val' evaluates on the held-out part of the training data (for choosing hyperparameters by the gap):
    its task-end points equal the accuracy matrix's validation rows; without a validation split it refuses."""
    ce = ContinualEvaluation(samples_per_task=10_000, split="val")
    _, matrix = fit(model(), stream(val_fraction=0.25), callbacks=[ce], default_root_dir=str(tmp_path))
    n_val = 3 * 2 * 6  # a quarter of 24 per class, 2 classes, 3 tasks (not the 60 test samples)
    assert ce.split == "val" and len(ce._data[1]) == n_val
    for i, index in ce.tracker.ends.items():
        assert ce.tracker.acc[index][: i + 1] == matrix.val_rows[i][: i + 1]
    with pytest.raises(ValueError, match=r"split='val'.*no val split.*val_fraction"):
        fit(model(), stream(), callbacks=[ContinualEvaluation(split="val")], default_root_dir=str(tmp_path / "b"))


class ImageLogger(pl.loggers.CSVLogger):
    """A logger that takes images, like W&B's: records what it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.images: list[tuple[str, list[str]]] = []

    def log_image(self, key: str, images: list, step: int | None = None) -> None:
        self.images.append((key, images))


def test_plots_are_saved_and_handed_to_image_loggers(tmp_path) -> None:
    logger = ImageLogger(tmp_path)
    fit(model(), stream(), callbacks=[ContinualEvaluation()], logger=logger)
    for name in ("accuracy_matrix", "stability_gap"):
        path = os.path.join(logger.log_dir, f"{name}.png")
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert (f"plots/{name}", [path]) in logger.images

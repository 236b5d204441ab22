"""A one-task stream is legal: ACC is its accuracy; forgetting, BWT, FWT and the stability metrics are None."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from clfw import ContinualEvaluation
from clfw.backbones import MLP
from clfw.evaluation import format_matrix
from clfw.metrics import (
    avalanche_forgetting,
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    summarize,
)
from clfw.plots import accuracy_matrix_figure, stability_gap_figure
from clfw.stability import StabilityTracker
from clfw.strategies import Naive
from tests.helpers import TinyStream, fit

UNDEFINED = ("forgetting", "backward_transfer", "avalanche_forgetting", "forward_transfer")


def test_fit_on_one_task_writes_acc_and_null_transfer_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    dm = TinyStream(n_tasks=1, num_classes_total=2, scenario="task", batch_size=8)
    module = Naive(backbone=MLP(in_features=16, hidden=(8,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.2))
    ce = ContinualEvaluation(samples_per_task=10_000)  # the whole test set, as the accuracy matrix
    fit(module, dm, callbacks=[ce], root=str(tmp_path))

    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["n_tasks"] == data["tasks_completed"] == 1
    [[acc]] = data["accuracy_matrix"]
    assert len(data["initial_accuracy"]) == 1 and 0.5 < acc <= 1.0
    assert data["summary"] == {"average_accuracy": acc, **dict.fromkeys(UNDEFINED)}
    last = data["continual"]["last"]
    assert last["acc"] == last["wc_acc"] == pytest.approx(acc)
    assert last["min_acc"] is None and last["forgetting"] is None and last["bwt"] is None
    assert data["continual"]["stability_gaps"] == [] and data["continual"]["task_end_index"] == {
        "0": len(ce.tracker.acc) - 1
    }
    assert (tmp_path / "accuracy_matrix.png").exists() and (tmp_path / "stability_gap.png").exists()
    printed = capsys.readouterr().out
    assert '"forgetting": null' in printed and "Continual evaluation (last step)" in printed


@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_summary_of_a_one_by_one_matrix(scenario: str) -> None:
    assert summarize([[0.7]], [0.2], scenario) == {"average_accuracy": 0.7, **dict.fromkeys(UNDEFINED)}


def test_undefined_metrics_are_none_not_nan_or_zero() -> None:
    R = [[0.7]]
    assert average_accuracy(R) == 0.7
    assert forgetting(R) is None and backward_transfer(R) is None and avalanche_forgetting(R) is None
    assert forward_transfer(R, [0.2]) is None


def test_stability_metrics_of_one_task() -> None:
    tr = StabilityTracker(windows=(2,))
    metrics = [tr.update(step, 0, [a]) for step, a in enumerate([0.1, 0.8, 0.6])]
    tr.end_task(0)
    assert [m["wc_acc"] for m in metrics] == [0.1, 0.8, 0.6]  # k = 1: WC-ACC is the task's accuracy
    assert all(m[k] is None for m in metrics for k in ("min_acc", "forgetting", "bwt"))
    assert metrics[-1]["wf_2"] == pytest.approx(0.2) and tr.stability_gaps() == []


def test_table_and_figures_of_one_task() -> None:
    assert format_matrix([[0.7]], [0.2]).splitlines()[2:] == ["      init |    20.0", "         0 |    70.0"]
    assert isinstance(accuracy_matrix_figure([[0.7]], [0.2]), Figure)
    assert isinstance(stability_gap_figure([0, 1, 2], [0, 0, 0], [[0.1], [0.8], [0.6]], {0: 2}), Figure)

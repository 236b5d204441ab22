"""Summary metrics on hand-computed accuracy matrices."""

from __future__ import annotations

import pytest

from clfw.evaluation import format_matrix
from clfw.metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, summarize

# Task-IL-like matrix: rows before a task was trained hold real accuracies (0.9 on task 1 before training it).
R = [
    [0.8, 0.9, 0.3],
    [0.7, 0.6, 0.4],
    [0.5, 0.5, 0.9],
]


def test_hand_computed_values() -> None:
    assert average_accuracy(R) == pytest.approx((0.5 + 0.5 + 0.9) / 3)
    # task 0: max(0.8, 0.7) - 0.5 = 0.3; task 1: only row 1 counts, 0.6 - 0.5 = 0.1 (row 0's 0.9 came before training)
    assert forgetting(R) == pytest.approx(0.2)
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.8) + (0.5 - 0.6)) / 2)
    assert forward_transfer(R, [0.1, 0.2, 0.3]) == pytest.approx(((0.9 - 0.2) + (0.4 - 0.3)) / 2)


def test_max_forgetting_and_avalanche_forgetting_differ() -> None:
    from clfw.metrics import avalanche_forgetting

    # task 0 peaks after its own training (0.9 after task 1): max-form forgetting measures from the peak
    M = [[0.6, 0.0, 0.0], [0.9, 0.8, 0.0], [0.7, 0.8, 0.9]]
    assert forgetting(M) == pytest.approx(0.1)
    assert avalanche_forgetting(M) == pytest.approx(-0.05) == pytest.approx(-backward_transfer(M))


def test_undefined_metrics_are_none() -> None:
    assert forgetting([[0.7]]) is None and backward_transfer([[0.7]]) is None
    assert forward_transfer([[0.7]], [0.1]) is None
    assert summarize([[0.7]], [0.1], "task") == {
        "average_accuracy": 0.7,
        "forgetting": None,
        "backward_transfer": None,
        "avalanche_forgetting": None,
        "forward_transfer": None,
    }
    assert summarize(R, [0.1, 0.2, 0.3], "class")["forward_transfer"] is None


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="T rows of at least T entries"):
        average_accuracy([[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError, match="initial accuracy for each of the 3 tasks"):
        forward_transfer(R, [0.1])


def test_table() -> None:
    text = format_matrix(R, [0.1, 0.2, 0.3])
    assert text.splitlines()[2].split() == ["init", "|", "10.0", "20.0", "30.0"]
    assert text.splitlines()[-1].split() == ["2", "|", "50.0", "50.0", "90.0"]

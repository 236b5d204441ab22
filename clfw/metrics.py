"""Summary metrics: pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy on task ``j``'s test set after training task ``i`` (tasks ``0..T-1``); ``b[j]`` is the
accuracy on task ``j`` before any training. Values are fractions in ``[0, 1]``. A metric that is undefined for the
given matrix is ``None``: forgetting, BWT and FWT of a one-task stream (there is no earlier or later task).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _square(R: Matrix) -> int:
    T = len(R)
    if T == 0 or any(len(row) < T for row in R):
        raise ValueError(
            f"the accuracy matrix must have T rows of at least T entries, got row lengths {[len(r) for r in R]}"
        )
    return T


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def average_accuracy(R: Matrix) -> float:
    """ACC = mean over j of ``R[T-1][j]``: the final accuracy averaged over all tasks.

    >>> average_accuracy([[0.9, 0.1], [0.5, 0.8]])
    0.65
    >>> average_accuracy([[0.7]])  # one task: its accuracy
    0.7
    """
    T = _square(R)
    return sum(R[T - 1][j] for j in range(T)) / T


def forgetting(R: Matrix) -> float | None:
    """Forgetting in the max form (Chaudhry et al. 2018): mean over j < T-1 of ``max_{j<=i<T-1} R[i][j] - R[T-1][j]``.

    Only rows from task j's own training on count: rows before it would count forward transfer as forgetting.

    >>> R = [[0.9, 0.6, 0.1],
    ...      [0.7, 0.8, 0.2],
    ...      [0.5, 0.4, 0.9]]
    >>> round(forgetting(R), 6)  # task 0: max(0.9, 0.7) - 0.5 = 0.4; task 1: 0.8 - 0.4 = 0.4
    0.4
    >>> forgetting([[0.7]]) is None  # one task: no earlier task to forget
    True
    """
    T = _square(R)
    return _mean([max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)])


def backward_transfer(R: Matrix) -> float | None:
    """BWT (Lopez-Paz & Ranzato 2017): mean over j < T-1 of ``R[T-1][j] - R[j][j]``. Negative means forgetting.

    >>> R = [[0.9, 0.6, 0.1],
    ...      [0.7, 0.8, 0.2],
    ...      [0.5, 0.4, 0.9]]
    >>> round(backward_transfer(R), 6)  # ((0.5 - 0.9) + (0.4 - 0.8)) / 2
    -0.4
    >>> backward_transfer([[0.7]]) is None
    True
    """
    T = _square(R)
    return _mean([R[T - 1][j] - R[j][j] for j in range(T - 1)])


def avalanche_forgetting(R: Matrix) -> float | None:
    """Avalanche's "forgetting": mean over j < T-1 of ``R[j][j] - R[T-1][j]`` (accuracy right after training j minus
    the final one), which equals ``-BWT``. It differs from :func:`forgetting` when a task's best accuracy comes after
    its own training. Kept under this name so results compare with published Avalanche numbers.

    >>> R = [[0.6, 0.0, 0.0],
    ...      [0.9, 0.8, 0.0],   # task 0 improved while task 1 was trained
    ...      [0.7, 0.8, 0.9]]
    >>> round(avalanche_forgetting(R), 6)  # ((0.6 - 0.7) + (0.8 - 0.8)) / 2
    -0.05
    >>> round(forgetting(R), 6)  # ((0.9 - 0.7) + (0.8 - 0.8)) / 2
    0.1
    >>> avalanche_forgetting([[0.7]]) is None
    True
    """
    T = _square(R)
    return _mean([R[j][j] - R[T - 1][j] for j in range(T - 1)])


def forward_transfer(R: Matrix, b: Sequence[float]) -> float | None:
    """FWT (Lopez-Paz & Ranzato 2017): mean over j >= 1 of ``R[j-1][j] - b[j]``.

    ``b`` is the accuracy before any training. Meaningless in class-IL, where unseen classes are masked.

    >>> R = [[0.9, 0.6, 0.1],
    ...      [0.7, 0.8, 0.2],
    ...      [0.5, 0.4, 0.9]]
    >>> round(forward_transfer(R, [0.1, 0.5, 0.3]), 6)  # ((0.6 - 0.5) + (0.2 - 0.3)) / 2
    0.0
    >>> forward_transfer([[0.7]], [0.1]) is None  # one task: no later task to transfer to
    True
    """
    T = _square(R)
    if len(b) < T:
        raise ValueError(f"need an initial accuracy for each of the {T} tasks, got {len(b)}")
    return _mean([R[j - 1][j] - b[j] for j in range(1, T)])


def summarize(R: Matrix, b: Sequence[float] | None = None, scenario: str = "class") -> dict[str, float | None]:
    """All task-end summary metrics of a (possibly partial, k x k) accuracy matrix.

    Forward transfer is ``None`` in class-IL, where it is not applicable, or without initial accuracies; every metric
    is ``None`` where it is undefined (``nan`` entries included), so a one-task matrix has only ACC.

    >>> summarize([[0.9, 0.1], [0.5, 0.8]], [0.1, 0.1], scenario="task")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'average_accuracy': 0.65, 'forgetting': 0.4, 'backward_transfer': -0.4, 'avalanche_forgetting': 0.4,
     'forward_transfer': 0.0}
    >>> summarize([[0.7]], [0.1], scenario="task")  # doctest: +NORMALIZE_WHITESPACE
    {'average_accuracy': 0.7, 'forgetting': None, 'backward_transfer': None, 'avalanche_forgetting': None,
     'forward_transfer': None}
    """
    out: dict[str, float | None] = {
        "average_accuracy": average_accuracy(R),
        "forgetting": forgetting(R),
        "backward_transfer": backward_transfer(R),
        "avalanche_forgetting": avalanche_forgetting(R),
        "forward_transfer": None,
    }
    if scenario != "class" and b is not None:
        out["forward_transfer"] = forward_transfer(R, b)
    return {k: (None if v is None or math.isnan(v) else round(v, 10)) for k, v in out.items()}

"""Per-iteration continual-evaluation metrics (De Lange, van de Ven & Tuytelaars, ICLR 2023), from accuracy curves.

:class:`StabilityTracker` receives, at each evaluation step, the accuracy ``A(E_i, f_t)`` on each evaluated task and
returns the metrics at that step. It is pure Python, so it is tested on scripted sequences. Definitions (tasks from 0,
``c`` the task being trained, "finished" tasks are ``i < c`` whose training ended):

- ``acc``: mean accuracy over the tasks seen so far (``i <= c``).
- ``min_acc`` (min-ACC): mean over finished tasks ``i`` of the lowest accuracy on ``i`` at any evaluation after the end
  of its training (the task-end evaluation itself excluded).
- ``wc_acc`` (WC-ACC): ``(1/k) A(E_c, f_t) + (1 - 1/k) min_acc`` with ``k = c + 1`` tasks seen; ``A(E_c, f_t)`` alone
  while ``k = 1``.
- ``wf_<w>`` / ``wp_<w>`` (windowed forgetting / plasticity): per task, the largest drop ``A_a - A_b`` (rise
  ``A_b - A_a``) between evaluations ``a < b`` less than ``w`` evaluation steps apart, over its whole history so far;
  averaged over the tasks evaluated so far, **the current task included**. Windows count evaluation steps, which equal
  iterations only when evaluating every step.
- ``forgetting`` (per iteration): mean over finished tasks of (best accuracy on ``i`` since its training began) minus
  the current one. Counting only from the start of task ``i`` keeps forward transfer out, as the task-end max form does.
- ``bwt`` (per iteration): mean over finished tasks of the current accuracy minus the accuracy at the end of its
  training.

Undefined values are ``None``, never ``0.0`` or ``nan``: ``min_acc``, ``forgetting`` and ``bwt`` until a task has
finished while another is trained, so always on a one-task stream; ``wc_acc`` when the current task is not evaluated.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class StabilityTracker:
    """Accumulates per-iteration accuracies and derives the continual-evaluation metrics.

    Args:
        windows: Window sizes (in evaluation steps) of windowed forgetting and plasticity.
        tolerance: How close (in accuracy, 0.01 = 1 point) a task must come back to its end-of-training accuracy to
            count as recovered in :meth:`stability_gaps`.

    >>> tr = StabilityTracker(windows=(2,))
    >>> tr.update(1, 0, [0.5])["acc"]
    0.5
    >>> tr.update(2, 0, [0.9])["wp_2"]
    0.4
    >>> tr.end_task(0)
    >>> m = tr.update(3, 1, [0.3, 0.6])  # task 0 drops right after task 1 starts: the stability gap
    >>> round(m["min_acc"], 6), round(m["wc_acc"], 6), round(m["forgetting"], 6), round(m["bwt"], 6)
    (0.3, 0.45, 0.6, -0.6)
    >>> m = tr.update(4, 1, [0.8, 0.7])
    >>> round(m["min_acc"], 6), round(m["wf_2"], 6)  # min stays 0.3; wf_2 = (task 0: 0.9 -> 0.3, task 1: 0) / 2
    (0.3, 0.3)

    A one-task stream: WC-ACC is the task's accuracy; nothing is finished while another task trains, so min-ACC,
    forgetting and BWT stay undefined, and there is no stability gap.

    >>> tr = StabilityTracker(windows=(2,))
    >>> _ = tr.update(0, 0, [0.1])
    >>> _ = tr.update(1, 0, [0.8])
    >>> m = tr.update(2, 0, [0.6])  # the task-end evaluation
    >>> tr.end_task(0)
    >>> m["acc"], m["wc_acc"], m["min_acc"], m["forgetting"], m["bwt"], round(m["wf_2"], 6), round(m["wp_2"], 6)
    (0.6, 0.6, None, None, None, 0.2, 0.7)
    >>> tr.stability_gaps()
    []
    """

    def __init__(self, windows: Sequence[int] = (10, 100), tolerance: float = 0.01) -> None:
        if any(w < 2 for w in windows):
            raise ValueError(f"windows must be at least 2 evaluation steps, got {list(windows)}")
        self.windows = tuple(int(w) for w in windows)
        self.tolerance = tolerance
        self.steps: list[int] = []
        self.current: list[int] = []
        self.acc: list[list[float | None]] = []
        self.ends: dict[int, int] = {}  # task -> index of its task-end evaluation
        self._reset_derived()

    def _reset_derived(self) -> None:
        self._end_acc: dict[int, float] = {}
        self._min_after: dict[int, float] = {}
        self._best: dict[int, float] = {}
        self._recent = {w: {} for w in self.windows}  # w -> task -> deque of the last w - 1 accuracies
        self._wf = {w: {} for w in self.windows}
        self._wp = {w: {} for w in self.windows}

    def update(self, step: int, current_task: int, accs: Sequence[float | None]) -> dict[str, float | None]:
        """Records one evaluation (``accs[i]``: accuracy on task ``i``, ``None``/nan if not evaluated).

        Returns the metrics at this step.
        """
        row = [None if a is None or (isinstance(a, float) and math.isnan(a)) else float(a) for a in accs]
        self.steps.append(int(step))
        self.current.append(int(current_task))
        self.acc.append(row)
        return self._advance(row, current_task)

    def _advance(self, row: list[float | None], c: int) -> dict[str, float | None]:
        for i, a in enumerate(row):
            if a is None:
                continue
            for w in self.windows:
                recent = self._recent[w].setdefault(i, deque(maxlen=w - 1))
                if recent:
                    self._wf[w][i] = max(self._wf[w].get(i, 0.0), max(recent) - a)
                    self._wp[w][i] = max(self._wp[w].get(i, 0.0), a - min(recent))
                else:
                    self._wf[w].setdefault(i, 0.0)
                    self._wp[w].setdefault(i, 0.0)
                recent.append(a)
            if i in self._end_acc:
                self._min_after[i] = min(self._min_after.get(i, a), a)
            if i <= c:
                self._best[i] = max(self._best.get(i, a), a)
        return self.metrics(row, c)

    def end_task(self, task: int) -> None:
        """Marks the last recorded evaluation as the end of ``task``'s training."""
        if not self.acc or self.acc[-1][task] is None:
            raise ValueError(f"task {task} must be evaluated at its end before end_task({task})")
        self.ends[task] = len(self.acc) - 1
        self._end_acc[task] = self.acc[-1][task]  # type: ignore[assignment]

    def metrics(self, row: list[float | None], c: int) -> dict[str, float | None]:
        seen = [a for i, a in enumerate(row) if i <= c and a is not None]
        finished = [i for i in self._end_acc if i < c and row[i] is not None]
        out: dict[str, float | None] = {"acc": _mean(seen)}
        out["min_acc"] = _mean([self._min_after[i] for i in finished if i in self._min_after])
        a_c = row[c] if c < len(row) else None
        out["wc_acc"] = None
        if a_c is not None:
            out["wc_acc"] = (
                a_c if c == 0 or out["min_acc"] is None else a_c / (c + 1) + (1 - 1 / (c + 1)) * out["min_acc"]
            )
        out["forgetting"] = _mean([self._best[i] - row[i] for i in finished])  # type: ignore[operator]
        out["bwt"] = _mean([row[i] - self._end_acc[i] for i in finished])  # type: ignore[operator]
        for w in self.windows:
            out[f"wf_{w}"] = _mean(list(self._wf[w].values()))
            out[f"wp_{w}"] = _mean(list(self._wp[w].values()))
        return out

    def stability_gaps(self) -> list[dict[str, Any]]:
        """For each task with a successor: its accuracy at the end of its training, the lowest it fell during the next
        task (and at which step), the drop, and the steps from the next task's start until it came back within
        ``tolerance`` (0 if it never fell below; ``None`` if it had not recovered by the end of the next task)."""
        gaps = []
        for task, end in sorted(self.ends.items()):
            during = [
                (self.steps[e], self.acc[e][task])
                for e in range(end + 1, len(self.acc))
                if self.current[e] == task + 1 and self.acc[e][task] is not None
            ]
            if not during:
                continue
            before = self._end_acc[task]
            low_step, low = min(during, key=lambda p: p[1])
            start = during[0][0]
            if low >= before - self.tolerance:
                recovery: int | None = 0
            else:
                back = [s for s, a in during if s >= low_step and a >= before - self.tolerance]
                recovery = back[0] - start + 1 if back else None
            gaps.append(
                {
                    "task": task,
                    "before": before,
                    "min": low,
                    "min_step": low_step,
                    "drop": before - low,
                    "recovery_steps": recovery,
                }
            )
        return gaps

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "current": self.current, "acc": self.acc, "ends": self.ends}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the curves and rebuilds everything derived from them by replaying them."""
        steps, current, acc, ends = state["steps"], state["current"], state["acc"], dict(state["ends"])
        self.steps, self.current, self.acc, self.ends = [], [], [], {}
        self._reset_derived()
        end_at = {e: t for t, e in ends.items()}
        for s, c, row in zip(steps, current, acc, strict=True):
            self.update(s, c, row)
            if len(self.acc) - 1 in end_at:
                self.end_task(end_at[len(self.acc) - 1])

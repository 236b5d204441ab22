"""Comparing the stability gap of several multi-seed rows: per-task gap depth and recovery, and the mean curves.

Pure functions of the runs' ``metrics.json`` (the ``"continual"`` section written by
:class:`~clfw.ContinualEvaluation`), used by ``clfw-seeds --aggregate``. Definitions (per run, from
:meth:`~clfw.stability.StabilityTracker.stability_gaps`; a task "with a successor" is any but the last):

- **gap depth** of task ``i``: its accuracy at the end of its training minus its minimum while task ``i + 1`` trains.
- **recovery steps** of task ``i``: optimizer steps from task ``i + 1``'s start until task ``i`` is back within the
  tolerance (``ContinualEvaluation.tolerance``, 1 point by default) of its end-of-training accuracy, 0 if it never
  fell further; **not recovered** if it was still below when task ``i + 1`` ended. Such seeds are counted, never
  averaged in as a number.

Over seeds, a row's cell is the mean ± sample std (n - 1); recovery steps average only the seeds that recovered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from clfw.stability import StabilityTracker


def _continual(metrics: dict[str, Any], where: str) -> dict[str, Any]:
    cont = metrics.get("continual")
    if not isinstance(cont, dict) or not cont.get("steps"):
        raise ValueError(f"{where}: no per-iteration curves (metrics.json has no 'continual' section; add "
                         "clfw.ContinualEvaluation to the trainer's callbacks)")  # fmt: skip
    return cont


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; ``None`` below two values).

    >>> mean_std([1.0, 3.0])
    (2.0, 1.4142135623730951)
    >>> mean_std([5.0]), mean_std([])
    ((5.0, None), (None, None))
    """
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)


def recomputed_gaps(cont: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """A run's stability gaps recomputed from its curves with another recovery ``tolerance``.

    >>> cont = {"steps": [0, 1, 2, 3], "current_task": [0, 0, 1, 1], "task_end_index": {"0": 1},
    ...         "accuracy": [[0.5], [0.9], [0.6], [0.87]]}
    >>> [g["recovery_steps"] for g in (recomputed_gaps(cont, 0.01) + recomputed_gaps(cont, 0.05))]
    [None, 2]
    """
    tracker = StabilityTracker(windows=(2,), tolerance=tolerance)
    tracker.load_state_dict(
        {"steps": cont["steps"], "current": cont["current_task"], "acc": cont["accuracy"],
         "ends": {int(t): i for t, i in cont.get("task_end_index", {}).items()}}
    )  # fmt: skip
    return tracker.stability_gaps()


def gap_summary(runs: Sequence[dict[str, Any]], where: str = "runs", tolerance: float | None = None) -> dict[str, Any]:
    """Per-task and overall gap statistics of one row's runs (depths in accuracy points, 0-100). With ``tolerance``,
    recovery is recounted from the curves with it (:func:`recomputed_gaps`) instead of the runs' own.

    Returns ``{"tasks": {i: {"depth": [..per seed], "recovery": [..recovered seeds], "never": k}}, "depth": [per-seed
    mean depth over tasks], "recovery": [every recovered (seed, task)], "never": k, "gaps": n, "tolerance": t}``.

    >>> run = {"continual": {"steps": [0], "stability_gaps": [
    ...     {"task": 0, "drop": 0.30, "recovery_steps": 12}, {"task": 1, "drop": 0.10, "recovery_steps": None}]}}
    >>> s = gap_summary([run, run])
    >>> [round(d, 6) for d in s["tasks"][0]["depth"]], s["tasks"][0]["recovery"], s["tasks"][1]["never"]
    ([30.0, 30.0], [12, 12], 2)
    >>> [round(d, 6) for d in s["depth"]], s["never"], s["gaps"]
    ([20.0, 20.0], 2, 4)

    Raises:
        ValueError: A run has no per-iteration curves, or the runs measured different task sets or counted recovery
            with different tolerances.
    """
    tasks: dict[int, dict[str, Any]] = {}
    depth, recovery, never, n_gaps, task_sets, tolerances = [], [], 0, 0, set(), set()
    for r, metrics in enumerate(runs):
        cont = _continual(metrics, f"{where} (run {r})")
        gaps = recomputed_gaps(cont, tolerance) if tolerance is not None else cont.get("stability_gaps") or []
        task_sets.add(tuple(g["task"] for g in gaps))
        tolerances.add(tolerance if tolerance is not None else cont.get("tolerance"))
        if gaps:
            depth.append(100 * sum(g["drop"] for g in gaps) / len(gaps))
        for g in gaps:
            cell = tasks.setdefault(int(g["task"]), {"depth": [], "recovery": [], "never": 0})
            cell["depth"].append(100 * g["drop"])
            n_gaps += 1
            if g["recovery_steps"] is None:
                cell["never"] += 1
                never += 1
            else:
                cell["recovery"].append(g["recovery_steps"])
                recovery.append(g["recovery_steps"])
    if len(task_sets) > 1:
        raise ValueError(f"{where}: the runs measured gaps on different tasks {sorted(task_sets)}")
    if len(tolerances) > 1:
        raise ValueError(f"{where}: the runs counted recovery with different tolerances {sorted(map(str, tolerances))}")
    return {"tasks": dict(sorted(tasks.items())), "depth": depth, "recovery": recovery, "never": never, "gaps": n_gaps,
            "tolerance": next(iter(tolerances), None)}  # fmt: skip


def _cell(values: Sequence[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def recovery_cell(recovered: Sequence[float], never: int) -> str:
    """Mean ± std of the recovered seeds' steps, and how many never recovered.

    >>> recovery_cell([10, 20], 0), recovery_cell([10], 4), recovery_cell([], 5)
    ('15 ± 7', '10 (+4 never)', 'never (5)')
    """
    if not recovered:
        return f"never ({never})" if never else "n/a"
    return _cell(recovered, 0) + (f" (+{never} never)" if never else "")


def gap_tables(rows: dict[str, dict[str, Any]], stats: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: the overview table (ACC, min-ACC, WC-ACC from ``stats`` of :func:`clfw.seeds.aggregate`; gap depth,
    recovery steps and not-recovered gaps from ``rows`` of :func:`gap_summary`) and the per-task table.

    >>> run = {"continual": {"steps": [0], "stability_gaps": [{"task": 0, "drop": 0.3, "recovery_steps": None}]}}
    >>> stat = {k: {"mean": 50.0, "std": None, "n": 1} for k in ("ACC", "min-ACC", "WC-ACC")}
    >>> print(gap_tables({"ER": gap_summary([run])}, {"ER": stat}))
    | run | seeds | ACC | min-ACC | WC-ACC | gap depth | recovery steps | not recovered |
    |---|---|---|---|---|---|---|---|
    | ER | 1 | 50.0 | 50.0 | 50.0 | 30.0 | none | 1 of 1 |
    <BLANKLINE>
    | run | task 0 depth | task 0 recovery |
    |---|---|---|
    | ER | 30.0 | never (1) |
    """
    head = ["run", "seeds", "ACC", "min-ACC", "WC-ACC", "gap depth", "recovery steps", "not recovered"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        st = stats[name]
        metric = [
            "n/a" if st[k]["mean"] is None
            else f"{st[k]['mean']:.1f}" + (f" ± {st[k]['std']:.1f}" if st[k]["std"] is not None else "")
            for k in ("ACC", "min-ACC", "WC-ACC")
        ]  # fmt: skip
        lines.append(
            "| " + " | ".join([name, str(st["ACC"]["n"]), *metric, _cell(s["depth"]),
                               recovery_cell(s["recovery"], 0) if s["recovery"] or not s["gaps"] else "none",
                               f"{s['never']} of {s['gaps']}"]) + " |"
        )  # fmt: skip
    tasks = sorted({t for s in rows.values() for t in s["tasks"]})
    head = ["run", *(f"task {t} {what}" for t in tasks for what in ("depth", "recovery"))]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        cells = []
        for t in tasks:
            cell = s["tasks"].get(t, {"depth": [], "recovery": [], "never": 0})
            cells += [_cell(cell["depth"]), recovery_cell(cell["recovery"], cell["never"])]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def mean_curve(runs: Sequence[dict[str, Any]], task: int, where: str = "runs") -> dict[str, Any]:
    """Mean and sample std over seeds of the accuracy (0-100) on ``task`` at each evaluated step, with the step where
    its training ended and where the next task's ended (``None`` if not reached).

    >>> def run(accs):
    ...     return {"continual": {"steps": [0, 1, 2], "current_task": [0, 0, 1], "task_end_index": {"0": 1},
    ...             "accuracy": [[a] for a in accs]}}
    >>> c = mean_curve([run([0.0, 0.8, 0.4]), run([0.2, 1.0, 0.6])], task=0)
    >>> c["steps"], [round(m, 6) for m in c["mean"]], c["end"], c["next_end"]
    ([0, 1, 2], [10.0, 90.0, 50.0], 1, None)

    Raises:
        ValueError: The runs were evaluated at different steps or ended tasks at different steps, so their curves
            cannot be averaged point by point; or a run has no curves.
    """
    ref: tuple | None = None
    values: list[list[float]] = []
    for r, metrics in enumerate(runs):
        cont = _continual(metrics, f"{where} (run {r})")
        pts = [(s, 100 * row[task]) for s, row in zip(cont["steps"], cont["accuracy"], strict=True)
               if task < len(row) and row[task] is not None]  # fmt: skip
        ends = {int(t): cont["steps"][i] for t, i in cont.get("task_end_index", {}).items()}
        key = (tuple(s for s, _ in pts), ends.get(task), ends.get(task + 1))
        if ref is None:
            ref = key
        elif key != ref:
            raise ValueError(f"{where}: run {r} was evaluated at other steps (or ended tasks at other steps) than run "
                             "0, so their curves cannot be averaged point by point")  # fmt: skip
        values.append([a for _, a in pts])
    if ref is None:
        raise ValueError(f"{where}: no runs")
    stats = [mean_std(column) for column in zip(*values, strict=True)]
    return {"steps": list(ref[0]), "mean": [m for m, _ in stats], "std": [s or 0.0 for _, s in stats],
            "end": ref[1], "next_end": ref[2], "n": len(values)}  # fmt: skip

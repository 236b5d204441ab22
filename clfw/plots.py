"""Figures of a run: the accuracy matrix as an annotated heatmap, and the per-iteration curves (stability gap).

Pure functions of the measured values returning matplotlib ``Figure`` objects (no pyplot state, no backend choice), and
:func:`save_and_log`, which writes a PNG and hands it to the loggers that take images (TensorBoard, W&B).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytorch_lightning as pl
from matplotlib.figure import Figure


def accuracy_matrix_figure(R: Sequence[Sequence[float]], initial: Sequence[float] | None = None) -> Figure:
    """``R[i][j]`` (after task i, on task j) as a heatmap annotated in percent; the initial row on top if given."""
    rows = ([list(initial)] if initial is not None else []) + [list(r) for r in R]
    labels = (["init"] if initial is not None else []) + [str(i) for i in range(len(R))]
    n_cols = len(rows[0]) if rows else 0
    # at least title-wide and two rows high: a one-task stream has a single column
    fig = Figure(figsize=(max(3.6, 1.0 + 0.8 * n_cols), max(2.4, 1.0 + 0.6 * len(rows))))
    ax = fig.add_subplot()
    values = [[float("nan") if a is None else 100 * a for a in row] for row in rows]
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(values):
        for j, a in enumerate(row):
            if a == a:  # not nan
                ax.text(j, i, f"{a:.1f}", ha="center", va="center", color="white" if a < 60 else "black", fontsize=8)
    ax.set_xticks(range(n_cols), [str(j) for j in range(n_cols)])
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title("Accuracy matrix (%)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def stability_gap_figure(
    steps: Sequence[int],
    current: Sequence[int],
    acc: Sequence[Sequence[float | None]],
    ends: dict[int, int],
) -> Figure:
    """Per-task accuracy over training steps, task boundaries as vertical lines, and each finished task's minimum
    after its training (its contribution to min-ACC) as a dashed horizontal segment: the stability-gap figure."""
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    n_tasks = max((len(r) for r in acc), default=0)
    colors = [f"C{i % 10}" for i in range(n_tasks)]
    for i in range(n_tasks):
        pts = [(s, 100 * r[i]) for s, r in zip(steps, acc, strict=True) if i < len(r) and r[i] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=colors[i], lw=1.2, label=f"task {i}")
        if i in ends:
            after = [
                (s, 100 * r[i])
                for s, r in zip(steps[ends[i] + 1 :], acc[ends[i] + 1 :], strict=True)
                if r[i] is not None
            ]
            if after:
                low = min(a for _, a in after)
                ax.hlines(low, after[0][0], after[-1][0], colors=colors[i], linestyles="dashed", lw=0.8)
    for task, index in sorted(ends.items()):
        if task < max(current, default=0):
            ax.axvline(steps[index], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Per-iteration accuracy per task (dashed: minimum after the task's training)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def gap_comparison_figure(curves: dict[str, dict[int, dict]], tasks: Sequence[int], title: str = "") -> Figure:
    """One panel per task in ``tasks`` (two per row): each row's mean accuracy on that task around and after the end
    of its training (from a quarter of the next task's length before it to the end of the next task), with a band of
    one standard deviation over seeds and the task's end as a vertical line: several strategies' stability gaps side by
    side.

    Args:
        curves: Row label -> task -> :func:`clfw.compare.mean_curve` of that row's runs.
        tasks: The tasks to draw, one panel each.
        title: Figure title (e.g. the stream).
    """
    n_cols = min(2, len(tasks))
    n_rows = -(-len(tasks) // n_cols)
    fig = Figure(figsize=(5.0 * n_cols + 2.4, 3.4 * n_rows + (0.4 if title else 0)))
    axes = fig.subplots(n_rows, n_cols, squeeze=False).reshape(-1)
    for ax, task in zip(axes, tasks, strict=False):
        first = next(iter(curves.values()))[task]
        end = first["end"]
        stop = first["next_end"] if first["next_end"] is not None else first["steps"][-1]
        start = end - (stop - end) // 4 if end is not None else first["steps"][0]
        for k, (label, by_task) in enumerate(curves.items()):
            c = by_task[task]
            pts = [(s, m, d) for s, m, d in zip(c["steps"], c["mean"], c["std"], strict=True) if start <= s <= stop]
            xs, means, stds = (list(v) for v in zip(*pts, strict=True))
            color = f"C{k % 10}"
            ax.plot(xs, means, color=color, lw=1.0, label=f"{label} (n={c['n']})")
            low = [m - d for m, d in zip(means, stds, strict=True)]
            high = [m + d for m, d in zip(means, stds, strict=True)]
            ax.fill_between(xs, low, high, color=color, alpha=0.12, lw=0)
        if end is not None:
            ax.axvline(end, color="grey", lw=0.8, ls=":")
        after = f": task {task + 1} starts after step {end}" if end is not None else ""
        ax.set_title(f"task {task}{after}", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy (%), mean ± std")
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    axes[n_cols - 1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_and_log(trainer: pl.Trainer, fig: Figure, directory: str, name: str) -> str:
    """Saves ``fig`` as ``<directory>/<name>.png`` and sends it to every logger that takes images."""
    path = os.path.join(directory, f"{name}.png")
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=120)
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(logger, "log_image"):  # W&B
            logger.log_image(key=f"plots/{name}", images=[path], step=trainer.global_step)
        elif hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure(f"plots/{name}", fig, global_step=trainer.global_step)
    return path

"""Task-end evaluation: the accuracy matrix, measured through the module's own prediction method.

``evaluate`` is the one evaluation routine: it runs ``module.class_scores`` over tasks' splits in eval mode without
gradients, each rank on its exact shard, and sums correct/total counts across ranks in a ``torchmetrics.Metric``, so
under DDP the result equals the single-process value. ``AccuracyMatrix`` calls it before training and at each task end.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import pytorch_lightning as pl
import torch
import yaml
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from clfw.callbacks import ContinualCallback
from clfw.data import Batch
from clfw.metrics import summarize
from clfw.runs import claim_run_dir, run_dir

if TYPE_CHECKING:
    from clfw.datamodule import ContinualDataModule
    from clfw.module import ContinualModule


class TaskAccuracy(Metric):
    """Correct and total counts per task and per class, summed across processes.

    ``update`` takes the scores (any ``[B, C]`` tensor whose argmax is the prediction, ``-inf`` allowed for masked
    classes) or the predicted labels. Samples whose scores hold a NaN are counted, and :meth:`compute` raises
    :class:`~clfw.numerics.NonFiniteError` if there were any (on every rank, as the count is summed across ranks): an
    accuracy of a model that outputs NaN is never reported.

    Args:
        n_tasks: Number of tasks.
        num_classes: Number of classes.
    """

    full_state_update = False

    def __init__(self, n_tasks: int, num_classes: int) -> None:
        super().__init__()
        for name, size in (("task_correct", n_tasks), ("task_total", n_tasks)):
            self.add_state(name, torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("class_correct", "class_total"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("nan_scores", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, task: Tensor) -> None:
        if preds.ndim == 2:  # scores
            self.nan_scores += torch.isnan(preds).any(1).sum()
            preds = preds.argmax(1)
        hit = (preds == target).long()
        self.task_correct.scatter_add_(0, task, hit)
        self.task_total.scatter_add_(0, task, torch.ones_like(hit))
        self.class_correct.scatter_add_(0, target, hit)
        self.class_total.scatter_add_(0, target, torch.ones_like(hit))

    def compute(self) -> tuple[Tensor, Tensor]:
        """Accuracy per task and per class (``nan`` where there were no samples).

        ``Metric.compute`` squeezes a one-element result to a 0-d tensor (one task, or one class): callers reshape it.
        """
        if self.nan_scores > 0:
            from clfw.numerics import NonFiniteError

            raise NonFiniteError(
                f"the model gave NaN scores for {int(self.nan_scores)} evaluation samples: no accuracy is reported"
            )
        return (
            self.task_correct.double() / self.task_total.double(),
            self.class_correct.double() / self.class_total.double(),
        )


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Puts ``module`` in eval mode and afterwards restores every submodule's own flag (a frozen backbone kept in eval
    mode during training stays so)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@torch.no_grad()
def evaluate(
    module: ContinualModule, datamodule: ContinualDataModule, tasks: Sequence[int], split: str = "test"
) -> tuple[list[float], list[float]]:
    """Accuracy of ``module.class_scores`` on each task in ``tasks`` (and per class), in eval mode, without gradients.

    Returns per-task accuracies for ``tasks`` in order, and per-class accuracies over all classes (``nan`` for classes
    not evaluated). Every module's train/eval flag is restored afterwards.
    """
    stream = datamodule.stream
    metric = TaskAccuracy(stream.n_tasks, stream.num_classes).to(module.device)
    with eval_mode(module):
        for t in tasks:
            for batch in datamodule.task_loader(t, split):  # type: ignore[arg-type]
                batch = Batch(*(v.to(module.device, non_blocking=True) for v in batch))
                metric.update(module.class_scores(batch.x, batch.task), batch.y, batch.task)
    task_acc, class_acc = (a.reshape(-1) for a in metric.compute())  # torchmetrics squeezes one-element results
    return [float(task_acc[t]) for t in tasks], class_acc.tolist()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


@functools.cache
def _process_metadata() -> tuple[dict[str, str | None], str | None]:
    """Package versions and git commit: fixed for the process, so looked up once (not at every metrics write)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for pkg in ("clfw", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "timm", "jsonargparse"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        commit: str | None = git.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return versions, commit


def run_metadata(trainer: pl.Trainer, directory: str) -> dict[str, Any]:
    """Seed, package versions, git commit (when run inside a git checkout) and the resolved CLI config if saved in
    ``directory`` (the run directory; pass it in, since resolving it is a collective under DDP)."""
    versions, commit = _process_metadata()
    config_path = os.path.join(directory, "config.yaml")
    config = None
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = yaml.safe_load(f)
    seed = os.environ.get("PL_GLOBAL_SEED")
    return {
        "seed": int(seed) if seed is not None else None,
        "versions": dict(versions),
        "git_commit": commit,
        "world_size": trainer.world_size,
        "config": config,
    }


def write_metrics(trainer: pl.Trainer, filename: str = "metrics.json") -> str | None:
    """Writes ``metrics.json`` into the run directory: the ``report()`` of every callback that has one, merged, plus
    ``"run"`` metadata (:func:`run_metadata`). Atomic (written to a temporary file, then renamed), global rank 0 only.

    Call it on every rank: resolving the log directory is a collective under DDP.
    """
    directory = run_dir(trainer)
    if not trainer.is_global_zero:
        return None
    path = os.path.join(directory, filename)
    content: dict[str, Any] = {}
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if callable(getattr(cb, "report", None)):
            content.update(cb.report(trainer))
    content["run"] = run_metadata(trainer, directory)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_json_safe(content), f, indent=1)
    os.replace(tmp, path)
    return path


def format_matrix(R: Sequence[Sequence[float]], initial: Sequence[float] | None = None) -> str:
    """The accuracy matrix as a text table, in percent.

    >>> print(format_matrix([[0.9, 0.1], [0.5, 0.8]]))
    after task |  task 0  task 1
    ---------- | ---------------
             0 |    90.0    10.0
             1 |    50.0    80.0
    """
    T = len(R[0]) if R else len(initial or [])
    head = "after task | " + " ".join(f"task {j:>2}" if j > 9 else f"task {j}".rjust(7) for j in range(T))
    lines = [head, "-" * 10 + " | " + "-" * (len(head) - 13)]
    rows = ([("init", initial)] if initial is not None else []) + [(str(i), r) for i, r in enumerate(R)]
    for name, row in rows:
        lines.append(f"{name:>10} | " + " ".join(f"{100 * a:7.1f}" for a in row))
    return "\n".join(lines)


class AccuracyMatrix(ContinualCallback):
    """Measures ``R[i][j]``, the accuracy on task ``j`` after task ``i``, and writes ``metrics.json``.

    Before training it measures the initial accuracies ``b[j]``; after each task's end hooks, one row over all tasks
    (future tasks too, which forward transfer needs). With a validation split it measures the same matrix on it and
    logs ``val/acc`` for sweeps. Rows are logged to every logger (``task_end/acc``, ``task_end/task_<j>/acc``),
    ``metrics.json`` is rewritten in the run directory after each task (a crash loses nothing measured), and a table is
    printed at the end. Its state rides in checkpoints.

    ``task_end/acc`` after task ``i`` is the mean of ``R[i][j]`` over the tasks seen so far, ``j <= i``.

    Args:
        filename: Name of the metrics file in the run directory.
        tasks: Evaluate ``"all"`` tasks at each task end, or only the ``"seen"`` ones (rows then hold ``nan`` ahead).
        plot: Save ``accuracy_matrix.png`` (annotated heatmap) in the run directory at the end, and hand it to loggers
            that take images.
    """

    def __init__(
        self, filename: str = "metrics.json", tasks: Literal["all", "seen"] = "all", plot: bool = True
    ) -> None:
        if tasks not in ("all", "seen"):
            raise ValueError(f"tasks must be 'all' or 'seen', got {tasks!r}")
        self.filename, self.tasks, self.plot = filename, tasks, plot
        self.initial: list[float] | None = None
        self.rows: list[list[float]] = []
        self.val_rows: list[list[float]] = []
        self.class_rows: list[list[float]] = []

    def _row(
        self, trainer: pl.Trainer, module: ContinualModule, task: int, split: str
    ) -> tuple[list[float], list[float]]:
        dm: ContinualDataModule = trainer.datamodule  # type: ignore[assignment]
        n = dm.stream.n_tasks
        chosen = list(range(n)) if self.tasks == "all" else list(range(task + 1))
        acc, per_class = evaluate(module, dm, chosen, split)
        return acc + [math.nan] * (n - len(acc)), per_class

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        claim_run_dir(trainer, self.filename)  # after a checkpoint is restored: trainer.ckpt_path is known

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.initial is None:
            self.initial, _ = self._row(trainer, pl_module, pl_module.stream.n_tasks - 1, "test")  # type: ignore[arg-type]

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        row, per_class = self._row(trainer, module, task, "test")
        del self.rows[task:], self.class_rows[task:], self.val_rows[task:]
        self.rows.append(row)
        self.class_rows.append(per_class)
        metrics = {"task_end/acc": sum(row[: task + 1]) / (task + 1), "task_end/task": float(task)}
        metrics.update({f"task_end/task_{j}/acc": a for j, a in enumerate(row[: task + 1])})
        if trainer.datamodule.stream.tasks[0].val is not None:  # type: ignore[union-attr]
            val_row, _ = self._row(trainer, module, task, "val")
            self.val_rows.append(val_row)
            metrics["val/acc"] = sum(val_row[: task + 1]) / (task + 1)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.write(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)
        directory = run_dir(trainer)
        if trainer.is_global_zero and self.rows and self.plot:
            from clfw.plots import accuracy_matrix_figure, save_and_log

            save_and_log(trainer, accuracy_matrix_figure(self.rows, self.initial), directory, "accuracy_matrix")
        if trainer.is_global_zero and self.rows:
            print(
                "\nAccuracy matrix R[i][j] (%), rows: after task i; 'init': before training. Forgetting: how far each "
                "column's last row is below its best."
            )
            print(format_matrix(self.rows, self.initial))
            print("Summary:", json.dumps(self.summary(trainer)))

    def summary(self, trainer: pl.Trainer) -> dict[str, float | None]:
        """ACC, forgetting, BWT and FWT of the rows measured so far."""
        k = len(self.rows)
        if k == 0:
            return {}
        R = [row[:k] for row in self.rows]
        return summarize(R, self.initial, trainer.datamodule.stream.scenario)  # type: ignore[union-attr]

    def report(self, trainer: pl.Trainer) -> dict[str, Any]:
        """This callback's section of ``metrics.json``."""
        stream = trainer.datamodule.stream  # type: ignore[union-attr]
        return {
            "scenario": stream.scenario,
            "n_tasks": stream.n_tasks,
            "num_classes": stream.num_classes,
            "task_classes": [list(t.classes) for t in stream.tasks],
            "class_order": getattr(trainer.datamodule, "class_order", None),
            "tasks_completed": len(self.rows),
            "initial_accuracy": self.initial,
            "accuracy_matrix": self.rows,
            "val_accuracy_matrix": self.val_rows or None,
            "per_class_accuracy": self.class_rows,
            "summary": self.summary(trainer),
        }

    def write(self, trainer: pl.Trainer) -> str | None:
        """Writes ``metrics.json`` (see :func:`write_metrics`); call it on every rank."""
        return write_metrics(trainer, self.filename)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial, "rows": self.rows, "val_rows": self.val_rows, "class_rows": self.class_rows}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial = state_dict["initial"]
        self.rows = state_dict["rows"]
        self.val_rows = state_dict["val_rows"]
        self.class_rows = state_dict["class_rows"]

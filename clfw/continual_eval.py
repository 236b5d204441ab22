"""``ContinualEvaluation``: evaluation every few optimizer steps, for the stability gap (De Lange et al., ICLR 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw.callbacks import ContinualCallback
from clfw.evaluation import TaskAccuracy, eval_mode, write_metrics
from clfw.loaders import shard
from clfw.runs import claim_run_dir, run_dir
from clfw.stability import StabilityTracker

if TYPE_CHECKING:
    from clfw.module import ContinualModule


class ContinualEvaluation(ContinualCallback):
    """Evaluates the model every ``every_n_steps`` optimizer steps on a fixed subsample of each task's test set.

    The subsample is drawn once per task with its own generator (``seed``), so evaluation never touches the training
    random streams: the weights are bit-identical with and without this callback. It is kept as ready tensors
    (transformed, on the model's device), split exactly across ranks; one batched forward through
    ``module.class_scores`` covers all evaluated tasks, accuracies are computed per task by index, and correct/total
    counts are summed across ranks (``TaskAccuracy``, a ``torchmetrics.Metric``). The model is in eval mode without
    gradients and every module's train flag is restored afterwards.

    The last step of a task is evaluated after the task-end hooks (with the accuracy matrix), so the curves show what
    the strategy predicts at each point. Metrics (:class:`~clfw.stability.StabilityTracker`) are logged to every logger
    at each evaluation with the global step (``cl/acc``, ``cl/min_acc``, ``cl/wc_acc``, ``cl/forgetting``, ``cl/bwt``,
    ``cl/wf_<w>``, ``cl/wp_<w>``, ``cl/task_<i>/acc``), bypassing ``log_every_n_steps``; curves, final values and the
    stability gap of each task go to ``metrics.json`` under ``"continual"``. Its state rides in checkpoints.

    Args:
        every_n_steps: Evaluate every this many optimizer steps (the paper's rho; 1 = every step).
        samples_per_task: Test samples per task (``min(samples_per_task, test size)``).
        tasks: Evaluate the tasks ``"seen"`` so far (including the current one) or ``"all"`` tasks.
        windows: Window sizes, in evaluation steps, of windowed forgetting and plasticity.
        tolerance: Accuracy within which a task counts as recovered after the stability gap (0.01 = 1 point).
        seed: Seed of the subsample.
        split: Evaluate on each task's ``"test"`` split or on its ``"val"`` split (``data.val_fraction > 0``), to choose
            hyperparameters by the stability gap without looking at test data. Recorded in ``metrics.json``.
        batch_size: Samples per forward pass (``None``: all evaluated samples at once).
        plot: Save ``stability_gap.png`` (per-task curves, task boundaries, minima) in the run directory at the end, and
            hand it to loggers that take images.
    """

    def __init__(
        self,
        every_n_steps: int = 1,
        samples_per_task: int = 1000,
        tasks: Literal["seen", "all"] = "seen",
        windows: list[int] | None = None,
        tolerance: float = 0.01,
        seed: int = 0,
        split: Literal["test", "val"] = "test",
        batch_size: int | None = None,
        plot: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if samples_per_task < 1:
            raise ValueError(f"samples_per_task must be >= 1, got {samples_per_task}")
        if tasks not in ("seen", "all"):
            raise ValueError(f"tasks must be 'seen' or 'all', got {tasks!r}")
        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', got {split!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.every_n_steps, self.samples_per_task, self.tasks = every_n_steps, samples_per_task, tasks
        self.seed, self.split, self.batch_size, self.plot = seed, split, batch_size, plot
        self.tracker = StabilityTracker(windows if windows is not None else (10, 100), tolerance)
        self.last: dict[str, float | None] = {}
        self._last_step = -1
        self._data: tuple[Tensor, Tensor, Tensor] | None = None
        self._offsets: list[int] = []
        self._metric: TaskAccuracy | None = None

    # ------------------------------------------------------------------------------------------ the subsample
    def subsample_positions(self, test_sizes: list[int]) -> list[Tensor]:
        """Positions of the evaluated samples in each task's test set (sorted; the same on every rank)."""
        g = torch.Generator().manual_seed(self.seed)
        return [torch.randperm(n, generator=g)[: min(self.samples_per_task, n)].sort().values for n in test_sizes]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        stream, transform = dm.stream, dm.eval_transform()  # type: ignore[union-attr]
        splits = [getattr(task, self.split) for task in stream.tasks]
        if any(data is None for data in splits):
            raise ValueError(
                f"ContinualEvaluation(split={self.split!r}): the stream has no {self.split} split; "
                "set data.val_fraction > 0 (e.g. 0.1) to hold one out of the training data"
            )
        xs, ys, ts, self._offsets = [], [], [], [0]
        for data, pick in zip(splits, self.subsample_positions([len(d) for d in splits]), strict=True):
            batch = data.batch(shard(pick, trainer.global_rank, trainer.world_size, pad=False), transform)
            xs.append(batch.x)
            ys.append(batch.y)
            ts.append(batch.task)
            self._offsets.append(self._offsets[-1] + len(batch.y))
        self._data = (torch.cat(xs), torch.cat(ys), torch.cat(ts))
        self._metric = TaskAccuracy(stream.n_tasks, stream.num_classes)

    @torch.no_grad()
    def evaluate(self, module: ContinualModule, current_task: int) -> list[float | None]:
        """Accuracy on each task (``None`` for tasks not evaluated), summed over ranks."""
        if self._data is None or self._metric is None:
            raise RuntimeError("ContinualEvaluation.evaluate needs the subsample: it is built in setup('fit')")
        if self._data[0].device != module.device:
            self._data = tuple(t.to(module.device) for t in self._data)  # type: ignore[assignment]
            self._metric = self._metric.to(module.device)
        n_eval = module.stream.n_tasks if self.tasks == "all" else min(current_task, module.stream.n_tasks - 1) + 1
        end = self._offsets[n_eval]
        x, y, t = (d[:end] for d in self._data)
        size = self.batch_size or max(end, 1)
        with eval_mode(module):
            for i in range(0, end, size):
                self._metric.update(
                    module.class_scores(x[i : i + size], t[i : i + size]), y[i : i + size], t[i : i + size]
                )
        acc, _ = self._metric.compute()
        self._metric.reset()
        acc = acc.reshape(-1)  # torchmetrics squeezes a one-element result (a one-task stream) to a 0-d tensor
        return [float(a) if i < n_eval else None for i, a in enumerate(acc.tolist())]

    # ------------------------------------------------------------------------------------------------ hooks
    def _record(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        step = trainer.global_step
        if callable(getattr(module, "check_finite", None)):  # never log the accuracy of a broken model
            module.check_finite(f"the continual evaluation of step {step}")
        accs = self.evaluate(module, task)
        self.last = self.tracker.update(step, task, accs)
        self._last_step = step
        if trainer.is_global_zero and trainer.loggers:
            logged = {f"cl/{k}": v for k, v in self.last.items() if v is not None}
            logged.update({f"cl/task_{i}/acc": a for i, a in enumerate(accs) if a is not None})
            logged["cl/task"] = float(task)
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=step)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        claim_run_dir(trainer)  # after a checkpoint is restored: trainer.ckpt_path is known

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.tracker.steps:  # the point before any training
            self._record(trainer, pl_module, 0)  # type: ignore[arg-type]

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return  # no optimizer step (gradient accumulation), or not an evaluation step
        dm = trainer.datamodule
        if trainer.is_last_batch and dm.is_last_epoch_of_task(trainer.current_epoch):  # type: ignore[union-attr]
            return  # evaluated after the task-end hooks instead
        self._record(trainer, pl_module, pl_module.stream_task)  # type: ignore[arg-type]

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self._record(trainer, module, task)
        self.tracker.end_task(task)
        write_metrics(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_metrics(trainer)
        directory = run_dir(trainer)
        if trainer.is_global_zero and self.plot and self.tracker.steps:
            from clfw.plots import save_and_log, stability_gap_figure

            tr = self.tracker
            save_and_log(
                trainer, stability_gap_figure(tr.steps, tr.current, tr.acc, tr.ends), directory, "stability_gap"
            )
        if trainer.is_global_zero and self.last:
            shown = {k: round(v, 4) for k, v in self.last.items() if v is not None}
            print("Continual evaluation (last step):", shown)
            gaps = self.tracker.stability_gaps()
            if gaps:
                print(
                    "Stability gap: an old task's accuracy dips when the next task starts, and may then recover; what "
                    "is still lost at the last step is forgetting."
                )
            for gap in gaps:
                print(self.gap_line(gap))

    def gap_line(self, gap: dict[str, Any]) -> str:
        """One task's stability gap in words: its accuracy at its end, its minimum while the next task trained, its
        accuracy when the next task ended and at the last step, and whether it came back within ``tolerance``.

        Args:
            gap: One entry of :meth:`~clfw.stability.StabilityTracker.stability_gaps`.
        """
        tr, task, rec = self.tracker, gap["task"], gap["recovery_steps"]
        nxt = task + 1
        parts = [f"{100 * gap['before']:.1f}% at its end", f"min {100 * gap['min']:.1f}% at step {gap['min_step']}"]
        next_end = tr.ends.get(nxt)
        if next_end is not None and tr.acc[next_end][task] is not None:
            parts.append(f"{100 * tr.acc[next_end][task]:.1f}% when task {nxt} ended")
        last = tr.acc[-1][task]
        if last is not None and next_end != len(tr.acc) - 1:
            parts.append(f"{100 * last:.1f}% at the last step")
        points = f"{100 * tr.tolerance:g}"
        points += " point" if points == "1" else " points"
        if rec is None:
            back = f"not back within {points} during task {nxt}"
        elif rec == 0:
            back = f"never more than {points} below"
        else:
            back = f"back within {points} after {rec} steps of task {nxt}"
        return f"  task {task}: " + " -> ".join(parts) + f" ({back})"

    def report(self, trainer: pl.Trainer) -> dict[str, Any]:
        """This callback's section of ``metrics.json``."""
        tr = self.tracker
        return {
            "continual": {
                "every_n_steps": self.every_n_steps,
                "samples_per_task": self.samples_per_task,
                "tasks": self.tasks,
                "split": self.split,
                "windows": list(tr.windows),
                "tolerance": tr.tolerance,
                "steps": tr.steps,
                "current_task": tr.current,
                "accuracy": tr.acc,
                "task_end_index": {str(k): v for k, v in tr.ends.items()},
                "last": self.last,
                "stability_gaps": tr.stability_gaps(),
            }
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "last_step": self._last_step, "last": self.last}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict["tracker"])
        self._last_step = state_dict["last_step"]
        self.last = state_dict["last"]

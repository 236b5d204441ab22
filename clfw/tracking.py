"""Weights & Biases runs that hold what a researcher needs: the config, the summary, the accuracy matrix, the files.

Lightning's ``WandbLogger`` already receives every logged series (``cl/*``, ``task_end/*``, ``val/acc``) and the plots
(``plots/accuracy_matrix``, ``plots/stability_gap``). This module adds the rest; the ``clfw`` CLI uses it whenever a
``WandbLogger`` is among the trainer's loggers:

- **config**: the resolved CLI config, nested as the CLI names its keys (``model.init_args.buffer_size``), becomes the
  W&B run config (:func:`log_config`, called from the CLI's ``SaveConfigCallback.save_config``);
- **name and group**: unless given (``trainer.logger.init_args.name`` / ``group``, or ``WANDB_NAME`` /
  ``WANDB_RUN_GROUP``), the run is named ``<strategy>-<stream>-s<seed>`` (``ER-SplitMNIST-s0``) and grouped as
  ``<strategy>-<stream>-<hash>``, where the hash covers the run's identifying config except ``seed_everything``, so
  the seeds of one configuration share a group (:func:`default_name_and_group`, :func:`set_run_defaults`);
- **summary, table, artifact**: :class:`WandbTracking` reads the final ``metrics.json`` and sets the run summary
  (:data:`SUMMARY_METRICS`), logs the accuracy matrix as a ``wandb.Table`` (``tables/accuracy_matrix``) and logs
  ``metrics.json`` and ``config.yaml`` (and, optionally, the last checkpoint) as an artifact of type ``results``.

Only global rank 0 talks to W&B. A resumed run (:mod:`clfw.resume`) resumes the W&B run by its id; its config, name
and group are the same, and its summary, table and artifact (a new version) are written at its end. ``wandb`` is
imported only when a W&B run exists, so clfw runs without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from typing_extensions import override

from clfw.evaluation import AccuracyMatrix
from clfw.runs import run_dir

#: Run summary key -> where its value is in ``metrics.json``. Undefined values (``null``, e.g. FWT in class-IL,
#: forgetting on a one-task stream, min-ACC without ``ContinualEvaluation``) are left out of the summary.
SUMMARY_METRICS: dict[str, tuple[str, ...]] = {
    "final/acc": ("summary", "average_accuracy"),
    "final/forgetting": ("summary", "forgetting"),
    "final/bwt": ("summary", "backward_transfer"),
    "final/fwt": ("summary", "forward_transfer"),
    "final/avalanche_forgetting": ("summary", "avalanche_forgetting"),
    "final/min_acc": ("continual", "last", "min_acc"),
    "final/wc_acc": ("continual", "last", "wc_acc"),
}

TABLE_KEY = "tables/accuracy_matrix"
"""History key of the accuracy matrix ``wandb.Table``: column ``after_task``, then ``task_0`` ... ``task_<T-1>``."""


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    """The trainer's ``WandbLogger`` instances."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def summary_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The run summary values (:data:`SUMMARY_METRICS`) found in the content of a ``metrics.json``.

    >>> summary_values({"summary": {"average_accuracy": 0.5, "forward_transfer": None}, "continual": {"last": {}}})
    {'final/acc': 0.5}
    """
    out: dict[str, float] = {}
    for key, path in SUMMARY_METRICS.items():
        value: Any = metrics
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def accuracy_table(rows: list[list[float | None]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the accuracy-matrix table: ``after_task``, then the accuracy on each task (``None`` where
    a task was not evaluated).

    >>> accuracy_table([[0.9, None], [0.5, 0.8]])
    (['after_task', 'task_0', 'task_1'], [[0, 0.9, None], [1, 0.5, 0.8]])
    """
    n = max((len(r) for r in rows), default=0)
    return ["after_task", *(f"task_{j}" for j in range(n))], [[i, *row] for i, row in enumerate(rows)]


def strategy_label(module: pl.LightningModule) -> str:
    """The strategy's class name, with its plugins': ``ER``, ``Naive+EWC``."""
    plugins = getattr(module, "plugins", None) or []
    return "+".join([type(module).__name__, *(type(p).__name__ for p in plugins)])


def default_name_and_group(
    module: pl.LightningModule, datamodule: pl.LightningDataModule, seed: int | None, config: Mapping[str, Any]
) -> tuple[str, str]:
    """The default W&B run name ``<strategy>-<stream>-s<seed>`` and group ``<strategy>-<stream>-<hash>``.

    Args:
        module: The strategy.
        datamodule: The stream.
        seed: ``seed_everything`` (``None``: no seed in the name).
        config: The run's identifying config (flat or nested); ``seed_everything`` is left out of the hash, so the
            seeds of one configuration share a group and any other difference gives another group.
    """
    base = f"{strategy_label(module)}-{type(datamodule).__name__}"
    kept = {k: v for k, v in config.items() if k != "seed_everything"}
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return (base if seed is None else f"{base}-s{seed}"), f"{base}-{digest}"


def set_run_defaults(trainer: pl.Trainer, name: str, group: str) -> None:
    """Gives each W&B logger of ``trainer`` whose run has not started ``name`` and ``group``, unless the user gave
    them (logger arguments, or the ``WANDB_NAME`` / ``WANDB_RUN_GROUP`` environment variables). Call it before
    ``trainer.fit``: W&B fixes the group when the run starts.

    It also makes W&B's directory (``save_dir``) absolute: wandb's service process, which a process's successive runs
    share, resolves a relative one against its own working directory, not the caller's.
    """
    for logger in wandb_loggers(trainer):
        if logger._experiment is not None:  # the run has started: its name and group are fixed
            continue
        init = logger._wandb_init  # WandbLogger passes these to wandb.init; it has no public setter
        if init.get("dir"):
            init["dir"] = os.path.abspath(init["dir"])
        if not init.get("name") and not os.environ.get("WANDB_NAME"):
            init["name"] = logger._name = name
        if not init.get("group") and not os.environ.get("WANDB_RUN_GROUP"):
            init["group"] = group


def log_config(trainer: pl.Trainer, config: Mapping[str, Any]) -> None:
    """Makes the nested ``config`` the config of every W&B run of ``trainer`` (global rank 0; Lightning's
    ``log_hyperparams``, which updates ``run.config`` and allows changed values on resume)."""
    if trainer.is_global_zero:
        for logger in wandb_loggers(trainer):
            logger.log_hyperparams(dict(config))


def finish_runs(trainer: pl.Trainer, exit_code: int = 0) -> None:
    """Finishes the W&B runs of ``trainer`` (global rank 0), so that the next fit in this process starts its own run
    instead of reusing this one (``wandb.run``).

    Args:
        trainer: The trainer.
        exit_code: The runs' exit code: 0 marks them finished, anything else failed.
    """
    if trainer.is_global_zero:
        for logger in wandb_loggers(trainer):
            if logger._experiment is not None:
                logger._experiment.finish(exit_code=exit_code)


class WandbTracking(pl.Callback):
    """At the end of a fit, puts the run's results into each W&B run (``WandbLogger``) of the trainer: the summary
    values of ``metrics.json`` (:data:`SUMMARY_METRICS`), the accuracy matrix as a ``wandb.Table``
    (:data:`TABLE_KEY`), and ``metrics.json`` with ``config.yaml`` (and the last checkpoint) as an artifact
    ``results-<run id>`` of type ``results``. A fit that fails finishes its W&B runs as failed (exit code 1), so a next
    fit in the same process does not reuse them. Without a ``WandbLogger`` it does nothing. The ``clfw`` CLI adds it
    whenever a ``WandbLogger`` is used; add it yourself to set its arguments (``--trainer.callbacks+=clfw.WandbTracking
    --trainer.callbacks.log_checkpoint=true``) or with the Python API, where the run's config, name and group are
    given to ``WandbLogger`` (or set by :func:`log_config` and :func:`set_run_defaults`). Global rank 0 only.

    Args:
        log_checkpoint: Add the last checkpoint (``ModelCheckpoint(save_last=True)``) to the artifact as
            ``last.ckpt``.
        table: Log the accuracy matrix as a ``wandb.Table``.
        artifact: Log the artifact.
    """

    resume_neutral = True

    def __init__(self, log_checkpoint: bool = False, table: bool = True, artifact: bool = True) -> None:
        self.log_checkpoint, self.table, self.artifact = log_checkpoint, table, artifact

    @staticmethod
    def _last_checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
        found = (cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last)
        return next(found, None)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.log_checkpoint and self.artifact and self._last_checkpoint_callback(trainer) is None:
            raise ValueError(
                "log_checkpoint=True, but no ModelCheckpoint has save_last=True: add one "
                "(configs/trainer/cpu.yaml has it) or set log_checkpoint=False"
            )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        if not trainer.is_global_zero or not loggers:
            return
        directory = run_dir(trainer)
        matrices = [cb for cb in trainer.callbacks if isinstance(cb, AccuracyMatrix)]  # type: ignore[attr-defined]
        filename = matrices[0].filename if matrices else "metrics.json"
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            return  # nothing was measured (no AccuracyMatrix)
        with open(path) as f:
            metrics = json.load(f)
        files = {filename: path}
        config = os.path.join(directory, "config.yaml")
        if os.path.isfile(config):
            files["config.yaml"] = config
        checkpoint = self._last_checkpoint_callback(trainer) if self.log_checkpoint else None
        if checkpoint is not None and os.path.isfile(checkpoint.last_model_path):
            files["last.ckpt"] = checkpoint.last_model_path
        for logger in loggers:
            self._log(logger, metrics, files, trainer.global_step)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        finish_runs(trainer, exit_code=1)  # failed; a next fit in this process must not reuse the run

    def _log(self, logger: WandbLogger, metrics: dict[str, Any], files: dict[str, str], step: int) -> None:
        import wandb

        run = logger.experiment
        values = summary_values(metrics)
        run.summary.update(values)
        if self.table and metrics.get("accuracy_matrix"):
            columns, data = accuracy_table(metrics["accuracy_matrix"])
            logger.log_table(key=TABLE_KEY, columns=columns, data=data, step=step)
        if self.artifact:
            artifact = wandb.Artifact(name=f"results-{run.id}", type="results", metadata=values)
            for name, path in files.items():
                artifact.add_file(path, name=name)
            run.log_artifact(artifact)

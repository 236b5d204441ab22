"""Run directories and their history: one run per directory, and a resumed run keeps its logged history exactly.

- :func:`run_dir` is where a run writes ``metrics.json``, plots and its config: the logger's own versioned directory
  (``save_dir/name/version``, W&B's run id included), else ``default_root_dir``.
- :func:`claim_run_dir` refuses a new run in a directory that holds another run's ``metrics.json``; only a resume may
  write there.
- :func:`csv_history` / :func:`restore_csv_history`: Lightning's CSV logger deletes ``metrics.csv`` when a run starts
  in an existing directory and buffers rows in memory. Every clfw checkpoint flushes the loggers and stores the CSV
  as it was at that step; a resume writes it back, so the history continues without gaps or duplicate steps.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn


class RunDirectoryError(ValueError):
    """A new run would write into another run's directory."""


def run_dir(trainer: pl.Trainer) -> str:
    """The run directory: the first logger's own directory, else ``default_root_dir``.

    CSV and TensorBoard loggers have a versioned ``log_dir``; for other loggers (W&B, MLflow ...), whose ``save_dir`` is
    shared by all runs, it is ``save_dir/name/version`` (for W&B: ``save_dir/project/run id``), which is also where
    Lightning's ``ModelCheckpoint`` puts their checkpoints.
    """
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    if isinstance(logger, CSVLogger | TensorBoardLogger):
        return logger.log_dir
    save_dir = logger.save_dir or trainer.default_root_dir
    name, version = logger.name, logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return os.path.join(save_dir, str(name), version) if name else os.path.join(save_dir, version)


def claim_run_dir(trainer: pl.Trainer, filename: str = "metrics.json") -> str:
    """``run_dir(trainer)``, after checking that a new run (no ``ckpt_path``) does not write into a directory that
    already holds a run's ``filename``. Call it on every rank (rank 0 decides, by a broadcast)."""
    directory = run_dir(trainer)
    path = os.path.join(directory, filename)
    taken = trainer.strategy.broadcast(trainer.is_global_zero and os.path.exists(path))  # rank 0 decides for all
    if trainer.ckpt_path is None and taken:
        raise RunDirectoryError(
            f"{directory} already holds another run's {filename}: give this run its own directory (a logger "
            "version, or another default_root_dir with --trainer.logger false) or resume that run (clfw fit --resume)"
        )
    return directory


def _csv_loggers(trainer: pl.Trainer) -> list[CSVLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]


def csv_history(trainer: pl.Trainer) -> dict[str, bytes]:
    """Flushes every logger and returns each CSV log as it is now (zlib-compressed), keyed by its path; global rank 0
    only (other ranks log nothing)."""
    if not trainer.is_global_zero:
        return {}
    for logger in trainer.loggers:
        logger.save()
    pending = pending_train_row(trainer)
    out = {}
    for logger in _csv_loggers(trainer):
        path = logger.experiment.metrics_file_path
        if not os.path.isfile(path):
            continue
        if pending is None:
            with open(path, "rb") as f:
                data = f.read()
        else:
            rows = read_csv_rows(path)
            rows.append({k: str(v) for k, v in pending.items()})
            keys = sorted(set().union(*rows))
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
            data = buffer.getvalue().encode()
        out[path] = zlib.compress(data)
    return out


def pending_train_row(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The row of step metrics that Lightning will log right after the ``on_train_batch_end`` hooks of this step (a
    checkpoint written in those hooks comes before it, and a run resumed from that checkpoint never logs it), or
    ``None``. It mirrors ``_LoggerConnector.update_train_step_metrics``: same condition, values, ``epoch`` and step."""
    try:
        return _pending_train_row(trainer)
    except AttributeError as err:  # Lightning's internals moved: the row is logged after the checkpoint as before
        rank_zero_warn(
            f"clfw could not predict the step row Lightning logs after this checkpoint ({err}); a run "
            "resumed from it will miss that row of metrics.csv"
        )
        return None


def _pending_train_row(trainer: pl.Trainer) -> dict[str, Any] | None:
    connector = trainer._logger_connector
    loop = trainer.fit_loop
    if not trainer.training or trainer._results is None or connector._first_loop_iter is None:
        return None
    if loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
        return None
    if not (connector.should_update_logs or trainer.fast_dev_run):
        return None
    metrics = {k: float(v) for k, v in connector.metrics["log"].items()}
    if not metrics:
        return None
    step = metrics.pop("step", None)
    if step is None:
        metrics.setdefault("epoch", trainer.current_epoch)
        step = loop.epoch_loop._batches_that_stepped
    return {**metrics, "step": int(step)}


def restore_csv_history(trainer: pl.Trainer, history: dict[str, bytes]) -> None:
    """Writes each CSV log back as the checkpoint saw it (rows logged after the checkpoint are dropped) and tells the
    logger its columns, so the resumed run appends to it."""
    if not trainer.is_global_zero:
        return
    for logger in _csv_loggers(trainer):
        writer = logger.experiment
        data = history.get(writer.metrics_file_path)
        if data is None:
            continue
        text = zlib.decompress(data)
        os.makedirs(os.path.dirname(writer.metrics_file_path), exist_ok=True)
        with open(writer.metrics_file_path, "wb") as f:
            f.write(text)
        header = next(csv.reader(io.StringIO(text.decode())), [])
        writer.metrics_keys = sorted(header)
        writer.metrics = []


def read_csv_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a CSV log."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

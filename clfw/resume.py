"""The CLI's resume policy: a resumed run is the same run, or it does not start.

``clfw fit ... --resume auto|require|never``:

- ``never`` (the default without ``--ckpt_path``): a new run, in a new directory;
- ``require``: resume this run's own newest checkpoint, and fail when there is none (``--ckpt_path last`` means this);
- ``auto``: resume it if there is one, else start (what a requeued cluster job needs).

"This run's own" checkpoint is the newer of ``last.ckpt`` and a preemption checkpoint ``hpc_ckpt_N.ckpt``
(:mod:`clfw.preemption`) in the ``ModelCheckpoint``'s ``dirpath`` when one is given, else in the run directory's
``checkpoints/``: the logger's version when it is set (a W&B id, a CSV version), else the newest
version under the logger's root that has one. The resumed run adopts the checkpoint's logger version, so it writes
into the same directory (the CSV log continues, a W&B run resumes by its id).

Before any training, the checkpoint is read (a corrupt file fails with one line) and the resolved config is compared
with the one stored in it (:class:`RunConfig`), minus :data:`MAY_CHANGE_ON_RESUME`; any other difference is refused,
naming the key and both values.
"""

from __future__ import annotations

import glob
import importlib
import os
import re
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning import callbacks
from pytorch_lightning.callbacks import ModelCheckpoint
from typing_extensions import override

from clfw.checkpoint import (
    CheckpointError,
    canonical_paths,
    config_differences,
    describe_differences,
    flatten_config,
    ignored,
    read_checkpoint,
)
from clfw.runs import run_dir

ResumePolicy = Literal["auto", "require", "never"]

#: Flattened config keys (glob patterns) that may differ between a checkpoint's run and its resume.
MAY_CHANGE_ON_RESUME = (
    "ckpt_path",
    "resume",
    "config",
    "config.*",
    "trainer.logger",
    "trainer.logger.*",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.default_root_dir",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.strategy.*",
    "trainer.profiler",
    "trainer.log_every_n_steps",
    "model.init_args.log_every_step",
    "trainer.callbacks",
    "trainer.callbacks.*",  # replaced by the callbacks that affect results (see run_config)
    "data.init_args.num_workers",
    "data.init_args.pin_memory",
    "data.init_args.in_memory",  # the lazy path serves the same batches (tests/test_lazy.py)
    "data.init_args.eval_batch_size",
    "data.init_args.batch_size",  # replaced by the global batch
    "data.init_args.root",
    "data.init_args.download",
)

#: Callbacks that neither change training nor what is measured: they may be added, removed or changed on resume.
NEUTRAL_CALLBACKS: tuple[type[pl.Callback], ...] = (
    callbacks.ModelCheckpoint,
    callbacks.OnExceptionCheckpoint,
    callbacks.ProgressBar,
    callbacks.ModelSummary,
    callbacks.LearningRateMonitor,
    callbacks.DeviceStatsMonitor,
    callbacks.Timer,
)


def _is_neutral(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return bool(getattr(cls, "resume_neutral", False)) or (isinstance(cls, type) and issubclass(cls, NEUTRAL_CALLBACKS))


def run_config(config: dict[str, Any], global_batch_size: int) -> dict[str, Any]:
    """The flattened config that identifies a run: everything but :data:`MAY_CHANGE_ON_RESUME`, plus the global batch
    and the callbacks that are not neutral (by class path and arguments, in order)."""
    flat = {k: v for k, v in flatten_config(config).items() if not ignored(k, MAY_CHANGE_ON_RESUME)}
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    kept = [cb for cb in callbacks if isinstance(cb, dict) and not _is_neutral(str(cb.get("class_path", "")))]
    flat.update({f"callbacks.{k}": v for k, v in flatten_config(kept).items()} if kept else {"callbacks": []})
    flat["global_batch_size"] = global_batch_size
    return flat


class RunConfig(pl.Callback):
    """Stores the run's identifying config and its directory in every checkpoint (the CLI adds it). Its state is read
    by :func:`prepare_resume` before training; loading it changes nothing."""

    resume_neutral = True

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.run_dir: str | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run_dir = os.path.realpath(run_dir(trainer))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config, "run_dir": self.run_dir}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # compared before training by prepare_resume


def _version_of(logger: pl.loggers.Logger) -> str | int | None:
    """The logger's version if the user fixed it (without resolving an automatic one)."""
    for attr in ("_version", "_id"):
        if hasattr(logger, attr):
            return getattr(logger, attr)
    return logger.version


def _set_version(logger: pl.loggers.Logger, version: str | int) -> None:
    if hasattr(logger, "_wandb_init"):  # W&B: resume the run by its id
        logger._id = str(version)  # type: ignore[attr-defined]
        logger._wandb_init.update(id=str(version), resume="allow")  # type: ignore[attr-defined]
    elif hasattr(logger, "_version"):
        logger._version = version  # type: ignore[attr-defined]
    else:
        raise ValueError(f"cannot resume {type(logger).__name__} into the same run: set its version explicitly")


def own_checkpoint_dir(trainer: pl.Trainer) -> str:
    """Where this run's checkpoints go during fit: the ``ModelCheckpoint``'s ``dirpath``, else the run directory's
    ``checkpoints/`` (where :func:`find_own_checkpoint` looks, and where :class:`~clfw.preemption.Preemption`
    writes)."""
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None:
            return str(cb.dirpath)
    return os.path.join(run_dir(trainer), "checkpoints")


#: The files of a run's checkpoint directory that resume it: ``last.ckpt`` and preemption checkpoints.
OWN_CHECKPOINTS = ("last.ckpt", "hpc_ckpt_*.ckpt")


def find_own_checkpoint(trainer: pl.Trainer) -> tuple[str | None, list[str]]:
    """``(this run's newest checkpoint or None, the places looked at)``: the newer of ``last.ckpt`` and the preemption
    checkpoints (``hpc_ckpt_N.ckpt``) in its checkpoint directory; for an automatic logger version, the newest version
    that has one is adopted."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    given = any(isinstance(cb, ModelCheckpoint) and cb.dirpath is not None for cb in callbacks)
    logger = trainer.loggers[0] if trainer.loggers else None
    if given or logger is None or _version_of(logger) is not None:  # the directory is known without a new version
        return _newest(own_checkpoint_dir(trainer))
    root = getattr(logger, "root_dir", None) or os.path.join(logger.save_dir or trainer.default_root_dir, logger.name)
    patterns = [os.path.join(root, "*", "checkpoints", name) for name in OWN_CHECKPOINTS]
    found = sorted((f for p in patterns for f in glob.glob(p)), key=os.path.getmtime)
    if not found:
        return None, patterns
    _set_version(logger, _saved_version(os.path.dirname(os.path.dirname(found[-1]))))
    return found[-1], patterns


def _newest(directory: str) -> tuple[str | None, list[str]]:
    patterns = [os.path.join(directory, name) for name in OWN_CHECKPOINTS]
    found = sorted((f for p in patterns for f in glob.glob(p) if os.path.isfile(f)), key=os.path.getmtime)
    return (found[-1] if found else None), patterns


def prepare_resume(
    trainer: pl.Trainer,
    datamodule: pl.LightningDataModule | None,
    policy: ResumePolicy | None,
    ckpt_path: str | None,
    config: dict[str, Any],
    rc: RunConfig,
) -> str | None:
    """Applies the resume policy; returns the checkpoint to resume from (``None``: a new run).

    Raises ``ValueError`` (one line) when ``require`` finds nothing, when the checkpoint is unreadable, when its run
    differs from this one, or when it belongs to another run directory.
    """
    if policy not in (None, "auto", "require", "never"):
        raise ValueError(f"resume must be one of auto, require, never; got {policy!r}")
    if ckpt_path == "last":  # Lightning's "last" looks in a new run's directory: it means "resume this run"
        ckpt_path, policy = None, policy or "require"
    if ckpt_path is not None and policy == "never":
        raise ValueError(f"resume=never contradicts ckpt_path={ckpt_path!r}: drop one of them")
    batch = getattr(datamodule, "batch_size", 0) * trainer.world_size * trainer.accumulate_grad_batches
    rc.config = run_config(config, batch)
    if ckpt_path is None and policy in ("auto", "require"):
        ckpt_path, looked = find_own_checkpoint(trainer)
        if ckpt_path is None and policy == "require":
            where = " or ".join(looked)
            raise ValueError(f"resume=require, but this run has no checkpoint to resume (looked for {where})")
    if ckpt_path is None:
        return None
    checkpoint = read_checkpoint(ckpt_path)
    saved = (checkpoint.get("callbacks") or {}).get("RunConfig")
    if saved is None:
        raise CheckpointError(f"{ckpt_path} was not written by a clfw CLI run (it has no RunConfig): cannot verify it")
    diffs = config_differences(canonical_paths(saved["config"]), rc.config)
    if diffs:
        raise CheckpointError(f"{ckpt_path} belongs to another run: " + describe_differences(diffs))
    _adopt_run_dir(trainer, ckpt_path, saved["run_dir"])
    return ckpt_path


def _adopt_run_dir(trainer: pl.Trainer, ckpt_path: str, saved_dir: str | None) -> None:
    """Makes the resumed run write into the checkpoint's run directory, or refuses."""
    if saved_dir is None:
        return
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is not None and _version_of(logger) is None:
        _set_version(logger, _saved_version(saved_dir))
    here = os.path.realpath(run_dir(trainer))
    ckpt_dir = os.path.realpath(os.path.dirname(ckpt_path))
    if here != saved_dir and not ckpt_dir.startswith(here + os.sep) and ckpt_dir != here:
        raise CheckpointError(
            f"{ckpt_path} is the checkpoint of the run in {saved_dir}, but this run would write into {here}: "
            "resume it in its own directory (same logger and version, or the same default_root_dir)"
        )


def _saved_version(saved_dir: str) -> str | int:
    """The logger version of a run directory: ``N`` for ``version_N``, else the directory's name (a W&B run id)."""
    version = os.path.basename(saved_dir)
    number = re.fullmatch(r"version_(\d+)", version)
    return int(number.group(1)) if number else version

"""Preemption: a cluster's warning signal becomes an exact checkpoint in the run's own directory, then a requeue.

SLURM sends ``--signal=SIGUSR1@90`` (SIGUSR1 90 seconds before the job's end) to every task. Lightning's own handler
(``SLURMEnvironment(auto_requeue=True)``) writes ``hpc_ckpt_N.ckpt`` into ``default_root_dir`` from inside the signal
handler, that is at whatever point of a step the signal arrived (after the forward, half-way through an optimizer
step ...), and restores it on the next start from ``default_root_dir``. clfw replaces it with :class:`Preemption`
(the CLI adds it to every run): the signal only sets a flag; at the end of the step it arrived in, after that step's
continual evaluation and before the step's ``ModelCheckpoint``, every rank writes ``hpc_ckpt_N.ckpt`` into the
run's checkpoint directory (where ``--resume auto`` looks), the job is requeued (``scontrol requeue``, as Lightning
does), and the run stops with :class:`PreemptedError`. It is a full clfw checkpoint (fingerprint, every rank's random
states, loader positions), so the requeued job, started with the same command and ``--resume auto``, continues
exactly as if it had not stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

#: Exit status of a run stopped by :class:`PreemptedError` (``EX_TEMPFAIL``: try again).
EXIT_PREEMPTED = 75


class PreemptedError(RuntimeError):
    """The run stopped on a preemption signal after writing its checkpoint; nothing after that step ran or was
    reported. Start the same command with ``--resume auto`` to continue."""


class Preemption(pl.Callback):
    """Writes an exact checkpoint at the end of the step in which ``signal_name`` arrived, requeues the SLURM job and
    stops the run (see the module docstring).

    Args:
        signal_name: The warning signal (SLURM's ``--signal=SIGUSR1@90``).
        requeue: Run ``scontrol requeue $SLURM_JOB_ID`` (array jobs: ``$SLURM_ARRAY_JOB_ID_$SLURM_ARRAY_TASK_ID``) on
            rank 0 after the checkpoint is written, when the job is a SLURM job.
        sync_every_n_steps: Under DDP, how often the ranks agree on whether one of them got the signal (one boolean
            all-reduce): the checkpoint comes at most this many steps after the signal. One process checks every step.
    """

    resume_neutral = True

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, sync_every_n_steps: int = 10) -> None:
        if not hasattr(signal, signal_name) or not signal_name.startswith("SIG"):
            raise ValueError(f"signal_name must name a signal such as SIGUSR1, got {signal_name!r}")
        if sync_every_n_steps < 1:
            raise ValueError(f"sync_every_n_steps must be at least 1, got {sync_every_n_steps}")
        self.signum = signal.Signals[signal_name]
        self.requeue, self.sync_every_n_steps = requeue, sync_every_n_steps
        self.received = False
        self._previous: Any = None
        self.path: str | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = True  # only a flag: the checkpoint is written where the step ends

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # end-of-step order: after every other callback of the step (continual evaluation ...), before checkpoints
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        callbacks.remove(self)
        first_checkpoint = next((i for i, cb in enumerate(callbacks) if isinstance(cb, Checkpoint)), len(callbacks))
        callbacks.insert(first_checkpoint, self)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before Lightning registers its own handlers (after on_fit_start), which then leaves this signal to us
        self.received = False
        if threading.current_thread() is threading.main_thread():  # Python handles signals in the main thread only
            self._previous = signal.signal(self.signum, self._handler)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        received = self.received
        if trainer.world_size > 1:
            if trainer.global_step % self.sync_every_n_steps:
                return
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        from clfw.resume import own_checkpoint_dir

        directory = own_checkpoint_dir(trainer)
        self.path = os.path.join(directory, f"hpc_ckpt_{_next_number(directory)}.ckpt")
        trainer.save_checkpoint(self.path)
        rank_zero_info(f"{self.signum.name}: checkpoint of step {trainer.global_step} written to {self.path}")
        if self.requeue and trainer.is_global_zero:
            _requeue()
        raise PreemptedError(
            f"preempted ({self.signum.name}) after step {trainer.global_step}: checkpoint {self.path}; "
            "start the same command with --resume auto to continue"
        )


def _next_number(directory: str) -> int:
    numbers = [0]
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            stem = name.removeprefix("hpc_ckpt_").removesuffix(".ckpt")
            if name.startswith("hpc_ckpt_") and name.endswith(".ckpt") and stem.isdigit():
                numbers.append(int(stem))
    return max(numbers) + 1


def _requeue() -> None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        rank_zero_warn(f"could not requeue SLURM job {job}: {err}")
        return
    if result.returncode != 0:
        rank_zero_warn(f"scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()}")

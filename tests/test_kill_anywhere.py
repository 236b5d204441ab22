"""Kill anywhere, resume, get the uninterrupted run: one strategy of each family, five kill points, in-process.

Each run is stopped by an exception at its kill point and resumed in a fresh Trainer from ``last.ckpt``. The final
accuracy matrix, the continual-evaluation curves, the logged history (``metrics.csv``) and every ``state_dict`` entry
must equal those of an uninterrupted run. The stream: 2 tasks x 2 epochs x 6 batches, so task 0 ends at step 12 and
the run at step 24. ``scripts/kill_anywhere.py`` runs the same matrix with SIGKILL over every strategy.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

import clfw.checkpoint
from clfw import ContinualEvaluation, ContinualModule
from tests.helpers import Interrupt, TinyStream, assert_same_state, fit, snapshot
from tests.test_contract import make

# Cumulative: its epochs grow at a task boundary (Lightning compares a checkpoint's batch count with the next loader's)
FAMILIES = ["Naive", "Cumulative", "ER", "EWC", "GDumb", "ICaRL", "L2P", "Refresh"]
KILL_POINTS = ["mid_task", "last_step", "epoch_end", "task_end", "evaluation", "checkpoint_write"]


class Crash(RuntimeError):  # noqa: N818  (the simulated kill, named as what it stands for)
    """The simulated kill."""


def stream() -> TinyStream:
    return TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)


def run(
    name: str, root: Path, ckpt_every: int | None = None, extra: list[pl.Callback] | None = None, **kw: Any
) -> tuple[ContinualModule, Any, ContinualEvaluation]:
    """Fits ``name`` with a checkpoint every ``ckpt_every`` steps (0: at every epoch's end; None: no checkpoints)."""
    module = make(name)
    evaluation = ContinualEvaluation(samples_per_task=10, windows=[3], plot=False)
    callbacks: list[pl.Callback] = [evaluation, *(extra or [])]
    if ckpt_every is not None:
        every = {"every_n_train_steps": ckpt_every} if ckpt_every else {"every_n_epochs": 1}
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=-1, **every))
    logger = pl.loggers.CSVLogger(root, name="", version="run")
    _, matrix = fit(
        module, stream(), callbacks, logger=logger, enable_checkpointing=ckpt_every is not None, root=str(root), **kw
    )
    return module, matrix, evaluation


def history(root: Path) -> list[dict[str, str]]:
    with open(root / "run" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def kill(name: str, point: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Runs ``name`` until the kill point; returns the global step of the checkpoint to resume from."""
    if point == "mid_task":  # task 1, epoch 2, batch 5: the last checkpoint is at step 20
        stop, every, expected = 22, 5, 20
        patch: Callable[[], None] | None = None
    elif point == "last_step":  # a checkpoint exactly on task 0's last step, the run dies just after it
        stop, every, expected, patch = 13, 12, 12, None
    elif point == "epoch_end":  # a checkpoint at the end of every epoch (ModelCheckpoint's default), dies in task 1
        stop, every, expected, patch = 15, 0, 12, None
    elif point == "task_end":  # dies in the strategy's task-end work of task 0 (Fisher, herding, retraining ...)
        stop, every, expected = -1, 5, 10

        def patch() -> None:
            def crash(self: ContinualModule, task: int) -> None:  # after the work, before any callback heard of it
                self.on_task_end(task)
                for p in self.plugins:
                    p.on_task_end(self, task)
                raise Crash("killed in the task end")

            monkeypatch.setattr(ContinualModule, "_end_task", crash)
    elif point == "evaluation":  # dies inside the continual-evaluation pass of step 17
        stop, every, expected = -1, 5, 15

        def patch() -> None:
            original = ContinualEvaluation.evaluate

            def crash(self: ContinualEvaluation, module: ContinualModule, task: int) -> Any:
                if module.trainer.global_step == 17:
                    raise Crash("killed in an evaluation")
                return original(self, module, task)

            monkeypatch.setattr(ContinualEvaluation, "evaluate", crash)
    else:  # dies while writing the checkpoint of step 15: last.ckpt must still be step 10's, intact
        stop, every, expected = -1, 5, 10

        def patch() -> None:
            calls = {"n": 0}
            original = torch.save

            def crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
                calls["n"] += 1
                if calls["n"] == 5:  # steps 5 and 10 wrote a step file and last.ckpt each
                    f.write(b"PK\x03\x04 half a checkpoint")
                    raise Crash("killed while writing a checkpoint")
                original(obj, f, *args, **kwargs)

            monkeypatch.setattr(clfw.checkpoint.torch, "save", crash)

    torch.manual_seed(0)
    if patch is not None:
        patch()
    with pytest.raises(RuntimeError, match=r"interrupted|killed"):
        run(name, root, ckpt_every=every, extra=[Interrupt(stop)] if stop > 0 else [])
    monkeypatch.undo()
    last = clfw.checkpoint.read_checkpoint(root / "ckpt" / "last.ckpt")
    assert last["global_step"] == expected, point
    if point == "checkpoint_write":
        left = sorted(p.name for p in (root / "ckpt").iterdir())
        assert left == sorted(["epoch=0-step=5.ckpt", "epoch=1-step=10.ckpt", "last.ckpt"]), "no truncated/temp file"
    return expected


@pytest.fixture(scope="module")
def references() -> dict[str, Any]:
    """The uninterrupted run of each family, computed once."""
    return {}


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("name", FAMILIES)
def test_killed_anywhere_then_resumed_equals_the_uninterrupted_run(
    name: str, point: str, tmp_path: Path, references: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if name not in references:
        torch.manual_seed(0)
        ref_root = tmp_path / "ref"
        module, matrix, evaluation = run(name, ref_root)
        references[name] = (snapshot(module), matrix.rows, evaluation.report(None)["continual"], history(ref_root))
    state, rows, curves, logged = references[name]
    assert len(rows) == 2

    kill(name, point, tmp_path / "run", monkeypatch)
    torch.manual_seed(123)  # the restart must not depend on the global RNG state
    module, matrix, evaluation = run(name, tmp_path / "run", ckpt_path=str(tmp_path / "run" / "ckpt" / "last.ckpt"))

    assert matrix.rows == rows
    assert evaluation.report(None)["continual"] == curves
    assert history(tmp_path / "run") == logged
    assert_same_state(state, snapshot(module), f"{name} killed at {point}")

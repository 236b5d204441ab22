"""Task-free streams (``task_boundaries_visible: false``): what a strategy does not see, and what still works.

A strategy there sees one task: ``batch.task`` is 0, ``batch.index`` numbers the samples across the stream,
``current_task`` stays 0, its task hooks are not called and its optimizer is never reset; in class-IL its seen classes
are the labels met in training batches so far. The evaluation callbacks still hear every true boundary. Online
streams (one pass, batches of 10) need nothing new: the last batch of a task is short, and every sample is served once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw import Batch, ContinualCallback, ContinualModule
from clfw.backbones import MLP
from clfw.testing import Interrupt, TinyStream, assert_same_state, fit, snapshot


class Recorder(ContinualModule):
    """Naive fine-tuning that records what it is shown at every training step, and whether its task hooks run."""

    needs_task_boundaries = False  # it overrides the hooks only to record whether they are called

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(backbone=MLP(in_features=16, hidden=(8,)), optimizer=torch.optim.SGD, **kwargs)
        self.steps: list[dict[str, Any]] = []
        self.hooks: list[tuple[str, int]] = []

    @override
    def on_task_start(self, task: int) -> None:
        self.hooks.append(("start", task))

    @override
    def on_task_end(self, task: int) -> None:
        self.hooks.append(("end", task))

    @override
    def training_loss(self, batch: Batch) -> Tensor | dict[str, Tensor]:
        self.steps.append(
            {
                "task": batch.task.tolist(),
                "index": batch.index.tolist(),
                "y": batch.y.tolist(),
                "raw": self.raw_inputs(batch),
                "current_task": self.current_task,
                "seen": torch.nonzero(self.seen_mask).flatten().tolist(),
                "optimizer": id(self.trainer.optimizers[0]),
            }
        )
        return super().training_loss(batch)


class Boundaries(ContinualCallback):
    """The task boundaries an evaluation callback hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, int]] = []

    @override
    def on_task_start(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self.heard.append(("start", task))

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self.heard.append(("end", task))


def run(visible: bool, **stream: Any) -> tuple[Recorder, TinyStream, Boundaries, list[list[float]]]:
    pl.seed_everything(0, verbose=False)
    module, heard = Recorder(), Boundaries()
    dm = TinyStream(n_tasks=2, batch_size=10, task_boundaries_visible=visible, **stream)
    _, matrix = fit(module, dm, [heard], plot=False)
    return module, dm, heard, matrix.rows


def test_a_strategy_on_a_task_free_stream_sees_one_task_and_the_evaluation_sees_the_boundaries() -> None:
    module, dm, heard, rows = run(visible=False)
    steps = module.steps
    # online: one pass in batches of 10 over 2 tasks of 48 samples (the last batch of each task is short)
    assert [len(s["y"]) for s in steps] == [10, 10, 10, 10, 8] * 2
    assert all(t == 0 for s in steps for t in s["task"])
    assert {s["current_task"] for s in steps} == {0}
    assert module.hooks == []
    assert len({s["optimizer"] for s in steps}) == 1
    # the index is a stream-wide key: every sample once, and raw_inputs finds each sample's stored input
    indices = [i for s in steps for i in s["index"]]
    assert sorted(indices) == list(range(96))
    for s in steps:
        stored = [dm.stream.tasks[i // 48].train.x[i % 48] for i in s["index"]]
        assert torch.equal(s["raw"], torch.stack(stored))
    # class-IL: the seen classes are the labels met so far, this batch's included
    met: set[int] = set()
    for s in steps:
        met |= set(s["y"])
        assert s["seen"] == sorted(met)
    # the evaluation still hears the true boundaries and fills the accuracy matrix
    assert heard.heard == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert len(rows) == 2 and module.stream_task == 1

    # the same strategy with visible boundaries sees all of it (so the checks above can fail)
    shown, _, _, _ = run(visible=True)
    assert {t for s in shown.steps for t in s["task"]} == {0, 1}
    assert {s["current_task"] for s in shown.steps} == {0, 1}
    assert shown.hooks == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert shown.steps[0]["seen"] == [0, 1] and shown.steps[-1]["seen"] == [0, 1, 2, 3]


def test_what_needs_boundaries_is_refused_on_a_task_free_stream() -> None:
    with pytest.raises(ValueError, match="reset_optimizer_per_task=True needs task boundaries"):
        Recorder(reset_optimizer_per_task=True).attach_stream(TinyStream(task_boundaries_visible=False))
    with pytest.raises(ValueError, match="the 'task' scenario needs"):
        TinyStream(scenario="task", task_boundaries_visible=False)


@pytest.mark.parametrize("name", ["Naive", "ER", "ERACE", "DER", "DERPP"])
def test_boundary_free_strategies_learn_an_iblurry_task_free_stream(name: str) -> None:
    """Classes turn up before their home task; with the seen classes taken from the task ids, their samples would get
    a -inf logit and the run would stop on an infinite loss."""
    from tests.test_contract import make

    dm = TinyStream(n_tasks=2, batch_size=8, task_boundaries_visible=False, blurry_m=50, iblurry_n=50)
    early = {int(c) for c in dm.stream.tasks[0].train.y.unique()} - set(dm.stream.tasks[0].test.y.tolist())
    assert early, "task 0 should hold a sample of a class whose home is task 1"
    _, matrix = fit(make(name), dm, plot=False)
    assert len(matrix.rows) == 2


def test_the_seen_classes_ride_in_checkpoints_and_a_resume_is_bit_exact(tmp_path: Path) -> None:
    """A resume that forgot the labels met before the checkpoint would mask the replayed old classes to -inf."""
    from tests.test_contract import make

    def stream() -> TinyStream:
        return TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2, task_boundaries_visible=False)

    pl.seed_everything(0, verbose=False)
    reference, ref_matrix = fit(make("ER"), stream(), plot=False, root=str(tmp_path / "reference"))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_last=True)
    pl.seed_everything(0, verbose=False)
    with pytest.raises(RuntimeError, match="interrupted after step 17"):
        fit(make("ER"), stream(), [ckpt, Interrupt(17)], plot=False, enable_checkpointing=True, root=str(tmp_path))
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["clfw"]
    assert (state["task"], state["task_ended"], state["observed_classes"]) == (1, False, [0, 1, 2, 3])
    pl.seed_everything(123, verbose=False)
    resumed, matrix = fit(
        make("ER"), stream(), plot=False, root=str(tmp_path / "b"), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert matrix.rows == ref_matrix.rows
    assert_same_state(snapshot(reference.lightning_module), snapshot(resumed.lightning_module))
    assert torch.equal(reference.lightning_module.seen_mask, resumed.lightning_module.seen_mask)


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_the_seen_classes_are_the_same_on_every_ddp_rank(ddp_suite: Path) -> None:
    ranks = [torch.load(ddp_suite / "task_free" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["seen"] == ranks[1]["seen"] and len(ranks[0]["seen"]) == ranks[0]["steps"]
    local = [r["local"] for r in ranks]  # each rank's own labels so far: the all-reduce adds the other rank's
    assert any(set(a) != set(b) for a, b in zip(*local, strict=True)), "the ranks never saw different classes"
    assert all(set(a) | set(b) == set(s) for a, b, s in zip(*local, ranks[0]["seen"], strict=True))
    assert_same_state(ranks[0]["state_dict"], ranks[1]["state_dict"])

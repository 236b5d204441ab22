"""Regressions of issue 11: each case once handed back a wrong number with exit code 0 (or failed mid-training).

- a checkpoint of another run (stream, task/epoch mapping, global batch, strategy, number of tasks) or a corrupt file
  is refused before training, naming what differs;
- a non-finite loss or update stops the run naming the task, the step and the loss term, and no checkpoint of the
  broken model is written;
- a new run never writes into another run's directory;
- a strategy or plugin that needs task boundaries is refused on a stream that hides them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

import clfw.strategies
from clfw import Batch, ContinualEvaluation, ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.checkpoint import CheckpointError
from clfw.numerics import NonFiniteError
from clfw.runs import RunDirectoryError, run_dir
from tests.helpers import TinyStream, fit


def naive(**kwargs: Any) -> ContinualModule:
    torch.manual_seed(0)
    return clfw.strategies.Naive(
        backbone=MLP(in_features=16, hidden=(8,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs
    )


def checkpoint_of(module: ContinualModule, stream: TinyStream, root: Path, every: int = 3) -> Path:
    """Fits ``module`` on ``stream`` with a checkpoint every ``every`` steps; returns ``last.ckpt``."""
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every, save_last=True)
    fit(module, stream, [ckpt], enable_checkpointing=True, root=str(root))
    return root / "ckpt" / "last.ckpt"


class DomainTinyStream(TinyStream):
    """Another stream class with the same shapes (as Permuted MNIST is to Split MNIST)."""


# ------------------------------------------------------------------------------------------- 3. another run's ckpt
@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"stream": DomainTinyStream}, "stream"),
        ({"epochs_per_task": 2}, "epochs_per_task"),
        ({"batch_size": 16}, "global_batch_size"),
        ({"n_tasks": 1, "num_classes_total": 2}, "n_tasks"),
        ({"seed": 5}, "data_seed"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_before_training(
    change: dict[str, Any], key: str, tmp_path: Path
) -> None:
    last = checkpoint_of(naive(), TinyStream(n_tasks=2, batch_size=8), tmp_path / "a")
    kwargs = {"n_tasks": 2, "batch_size": 8, **change}
    cls = kwargs.pop("stream", TinyStream)
    module = naive()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"another run: {key}"):
        fit(module, cls(**kwargs), ckpt_path=str(last), root=str(tmp_path / "b"))
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items()), "refused before any training"


def test_a_checkpoint_of_another_strategy_is_refused_naming_both(tmp_path: Path) -> None:
    torch.manual_seed(0)
    er = clfw.strategies.ER(backbone=MLP(in_features=16, hidden=(8,)), buffer_size=10, replay_batch_size=4)
    last = checkpoint_of(er, TinyStream(n_tasks=2, batch_size=8), tmp_path / "a")
    der = clfw.strategies.DER(backbone=MLP(in_features=16, hidden=(8,)), buffer_size=10, replay_batch_size=4)
    with pytest.raises(
        CheckpointError, match=r"strategy: 'clfw\.strategies\.er\.ER' \(checkpoint\) != 'clfw\.strategies\.der\.DER'"
    ):
        fit(der, TinyStream(n_tasks=2, batch_size=8), ckpt_path=str(last), root=str(tmp_path / "b"))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_corrupt_checkpoint_fails_with_one_clear_line(damage: str, tmp_path: Path) -> None:
    last = checkpoint_of(naive(), TinyStream(n_tasks=2, batch_size=8), tmp_path / "a")
    data = last.read_bytes()
    last.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"corrupt or incomplete checkpoint: {last}"):
        fit(naive(), TinyStream(n_tasks=2, batch_size=8), ckpt_path=str(last), root=str(tmp_path / "b"))


def test_a_checkpoint_of_another_format_is_refused(tmp_path: Path) -> None:
    last = checkpoint_of(naive(), TinyStream(n_tasks=2, batch_size=8), tmp_path / "a")
    ckpt = torch.load(last, weights_only=False)
    ckpt["clfw"]["format"] = 1
    torch.save(ckpt, last)
    with pytest.raises(CheckpointError, match="checkpoint format 1"):
        fit(naive(), TinyStream(n_tasks=2, batch_size=8), ckpt_path=str(last), root=str(tmp_path / "b"))


def test_the_same_run_resumes_with_another_world_size_of_the_same_global_batch(tmp_path: Path) -> None:
    """The fingerprint holds the global batch, not the world size: what it compares, tested on its values."""
    last = checkpoint_of(naive(), TinyStream(n_tasks=2, batch_size=8), tmp_path / "a")
    fingerprint = torch.load(last, weights_only=False)["clfw"]["fingerprint"]
    assert fingerprint["global_batch_size"] == 8 and "world_size" not in fingerprint
    fit(naive(), TinyStream(n_tasks=2, batch_size=8), ckpt_path=str(last), root=str(tmp_path / "b"))


# ----------------------------------------------------------------------------------------------- 4. NaN and Inf
class NaNAt(Plugin):
    """Adds a loss term that becomes NaN at global step ``step``.

    Args:
        step: The step whose term is NaN.
    """

    needs_task_boundaries = False

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        broken = module.trainer.global_step == self.step
        return {"fragile": outputs["logits"].mean() * (float("nan") if broken else 0.0)}


def test_a_nan_loss_term_stops_the_run_naming_task_step_and_term(tmp_path: Path) -> None:
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    matrix_rows: list[Any] = []
    with pytest.raises(NonFiniteError, match=r"task 1, global step 8: loss term 'fragile' is not finite"):
        _, matrix = fit(
            naive(plugins=[NaNAt(8)]),
            TinyStream(n_tasks=2, batch_size=8),
            [ckpt, ContinualEvaluation(plot=False)],
            enable_checkpointing=True,
            root=str(tmp_path),
        )
        matrix_rows = matrix.rows
    assert not matrix_rows
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8, "the last checkpoint is the one before the broken step"
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_an_exploding_learning_rate_stops_the_run_and_writes_no_broken_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = clfw.strategies.Naive(
        backbone=MLP(in_features=16, hidden=(8,)), optimizer=lambda p: torch.optim.SGD(p, lr=1e30)
    )
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_on_exception=True
    )
    with pytest.raises(NonFiniteError, match=r"task 0, global step \d+"):
        fit(module, TinyStream(n_tasks=2, batch_size=8), [ckpt], enable_checkpointing=True, root=str(tmp_path))
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path.name
    assert (
        not (tmp_path / "metrics.json").exists() or '"accuracy_matrix": []' in (tmp_path / "metrics.json").read_text()
    )


def test_non_finite_parameters_are_caught_before_an_evaluation() -> None:
    """Weights broken by the last step of a task (no later gradient would show it) never reach the task end."""
    module = naive()
    module.attach_stream(TinyStream(n_tasks=2))
    with torch.no_grad():
        module.head.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite parameters before the end of task 0.*head\.weight"):
        module.check_finite("the end of task 0")


# ------------------------------------------------------------------------------------------- 5. one run per dir
def test_a_new_run_into_a_directory_with_another_runs_metrics_is_refused(tmp_path: Path) -> None:
    fit(naive(), TinyStream(n_tasks=2, batch_size=8), root=str(tmp_path))
    assert (tmp_path / "metrics.json").exists()
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(RunDirectoryError, match=r"already holds another run's metrics\.json"):
        fit(clfw.strategies.ER(backbone=MLP(in_features=16, hidden=(8,))), TinyStream(n_tasks=2), root=str(tmp_path))
    assert (tmp_path / "metrics.json").read_text() == before


class SharedDirLogger(pl.loggers.Logger):
    """A logger like W&B's: one ``save_dir`` for every run, a run id as version."""

    def __init__(self, save_dir: str, version: str) -> None:
        super().__init__()
        self._save_dir, self._version = save_dir, version

    @property
    @override
    def name(self) -> str:
        return "project"

    @property
    @override
    def version(self) -> str:
        return self._version

    @property
    @override
    def save_dir(self) -> str:
        return self._save_dir

    @override
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    @override
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def test_runs_of_a_shared_save_dir_logger_get_their_own_directories(tmp_path: Path) -> None:
    dirs = []
    for run_id in ("abc123", "def456"):
        trainer, _ = fit(naive(), TinyStream(n_tasks=2, batch_size=8), logger=SharedDirLogger(str(tmp_path), run_id))
        dirs.append(run_dir(trainer))
        assert (Path(dirs[-1]) / "metrics.json").exists()
    assert dirs == [str(tmp_path / "project" / "abc123"), str(tmp_path / "project" / "def456")]


# ----------------------------------------------------------------------------------- 7. boundaries are required
@pytest.mark.parametrize("name", ["EWC", "SI", "MAS", "LwF", "GDumb", "ICaRL", "AGEM", "Refresh"])
def test_strategies_that_need_boundaries_are_refused_on_a_boundary_free_stream(name: str) -> None:
    from tests.test_contract import make

    module = make(name)
    shown = type(module.plugins[0]).__name__ if len(module.plugins) else name
    with pytest.raises(ValueError, match=f"{shown} needs task boundaries"):
        module.attach_stream(TinyStream(n_tasks=2, task_boundaries_visible=False))


@pytest.mark.parametrize("name", ["Naive", "ER", "DER", "DERPP", "ERACE"])
def test_boundary_free_strategies_run_without_boundaries(name: str) -> None:
    from tests.test_contract import make

    _, matrix = fit(make(name), TinyStream(n_tasks=2, batch_size=8, task_boundaries_visible=False))
    assert len(matrix.rows) == 2


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_a_rank_local_nan_stops_every_ddp_rank_at_the_same_step(ddp_suite: Path) -> None:
    texts = [(ddp_suite / "nan" / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert "task 1, global step 5: the loss of another rank is not finite" in texts[0], texts[0]
    assert "task 1, global step 5: loss term 'rank_local' is not finite" in texts[1], texts[1]


def test_the_deferred_verdict_names_the_first_bad_step_and_its_term() -> None:
    """The accelerator path (no per-step synchronisation), run on the CPU: steps go on after the bad one, and the
    check before the next evaluation, task end or checkpoint names the first bad step, its terms and its task."""
    from clfw.numerics import FiniteGuard

    module = naive()
    module.attach_stream(TinyStream(n_tasks=2))
    module.current_task = 1
    guard = FiniteGuard(defer=True)
    for step, fragile in enumerate([0.0, float("nan"), 0.0, float("inf")]):
        for p in module.parameters():
            p.grad = torch.full_like(p, 0.1) * (1.0 if fragile == 0 else fragile)
        loss = torch.tensor(1.0)
        guard.record(loss + fragile, {"loss": loss, "fragile": torch.tensor(fragile)})
        guard.check_step(module, step)  # never raises, never synchronises
    with pytest.raises(NonFiniteError, match=r"task 1, global step 1: loss term 'fragile' is not finite \(loss=1"):
        module.finite_guard = guard
        module.check_finite("an evaluation")


def test_an_evaluation_of_a_model_that_outputs_nan_raises_instead_of_reporting_an_accuracy() -> None:
    """Finite but huge weights (SGD with lr=1e30 after one step) can give NaN logits while every parameter is finite;
    argmax would still 'predict' class 0. Here the logits of a finite model are made NaN for half the samples."""
    from clfw import evaluate

    dm = TinyStream(n_tasks=2)
    module = naive()
    module.attach_stream(dm)
    healthy = module.forward
    module.forward = lambda x: healthy(x).index_fill(0, torch.arange(0, len(x), 2), float("nan"))  # type: ignore
    module.check_finite("an evaluation")  # the parameters alone pass
    with pytest.raises(NonFiniteError, match=r"NaN scores for 10 evaluation samples"):
        evaluate(module, dm, [0])
    module.forward = healthy  # type: ignore[method-assign]
    assert len(evaluate(module, dm, [0])[0]) == 1


def test_a_checkpoint_write_deletes_temporary_files_orphaned_by_dead_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from clfw.checkpoint import AtomicCheckpointIO

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".epoch=0-step=5.ckpt.tmp-{int(dead.stdout)}-abc"
    live = tmp_path / f".epoch=0-step=5.ckpt.tmp-{os.getppid()}-def"  # a process that still runs: left alone
    orphan.write_bytes(b"half")
    live.write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "last.ckpt"])

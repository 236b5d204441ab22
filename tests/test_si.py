"""SI: the path integral against recorded optimizer steps, the Omega formula, the penalty, accumulation, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw import ContinualCallback, ContinualModule
from clfw.backbones import MLP
from clfw.strategies import Naive
from clfw.strategies.si import SI
from tests.helpers import Interrupt, TinyStream, assert_same_state, fit, snapshot

LR = 0.05


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.detach().flatten() for t in tensors]).clone()


class Recorder(ContinualCallback):
    """Records, independently of the plugin, each optimizer step's gradient and parameters before the step, the
    parameters at task boundaries, and the plugin's state at the end of every epoch and task."""

    def __init__(self, plugin: SI) -> None:
        self.plugin = plugin
        self.steps: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self.start: dict[int, Tensor] = {}
        self.end: dict[int, Tensor] = {}
        self.importance: dict[int, Tensor] = {}
        self.epoch_end: list[dict[str, Tensor]] = []

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, module: Any, optimizer: torch.optim.Optimizer) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        self.steps.setdefault(module.current_task, []).append((flat([p.grad for p in params]), flat(params)))

    @override
    def on_task_start(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self.start[task] = flat(list(module.parameters()))

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self.end[task] = flat(list(module.parameters()))
        self.importance[task] = self.plugin.importance.clone()
        assert not self.plugin.omega.any() and not self.plugin.step_grad.any(), "omega restarts, nothing pending"

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:  # runs before the module's task end
        names = ("omega", "step_grad", "step_theta")
        self.epoch_end.append({n: getattr(self.plugin, n).clone() for n in names})

    def path_integral(self, task: int, upto: int | None = None) -> Tensor:
        """sum_k -g_k (theta_{k+1} - theta_k) over the task's first ``upto`` steps (all: up to the task's end)."""
        steps = self.steps[task]
        after = [theta for _, theta in steps[1:]] + [self.end[task]]
        omega = torch.zeros_like(steps[0][0])
        for (g, theta), nxt in list(zip(steps, after, strict=True))[:upto]:
            omega -= g * (nxt - theta)
        return omega


class DoubleStream(TinyStream):
    """TinyStream with float64 inputs, so that the checks can be tight."""

    @override
    def eval_transform(self) -> Any:
        normalize = super().eval_transform()
        return lambda x: normalize(x).double()


def run(plugin: SI, **kwargs: Any) -> tuple[Naive, Recorder, pl.Trainer]:
    torch.manual_seed(0)
    sgd = lambda p: torch.optim.SGD(p, lr=LR)  # noqa: E731
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)), num_classes=4, optimizer=sgd, plugins=[plugin]).double()
    recorder = Recorder(plugin)
    trainer, _ = fit(m, DoubleStream(n_tasks=2, batch_size=8, epochs_per_task=2), callbacks=[recorder], **kwargs)
    return m, recorder, trainer


def test_omega_is_the_path_integral_of_the_recorded_steps_and_omega_follows_the_formula() -> None:
    plugin = SI(c=0.5, xi=0.01)
    _, rec, trainer = run(plugin)
    assert [len(rec.steps[t]) for t in (0, 1)] == [12, 12], "6 steps per epoch, 2 epochs per task"
    # mid-task (end of task 0's first epoch): steps 0..4 are counted, step 5 waits for its parameter change
    mid = rec.epoch_end[0]
    torch.testing.assert_close(mid["omega"], rec.path_integral(0, upto=5), rtol=1e-12, atol=1e-15)
    assert torch.equal(mid["step_grad"], rec.steps[0][5][0]) and torch.equal(mid["step_theta"], rec.steps[0][5][1])
    # plain SGD: delta = -lr g, so the path integral is lr sum_k g_k^2 (a second, closed-form check)
    sgd = LR * sum(g.pow(2) for g, _ in rec.steps[0])
    torch.testing.assert_close(rec.path_integral(0), sgd, rtol=1e-9, atol=1e-15)
    # Omega = sum_t omega_t / (Delta_t^2 + xi), Delta_t = the change over task t
    expected = torch.zeros_like(sgd)
    for t in (0, 1):
        delta = rec.end[t] - rec.start[t]
        expected = expected + rec.path_integral(t) / (delta.pow(2) + 0.01)
        torch.testing.assert_close(rec.importance[t], expected, rtol=1e-10, atol=1e-14)
    assert torch.equal(rec.start[1], rec.end[0]) and torch.equal(plugin.anchor, rec.end[1])
    assert plugin.tasks == 2 and "train/si" in trainer.callback_metrics


def test_penalty_is_zero_at_the_anchor_and_weighted_by_omega_away_from_it() -> None:
    plugin = SI(c=3.0)
    m, _, _ = run(plugin)
    assert plugin.importance.abs().sum() > 0
    assert plugin.penalty(m) == 0, "right after a task end theta is the anchor"
    with torch.no_grad():
        m.head.bias.add_(0.1)
    shift = torch.zeros_like(plugin.anchor)
    shift[-4:] = 0.1  # the head bias is the last parameter
    torch.testing.assert_close(plugin.penalty(m), 3.0 * (plugin.importance * shift.pow(2)).sum())
    assert SI().loss_terms(m, None, {}) == {}, "no term before a task has ended"
    fresh = Naive(backbone=MLP(in_features=16, hidden=(8,)), num_classes=4, plugins=[SI(c=3.0)]).double()
    fresh.load_state_dict(m.state_dict())  # before setup: the buffers are sized from the state dict
    assert fresh.plugins[0].tasks == 2 and torch.equal(fresh.plugins[0].importance, plugin.importance)


def test_gradient_accumulation_counts_each_optimizer_step_once() -> None:
    plugin = SI(xi=0.1)
    _, rec, trainer = run(plugin, accumulate_grad_batches=2)
    assert [len(rec.steps[t]) for t in (0, 1)] == [6, 6] and trainer.global_step == 12
    delta = rec.end[0] - rec.start[0]
    torch.testing.assert_close(rec.importance[0], rec.path_integral(0) / (delta.pow(2) + 0.1), rtol=1e-10, atol=1e-14)


def make() -> Naive:
    return Naive(
        backbone=MLP(in_features=16, hidden=(16,), dropout=0.2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        plugins=[SI(c=1.0)],
    )


def stream() -> TinyStream:
    return TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)


def test_a_run_resumed_mid_task_is_bit_identical_and_needs_the_pending_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = make()
    _, ref_matrix = fit(reference, stream())
    torch.manual_seed(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=-1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(make(), stream(), callbacks=[ckpt, Interrupt(17)], enable_checkpointing=True)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 15 and last["clfw"]["task"] == 1
    assert last["state_dict"]["plugins.0.step_grad"].any(), "the checkpoint holds a pending step"
    torch.manual_seed(123)
    resumed = make()
    _, matrix = fit(resumed, stream(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert matrix.rows == ref_matrix.rows
    assert_same_state(snapshot(reference), snapshot(resumed), "SI")
    # the same resume without the pending step's gradient loses that step's contribution
    last["state_dict"]["plugins.0.step_grad"].zero_()
    torch.save(last, tmp_path / "no_pending.ckpt")
    torch.manual_seed(123)
    lossy = make()
    fit(lossy, stream(), ckpt_path=str(tmp_path / "no_pending.ckpt"))
    assert not torch.equal(lossy.plugins[0].importance, reference.plugins[0].importance)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="c must be >= 0, got -1"):
        SI(c=-1.0)
    with pytest.raises(ValueError, match="xi must be > 0, got 0"):
        SI(xi=0.0)

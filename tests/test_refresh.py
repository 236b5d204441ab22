"""Refresh learning: the update by hand, ascent on the batch loss, Fisher preconditioning, delta = 0 is a no-op, and
composition with built-in and outside strategies."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import clfw.strategies
from clfw import ContinualModule
from clfw.backbones import MLP
from clfw.seeding import derived_generator
from clfw.strategies import Refresh
from tests.helpers import ScaledLoss, TinyStream, assert_same_state, fit, snapshot


class Flat(nn.Module):
    """The identity on flattened inputs: with clfw's head, the model is one linear softmax layer."""

    num_features = 16

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class BNDropout(nn.Module):
    """A backbone with BatchNorm running statistics and dropout, the state refresh must not disturb."""

    num_features = 12

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def linear_model() -> tuple[ContinualModule, Any]:
    torch.manual_seed(0)
    dm = TinyStream(n_tasks=2)
    m = clfw.strategies.Naive(backbone=Flat(), num_classes=4)
    m.attach_stream(dm)
    m.double()
    batch = dm.stream.tasks[0].train.batch(torch.arange(0, 48, 4), dm.train_transform())
    return m, batch._replace(x=batch.x.double())


def test_one_refresh_step_on_a_linear_model_matches_the_hand_computed_update() -> None:
    m, batch = linear_model()
    plugin = Refresh(unlearn_lr=0.01, delta=0.1, gamma=0.5, sigma=0.2, seed=3)
    fisher_w = torch.rand(4, 16, dtype=torch.double)
    plugin.register_buffer("fisher:head:weight", fisher_w.clone())  # as after a task end; no Fisher for the bias
    w, b = m.head.weight.detach().clone(), m.head.bias.detach().clone()
    x = batch.x.flatten(1)
    # cross-entropy gradient of a linear softmax layer, by hand: (softmax(z) - onehot)^T x / B
    r = torch.softmax(x @ w.T + b, 1) - nn.functional.one_hot(batch.y, 4).double()
    g_w, g_b = r.T @ x / len(x), r.mean(0)
    noise = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=derived_generator(3, 0))))
    eps_w = torch.randn(w.shape, generator=noise, dtype=torch.double)
    eps_b = torch.randn(b.shape, generator=noise, dtype=torch.double)
    u_w = w.norm() / (0.01 * g_w).norm() * 0.01 * g_w
    u_b = b.norm() / (0.01 * g_b).norm() * 0.01 * g_b
    expected_w = w + 0.1 * (u_w + 0.2 * eps_w) / (1 + 0.5 * fisher_w)
    expected_b = b + 0.1 * (u_b + 0.2 * eps_b)
    plugin.before_training_step(m, batch)
    torch.testing.assert_close(m.head.weight, expected_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.head.bias, expected_b, rtol=1e-12, atol=1e-14)
    assert int(plugin.steps) == 1


def test_the_unlearn_step_increases_the_current_batch_loss() -> None:
    m, batch = linear_model()

    def loss() -> float:
        with torch.no_grad():
            return nn.functional.cross_entropy(m(batch.x), batch.y).item()

    before = loss()
    Refresh().before_training_step(m, batch)  # the paper's constants: delta = 1e-5
    assert loss() > before


def test_fisher_preconditioning_shrinks_the_update_where_f_is_large() -> None:
    changes = []
    for fisher in (None, torch.tensor([0.0, 1e3, 1e6, 0.0], dtype=torch.double)):
        m, batch = linear_model()
        plugin = Refresh(delta=0.1, gamma=1e-3)
        if fisher is not None:
            plugin.register_buffer("fisher:head:bias", fisher)
        start = m.head.bias.detach().clone()
        plugin.before_training_step(m, batch)
        changes.append(m.head.bias.detach() - start)
    plain, preconditioned = changes
    torch.testing.assert_close(preconditioned, plain / torch.tensor([1.0, 2.0, 1001.0, 1.0], dtype=torch.double))


def test_delta_zero_is_bit_identical_to_the_strategy_alone_with_batchnorm_and_dropout() -> None:
    states = []
    for plugins in ([], [Refresh(delta=0.0)]):
        torch.manual_seed(0)
        m = clfw.strategies.ER(backbone=BNDropout(), buffer_size=20, replay_batch_size=4, plugins=plugins)
        fit(m, TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2))
        states.append({k: v for k, v in snapshot(m).items() if not k.startswith("plugins.")})
    assert_same_state(*states, "refresh with delta = 0 changed")
    assert int(m.plugins[0].steps) == 24 and hasattr(m.plugins[0], "fisher:head:weight")


@pytest.mark.parametrize("name", ["Naive", "ER", "DERPP", "EWC", "LwF", "outside"])
def test_refresh_composes_with_strategies_and_plugins_unchanged(name: str) -> None:
    def make(refresh: bool) -> ContinualModule:
        torch.manual_seed(0)
        common: dict[str, Any] = {"backbone": MLP(in_features=16, hidden=(8,))}
        plugins = [Refresh(delta=0.05)] if refresh else []
        if name in ("EWC", "LwF"):
            return clfw.strategies.Naive(plugins=[getattr(clfw.strategies, name)(), *plugins], **common)
        if name == "outside":
            return ScaledLoss(factor=0.5, plugins=plugins, **common)
        extra = {"buffer_size": 20, "replay_batch_size": 4} if name != "Naive" else {}
        return getattr(clfw.strategies, name)(plugins=plugins, **common, **extra)

    alone, refreshed = make(False), make(True)
    for m in (alone, refreshed):
        fit(m, TinyStream(n_tasks=2, batch_size=8))
    plugin = refreshed.plugins[-1]
    assert int(plugin.steps) == 12, "one unlearn step per training step"
    assert plugin.get_buffer("fisher:head:weight").abs().sum() > 0, "Fisher accumulated at task end"
    assert not torch.equal(alone.head.weight, refreshed.head.weight)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="delta"):
        Refresh(delta=-1.0)
    with pytest.raises(ValueError, match="fisher"):
        Refresh(fisher="exact")  # type: ignore[arg-type]

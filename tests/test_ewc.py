"""EWC / online EWC: penalty zero at the anchor, hand-computed penalty, online decay over three tasks."""

from __future__ import annotations

import pytest
import torch

import clfw.strategies.ewc as ewc_module
from clfw.backbones import MLP
from clfw.strategies import ER, EWC, Naive
from tests.helpers import TinyStream, fit


def test_penalty_is_zero_at_the_anchor_and_quadratic_away_from_it() -> None:
    plugin = EWC(ewc_lambda=3.0)
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[plugin])
    fit(m, TinyStream(n_tasks=2, batch_size=8))
    assert plugin.terms == 2
    # right after task 1 ended, theta equals anchor_1, so only task 0's term remains
    theta = torch.cat([p.flatten() for p in m.parameters()])
    expected0 = 0.5 * 3.0 * (plugin.fisher_0 * (theta - plugin.anchor_0).pow(2)).sum()
    assert torch.equal(plugin.anchor_1, theta.detach())
    torch.testing.assert_close(plugin.penalty(m), expected0)
    single = EWC(ewc_lambda=3.0)
    single.register_buffer("fisher_0", plugin.fisher_1)
    single.register_buffer("anchor_0", plugin.anchor_1)
    single.terms = 1
    assert single.penalty(m) == 0, "the penalty vanishes at the anchor"
    with torch.no_grad():
        m.head.bias.add_(0.1)
    shift = torch.zeros_like(theta)
    shift[-4:] = 0.1  # the head bias is the last parameter
    torch.testing.assert_close(single.penalty(m), 0.5 * 3.0 * (plugin.fisher_1 * shift.pow(2)).sum())


def test_merged_penalty_equals_the_sum_over_tasks_in_value_and_gradient() -> None:
    """The per-step penalty uses S = sum F_t, the Fisher-weighted anchor and a constant; it must equal the paper's
    sum of one quadratic per task, with entries where every Fisher is zero."""
    torch.manual_seed(0)
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)), num_classes=4)
    plugin = EWC(ewc_lambda=3.0)
    theta = torch.cat([p.flatten() for p in m.parameters()]).detach()
    for k in range(3):
        fisher = torch.rand_like(theta) * (torch.rand_like(theta) > 0.3)
        fisher[:5] = 0  # no task weighs these
        plugin.register_buffer(f"fisher_{k}", fisher)
        plugin.register_buffer(f"anchor_{k}", theta + torch.randn_like(theta))
    plugin.terms = 3
    value = plugin.penalty(m)
    grads = torch.autograd.grad(value, list(m.parameters()))
    flat = torch.cat([p.flatten() for p in m.parameters()])

    def direct(terms: int) -> torch.Tensor:  # the paper's sum, one quadratic per task
        pairs = [(plugin.get_buffer(f"fisher_{k}"), plugin.get_buffer(f"anchor_{k}")) for k in range(terms)]
        return 0.5 * 3.0 * sum((f * (flat - a).pow(2)).sum() for f, a in pairs)

    expected = direct(3)
    expected_grads = torch.autograd.grad(expected, list(m.parameters()))
    torch.testing.assert_close(value, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)
    plugin.terms = 2  # a changed number of pairs is merged again
    torch.testing.assert_close(plugin.penalty(m), direct(2))


def test_online_ewc_decays_the_accumulated_fisher_over_three_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_fisher(module, batches, mode):
        calls.append(mode)
        value = float(len(calls))  # task t's Fisher: all entries t + 1
        return {n: torch.full_like(p, value) for n, p in module.named_parameters() if p.requires_grad}

    monkeypatch.setattr(ewc_module, "diagonal_fisher", fake_fisher)
    plugin = EWC(online=True, gamma=0.5, fisher="sampled")
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[plugin])
    fit(m, TinyStream(n_tasks=3, num_classes_total=6, batch_size=8))
    assert calls == ["sampled"] * 3 and plugin.terms == 1
    # F = 0.5 * (0.5 * 1 + 2) + 3 = 4.25, anchor = the final weights
    assert torch.all(plugin.fisher_0 == 4.25)
    assert torch.equal(plugin.anchor_0, torch.cat([p.flatten() for p in m.parameters()]).detach())


def test_ewc_composes_with_er_and_survives_a_checkpoint() -> None:
    plugin = EWC(ewc_lambda=10.0)
    m = ER(buffer_size=16, replay_batch_size=4, backbone=MLP(in_features=16, hidden=(8,)), plugins=[plugin])
    fit(m, TinyStream(n_tasks=2, batch_size=8))
    assert plugin.terms == 2 and len(m.buffer) == 16
    fresh = ER(
        buffer_size=16,
        replay_batch_size=4,
        backbone=MLP(in_features=16, hidden=(8,)),
        num_classes=4,
        plugins=[EWC(ewc_lambda=10.0)],
    )
    fresh.load_state_dict(m.state_dict())
    assert fresh.plugins[0].terms == 2 and torch.equal(fresh.plugins[0].fisher_1, plugin.fisher_1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma"):
        EWC(gamma=1.5)
    with pytest.raises(ValueError, match="fisher must be"):
        EWC(fisher="true")

"""DER and DER++: the loss terms recomputed independently, stored logits, independent replay draws."""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F  # noqa: N812

from clfw.backbones import MLP
from clfw.buffers import ReservoirBuffer
from clfw.strategies import DER, DERPP
from tests.helpers import TinyStream, fit


def trained(cls: type[DER], **kwargs: float) -> tuple[DER, TinyStream]:
    torch.manual_seed(0)
    m = cls(backbone=MLP(in_features=16, hidden=(8,)), buffer_size=20, replay_batch_size=5, **kwargs)
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    return m, dm


def test_derpp_loss_is_ce_plus_alpha_mse_on_logits_plus_beta_ce_on_labels() -> None:
    m, dm = trained(DERPP, alpha=0.3, beta=0.7)
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    draws = copy.deepcopy(m.buffer)
    first, second = draws.sample(5), draws.sample(5)  # the two draws training_loss will make, in order
    t = dm.train_transform()
    with torch.no_grad():
        out = m.training_loss(batch)
        seen = torch.tensor([True] * 4)  # class-IL after task 1: classes 0..3
        ce = F.cross_entropy(m(batch.x)[:, seen], batch.y)
        mse = ((m(t(first["x"])) - first["logits"]) ** 2).mean()
        ce_replay = F.cross_entropy(m(t(second["x"])), second["y"])
    assert torch.allclose(out["loss"], ce + 0.3 * mse + 0.7 * ce_replay)
    assert not torch.equal(first["y"], second["y"]) or not torch.equal(first["x"], second["x"])


def test_derpp_single_draw_uses_one_draw_for_both_terms() -> None:
    m, dm = trained(DERPP, alpha=0.3, beta=0.7, single_draw=True)
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    draws = copy.deepcopy(m.buffer)
    drawn = draws.sample(5)
    t = dm.train_transform()
    with torch.no_grad():
        out = m.training_loss(batch)
        seen = torch.tensor([True] * 4)
        ce = F.cross_entropy(m(batch.x)[:, seen], batch.y)
        replayed = m(t(drawn["x"]))
        mse = ((replayed - drawn["logits"]) ** 2).mean()
        ce_replay = F.cross_entropy(replayed, drawn["y"])
    torch.testing.assert_close(out["der"], 0.3 * mse)
    torch.testing.assert_close(out["derpp"], 0.7 * ce_replay)
    torch.testing.assert_close(out["loss"], ce + 0.3 * mse + 0.7 * ce_replay)
    assert int(m.buffer.sample_calls) == int(draws.sample_calls), "one draw per step"


def test_der_alone_has_no_label_term_and_stores_the_logits_seen_at_insertion() -> None:
    m, dm = trained(DER, alpha=0.5)
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    draws = copy.deepcopy(m.buffer)
    first = draws.sample(5)
    with torch.no_grad():
        out = m.training_loss(batch)
        ce = F.cross_entropy(m(batch.x), batch.y)
        mse = ((m(dm.train_transform()(first["x"])) - first["logits"]) ** 2).mean()
    assert torch.allclose(out["loss"], ce + 0.5 * mse)
    m.buffer = ReservoirBuffer(100)
    with torch.no_grad():
        out = m.training_loss(batch)
    assert torch.equal(m.buffer.logits[:8], out["logits"]), "the raw logits of the insertion step"
    assert torch.equal(m.buffer.x[:8], dm.stream.tasks[1].train.x[:8]), "raw uint8 inputs"


def test_derpp_two_replay_minibatches_are_independent_draws() -> None:
    buf = ReservoirBuffer(capacity=20)
    buf.add(id=torch.arange(20))
    overlaps = []
    for _ in range(2000):
        a, b = set(buf.sample(4)["id"].tolist()), set(buf.sample(4)["id"].tolist())
        overlaps.append(len(a & b))
    # independent draws of 4 out of 20 share 4 * 4 / 20 = 0.8 samples on average (hypergeometric, sd 0.69)
    mean = sum(overlaps) / len(overlaps)
    assert abs(mean - 0.8) < 5 * 0.69 / 2000**0.5, mean

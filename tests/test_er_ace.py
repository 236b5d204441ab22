"""ER-ACE: the asymmetric cross-entropy, incoming batch over its present classes only."""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F  # noqa: N812

from clfw.backbones import MLP
from clfw.buffers import ReservoirBuffer
from clfw.data import Batch
from clfw.strategies import ERACE
from tests.helpers import TinyStream, fit


def test_incoming_softmax_over_present_classes_and_replay_over_seen_classes() -> None:
    torch.manual_seed(0)
    m = ERACE(backbone=MLP(in_features=16, hidden=(8,)), buffer_size=20, replay_batch_size=6)
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    data = dm.stream.tasks[1].train
    only_two = torch.nonzero(data.y == 2).flatten()[:5]
    batch = data.batch(only_two, dm.train_transform())
    memory, m.buffer = m.buffer, ReservoirBuffer(20)  # empty: the incoming term alone
    with torch.no_grad():
        assert m.training_loss(batch)["loss"].item() == 0.0, "one present class: a softmax over one logit"
    m.buffer = memory
    mixed = data.batch(torch.arange(0, 48, 6), dm.train_transform())
    assert set(mixed.y.tolist()) == {2, 3}
    draw = copy.deepcopy(m.buffer).sample(6)
    with torch.no_grad():
        out = m.training_loss(mixed)
        incoming = F.cross_entropy(m(mixed.x)[:, 2:4], mixed.y - 2)
        replay = F.cross_entropy(m(dm.train_transform()(draw["x"])), draw["y"])  # classes 0..3 seen
    assert torch.allclose(out["loss"], incoming + replay)
    assert isinstance(mixed, Batch)

"""ER: replay from a reservoir of raw inputs, loss over the joint batch."""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F  # noqa: N812

from clfw.backbones import MLP
from clfw.strategies import ER, Naive
from tests.helpers import TinyStream, fit


def test_er_replays_raw_inputs_of_earlier_tasks_and_keeps_them() -> None:
    results = {}
    for cls in (Naive, ER):
        torch.manual_seed(0)
        kwargs = {"buffer_size": 40, "replay_batch_size": 8} if cls is ER else {}
        m = cls(backbone=MLP(in_features=16, hidden=(16,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)
        dm = TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)
        _, matrix = fit(m, dm)
        results[cls] = (m, dm, matrix)
    m, dm, matrix = results[ER]
    assert len(m.buffer) == 40 and int(m.buffer.seen) == 2 * 2 * 48
    assert m.buffer.x.dtype == torch.uint8 and set(m.buffer.task.tolist()) == {0, 1}
    raw = {tuple(v.flatten().tolist()) for t in dm.stream.tasks for v in t.train.x}
    assert all(tuple(v.flatten().tolist()) in raw for v in m.buffer.x), "the memory holds untransformed stream inputs"
    assert matrix.rows[-1][0] > results[Naive][2].rows[-1][0] + 0.3, "replay keeps task 0 where fine-tuning loses it"


def test_er_loss_is_cross_entropy_over_current_and_replayed_samples() -> None:
    m = ER(buffer_size=20, replay_batch_size=5, backbone=MLP(in_features=16, hidden=(8,)))
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    expected_memory = copy.deepcopy(m.buffer).sample(5)  # the draw training_loss will make
    with torch.no_grad():
        out = m.training_loss(batch)
        x = torch.cat([batch.x, dm.train_transform()(expected_memory["x"])])
        y = torch.cat([batch.y, expected_memory["y"]])
        task = torch.cat([batch.task, expected_memory["task"]])
        expected = F.cross_entropy(m.masked(m(x), task), y)
    assert torch.allclose(out["loss"], expected)
    assert int(m.buffer.seen) == 2 * 48 + 8, "the current batch was offered to the memory"

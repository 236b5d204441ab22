"""ER-AML: positives and negatives drawn as defined, and the loss of a batch equal to the formula (itself doctested on
a hand-computed value) on the batch's own features."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from clfw import Batch
from clfw.backbones import MLP
from clfw.strategies import ERAML
from tests.helpers import TinyStream, fit


def _fitted() -> ERAML:
    torch.manual_seed(0)
    model = ERAML(buffer_size=24, replay_batch_size=4, backbone=MLP(in_features=16, hidden=(8,)),
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip
    fit(model, TinyStream(n_tasks=3, num_classes_total=6, batch_size=8))
    return model


def test_pairs_and_loss_of_a_batch() -> None:
    model = _fitted()
    n = len(model.buffer)
    stored_y, stored_task = model.buffer.y[:n], model.buffer.task[:n]
    y, task = torch.tensor([0, 4, 5, 3]), torch.tensor([0, 2, 2, 1])
    pos, neg = model.draw_pairs(y, task)
    for i in range(4):
        if bool((stored_y == y[i]).any()):
            assert stored_y[pos[i]] == y[i]
        else:
            assert pos[i] == -1
        assert stored_y[neg[i]] != y[i]
        if bool(((stored_y != y[i]) & (stored_task == task[i])).any()):
            assert stored_task[neg[i]] == task[i], "a negative of the same task when one is stored"
    batch = Batch(torch.rand(4, 1, 4, 4) * 255, y, task, torch.arange(4))
    memory = {"x": model.buffer.x[:4], "y": stored_y[:4], "task": stored_task[:4]}
    model.draw_replay = lambda b: memory  # type: ignore[method-assign]
    model.eval()
    out = model.training_loss(batch)
    replay_ce = F.cross_entropy(model.masked(model(model.replay_inputs(memory["x"])), memory["task"]), memory["y"])
    stored_x = model.buffer.x[:n]
    z_in = F.normalize(model.features(batch.x), dim=1)
    z_pos = F.normalize(model.features(model.replay_inputs(stored_x[pos.clamp_min(0)])), dim=1)
    z_pos = torch.where((pos >= 0)[:, None], z_pos, z_in)
    z_neg = F.normalize(model.features(model.replay_inputs(stored_x[neg])), dim=1)
    aml = ERAML.supcon(
        z_in.repeat(2, 1), y.repeat(2), torch.cat([z_pos, z_neg]), torch.cat([y, stored_y[neg]]), 0.1, 0.07
    )
    assert torch.allclose(out["aml"], aml, atol=1e-5) and torch.allclose(out["loss"], aml + replay_ce, atol=1e-5)


def test_bad_temperatures() -> None:
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        ERAML(temperature=0.0)

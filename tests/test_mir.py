"""MIR: the interference scores equal a hand-made virtual SGD step's loss increases, and the replayed samples are the
candidates with the largest ones."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from clfw import Batch
from clfw.backbones import MLP
from clfw.strategies import MIR
from tests.helpers import TinyStream, fit


def _model() -> MIR:
    torch.manual_seed(0)
    return MIR(buffer_size=40, replay_batch_size=3, subsample=8, backbone=MLP(in_features=16, hidden=(8,)),
               optimizer=lambda p: torch.optim.SGD(p, lr=0.5))  # fmt: skip


def test_interference_is_the_loss_increase_after_a_virtual_sgd_step() -> None:
    model = _model()
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 4, 4, generator=g)
    batch = Batch(x, torch.tensor([2, 3, 2, 3, 2, 3]), torch.ones(6, dtype=torch.long), torch.arange(6))
    candidates = model.buffer.sample(8)
    scores = model.interference(batch, candidates, lr=0.5)
    # by hand: a copy takes one SGD step on the batch's masked cross-entropy
    twin = copy.deepcopy(model)
    x, y, task = model.replay_inputs(candidates["x"]), candidates["y"], candidates["task"]
    model.eval(), twin.eval()
    with torch.no_grad():
        before = F.cross_entropy(model.masked(model(x), task), y, reduction="none")
    twin.train()
    opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.5)
    F.cross_entropy(twin.masked(twin(batch.x), batch.task), batch.y).backward()
    opt.step()
    twin.eval()
    with torch.no_grad():
        after = F.cross_entropy(twin.masked(twin(x), task), y, reduction="none")
    assert torch.allclose(scores, after - before, atol=1e-5)
    assert (scores != 0).any()


def test_replayed_samples_are_the_most_interfered_candidates() -> None:
    model = _model()
    picks = []
    interference = model.interference

    def spy(batch, candidates, lr):
        scores = interference(batch, candidates, lr)
        picks.append((candidates["y"].clone(), scores.clone(), lr))
        return scores

    model.interference = spy  # type: ignore[method-assign]
    chosen = []
    draw = model.draw_replay
    model.draw_replay = lambda batch: chosen.append(draw(batch)) or chosen[-1]  # type: ignore[method-assign]
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8))
    assert picks and all(lr == 0.5 for _, _, lr in picks)
    for (ys, scores, _), memory in zip(picks, chosen, strict=True):
        top = scores.topk(min(3, len(ys))).indices
        assert memory["y"].tolist() == ys[top].tolist()


def test_subsample_smaller_than_the_replay_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="subsample must be >= replay_batch_size"):
        MIR(replay_batch_size=10, subsample=5)

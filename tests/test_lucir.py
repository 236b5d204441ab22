"""LUCIR: the loss terms of a training batch equal the formulas on the batch's own features (the formulas themselves
are doctested on hand-computed values), cosine logits, imprinted new-class weights."""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from clfw import Batch
from clfw.backbones import MLP
from clfw.strategies import LUCIR
from tests.helpers import TinyStream, fit


def _fitted() -> LUCIR:
    torch.manual_seed(0)
    model = LUCIR(buffer_size=20, replay_batch_size=6, backbone=MLP(in_features=16, hidden=(8,)),
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.2))  # fmt: skip
    fit(model, TinyStream(n_tasks=3, num_classes_total=6, batch_size=8))
    return model


def test_terms_of_a_batch_and_cosine_logits() -> None:
    model = _fitted()
    assert model.teacher is not None
    model.current_task = 2  # as during task 2: classes 0-3 old, 4-5 new
    g = torch.Generator().manual_seed(3)
    batch = Batch(
        torch.randn(4, 1, 4, 4, generator=g), torch.tensor([4, 5, 4, 5]), torch.full((4,), 2), torch.arange(4)
    )
    memory = {"x": model.buffer.x[:6], "y": model.buffer.y[:6], "task": model.buffer.task[:6]}
    model.draw_replay = lambda b: memory  # type: ignore[method-assign]
    model.eval()  # no dropout/batch statistics: the features below are the loss's
    out = model.training_loss(batch)
    x = torch.cat([batch.x, model.replay_inputs(memory["x"])])
    y = torch.cat([batch.y, memory["y"]])
    f = model.features(x)
    with torch.no_grad():
        f_old = model.teacher.features(x)
    cos = F.normalize(f, dim=1) @ F.normalize(model.head.weight, dim=1).T
    assert torch.allclose(model(x), model.scale * cos)
    expected_lf = 5.0 * (4 / 2) ** 0.5 * (1 - F.cosine_similarity(f_old, f, dim=1)).mean()
    assert torch.allclose(out["less_forget"], expected_lf, atol=1e-6)
    old = y < 4
    assert bool(old.any())
    pairs = [F.relu(0.5 - cos[i, y[i]] + v) for i in old.nonzero().flatten() for v in cos[i, 4:6].topk(2).values]
    assert torch.allclose(out["margin_ranking"], torch.stack(pairs).mean(), atol=1e-6)


def test_new_class_weights_are_imprinted_at_the_task_start() -> None:
    recorded = {}
    torch.manual_seed(0)
    model = LUCIR(buffer_size=20, replay_batch_size=6, backbone=MLP(in_features=16, hidden=(8,)),
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.2))  # fmt: skip
    start = model.on_task_start

    def spy(task: int) -> None:
        start(task)
        recorded[task] = model.head.weight.detach().clone()

    model.on_task_start = spy  # type: ignore[method-assign]
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8))
    w = recorded[1]
    assert torch.allclose(w[2:].norm(dim=1), torch.ones(2)), "unit vectors: normalised class means"
    assert not torch.allclose(w[:2].norm(dim=1), torch.ones(2)), "old classes untouched"

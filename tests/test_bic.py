"""BiC's bias correction: the two parameters against their closed form, the held-out samples, the prediction."""

from __future__ import annotations

import math

import pytest
import torch

from clfw.backbones import MLP
from clfw.buffers import replay_memory
from clfw.strategies import ER, BiasCorrection, Naive
from tests.helpers import TinyStream, fit


def test_fit_equals_the_closed_form() -> None:
    """Old class 0 (logit 0), new class 1 (logit o), an unseen class 2: P(new) = sigmoid(alpha o + beta). With o = 1
    for four samples of which one is new and o = 2 for four of which three are, the maximum-likelihood fit is exact:
    alpha + beta = logit(1/4) = -ln 3 and 2 alpha + beta = logit(3/4) = ln 3, so alpha = 2 ln 3, beta = -3 ln 3."""
    o = torch.tensor([1.0] * 4 + [2.0] * 4)
    logits = torch.stack([torch.zeros(8), o, torch.full((8,), float("-inf"))], 1)
    y = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0])
    alpha, beta = BiasCorrection.fit(logits, y, torch.tensor([1]))
    assert alpha == pytest.approx(2 * math.log(3), abs=1e-6) and beta == pytest.approx(-3 * math.log(3), abs=1e-6)


def test_fitted_on_held_out_samples_and_applied_to_the_new_classes() -> None:
    torch.manual_seed(0)
    bic = BiasCorrection(val_per_class=3)
    model = ER(buffer_size=12, replay_batch_size=4, backbone=MLP(in_features=16, hidden=(8,)),
               optimizer=lambda p: torch.optim.SGD(p, lr=0.3), plugins=[bic])  # fmt: skip
    stream = TinyStream(n_tasks=2, num_classes_total=4, batch_size=8, val_fraction=0.25)
    fit(model, stream)
    assert replay_memory(model, "test") is model.buffer, "the held-out samples are never replayed"
    val = stream.stream.tasks[0].val
    held = [x for x in bic.memory.x[: len(bic.memory)]]
    assert len(held) == 4 * 3 and all(any(torch.equal(h, v) for v in val.x) or any(
        torch.equal(h, v) for v in stream.stream.tasks[1].val.x) for h in held)  # fmt: skip
    alpha, beta = bic.pairs[1].tolist()
    assert (alpha, beta) != (1.0, 0.0) and bic.pairs[0].tolist() == [1.0, 0.0]
    model.eval()
    x, t = torch.randn(5, 1, 4, 4), torch.ones(5, dtype=torch.long)
    raw = model.predict(x, t)
    scores = model.class_scores(x, t)
    assert torch.allclose(scores[:, 2:], alpha * raw[:, 2:] + beta) and torch.equal(scores[:, :2], raw[:, :2])


def test_without_a_validation_split_it_is_refused() -> None:
    model = Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[BiasCorrection()])
    with pytest.raises(ValueError, match="val_fraction > 0"):
        fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8))

"""SLCA: the slow backbone learning rate, each task's loss over its own classes, class statistics against an
independent computation, and the aligned head on the class means."""

from __future__ import annotations

import torch

from clfw.backbones import MLP
from clfw.strategies import SLCA
from tests.helpers import TinyStream, fit


def _fitted(**kwargs) -> tuple[SLCA, TinyStream]:
    torch.manual_seed(0)
    model = SLCA(backbone=MLP(in_features=16, hidden=(6,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
                 samples_per_class=32, **kwargs)  # fmt: skip
    stream = TinyStream(n_tasks=2, num_classes_total=4, batch_size=8)
    fit(model, stream)
    return model, stream


def test_backbone_learns_slowly_and_statistics_are_the_class_moments() -> None:
    model, stream = _fitted()
    optimizer = model.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == [0.5 * 0.01, 0.5]
    model.eval()
    mean, cov = model.statistics()
    with torch.no_grad():
        for t in range(2):
            data = stream.stream.tasks[t].train
            b = data.batch(torch.arange(len(data)), stream.eval_transform())
            f = model.features(b.x).double()  # the backbone changed after task 0: only task 1's classes are exact
            for c in b.y.unique().tolist():
                if t == 1:
                    assert torch.allclose(mean[c], f[b.y == c].mean(0), atol=1e-8)
                    assert torch.allclose(cov[c], torch.cov(f[b.y == c].T), atol=1e-8)
    assert model.feature_counts.tolist() == [24.0] * 4


def test_classifier_alignment_separates_the_class_means() -> None:
    model, _ = _fitted(ca_epochs=10)
    mean, _ = model.statistics()
    with torch.no_grad():
        predicted = model.head(mean.float()).argmax(1)
    assert predicted.tolist() == [0, 1, 2, 3]

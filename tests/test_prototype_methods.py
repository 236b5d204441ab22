"""SimpleCIL and APER: prototypes equal the class means of the features, computed here independently; cosine scores;
APER's features are the untouched pretrained copy's beside the adapted backbone's."""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from clfw.backbones import MLP
from clfw.strategies import APER, SimpleCIL
from tests.helpers import TinyStream, fit


def _class_means(model, features_of, tasks) -> tuple[torch.Tensor, torch.Tensor]:
    dm, k = model.datamodule, model.stream.num_classes
    sums, counts = None, torch.zeros(k)
    with torch.no_grad():
        for t in tasks:
            data = dm.stream.tasks[t].train
            batch = data.batch(torch.arange(len(data)), dm.eval_transform())
            f = features_of(batch.x).double()
            sums = torch.zeros(k, f.shape[1], dtype=torch.float64) if sums is None else sums
            for c in batch.y.unique().tolist():
                sums[c] += f[batch.y == c].sum(0)
                counts[c] += int((batch.y == c).sum())
    return sums / counts.clamp_min(1)[:, None], counts


def _trained(cls: type, lr: float) -> tuple:
    """A ``cls`` fitted on 2 tasks of 2 classes, and its backbone's weights before training."""
    torch.manual_seed(0)
    backbone = MLP(in_features=16, hidden=(12,))
    start = {k: v.clone() for k, v in backbone.state_dict().items()}
    # momentum and weight decay would move a frozen network that only got zero gradients
    model = cls(backbone=backbone, optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.1))
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8))
    return model, start


def test_simplecil_prototypes_are_class_means_and_scores_are_cosines() -> None:
    model, start = _trained(SimpleCIL, 0.1)
    assert all(torch.equal(start[k], v) for k, v in model.backbone.state_dict().items()), "never trained"
    model.eval()
    means, counts = _class_means(model, model.backbone, range(2))
    assert torch.allclose(model.prototypes().double(), means.float().double(), atol=1e-5)
    assert model.class_counts.tolist() == counts.tolist() == [24.0] * 4
    x = torch.randn(5, 1, 4, 4)
    expected = F.normalize(model.backbone(x), dim=1) @ F.normalize(means.float(), dim=1).T
    assert torch.allclose(model.class_scores(x, torch.ones(5, dtype=torch.long)), expected, atol=1e-5)


def test_domain_il_prototypes_average_every_domain() -> None:
    torch.manual_seed(0)
    model = SimpleCIL(backbone=MLP(in_features=16, hidden=(12,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    fit(model, TinyStream(n_tasks=2, num_classes_total=2, batch_size=8, scenario="domain"))
    model.eval()
    means, _ = _class_means(model, model.backbone, range(2))
    assert model.class_counts.tolist() == [48.0, 48.0]
    assert torch.allclose(model.prototypes().double(), means, atol=1e-5)


def test_aper_adapts_on_the_first_task_and_concatenates_the_pretrained_features() -> None:
    model, pretrained = _trained(APER, 0.2)
    assert all(torch.equal(pretrained[k], v) for k, v in model.pretrained.state_dict().items()), "the copy is as before"
    assert any(not torch.equal(pretrained[k], v) for k, v in model.backbone.state_dict().items()), "adapted"
    model.eval()
    x = torch.randn(3, 1, 4, 4)
    f = model.frozen_features(x)
    assert (
        f.shape == (3, 24)
        and torch.allclose(f[:, :12], model.pretrained(x))
        and torch.allclose(f[:, 12:], model.backbone(x))
    )
    means, _ = _class_means(model, model.frozen_features, range(2))  # the adapted backbone is frozen after task 0
    assert torch.allclose(model.prototypes().double(), means.float().double(), atol=1e-5)

"""RanPAC: its ridge classifier equals scikit-learn's Ridge on the same projected features, with the ridge chosen by
held-out error as a brute-force search with scikit-learn chooses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from clfw import ContinualCallback
from clfw.backbones import MLP
from clfw.evaluation import eval_mode
from clfw.strategies import RanPAC
from clfw.strategies.ranpac import RIDGES
from tests.helpers import TinyStream, fit


def _features(model: RanPAC, tasks: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hs, ys, val = [], [], []
    with eval_mode(model), torch.no_grad():
        for t in tasks:
            for batch in model.datamodule.task_loader(t):
                hs.append(model.projected(batch.x).double())
                ys.append(batch.y)
                val.append(batch.index % 5 == 4)
    y = torch.nn.functional.one_hot(torch.cat(ys), model.stream.num_classes).double()
    return torch.cat(hs).numpy(), y.numpy(), torch.cat(val).numpy()


@pytest.mark.parametrize("scenario", ["class", "domain"])
def test_ridge_classifier_equals_sklearn_ridge(scenario: str) -> None:
    torch.manual_seed(0)
    backbone = MLP(in_features=16, hidden=(12,)).requires_grad_(False)  # a "pretrained", frozen feature extractor
    model = RanPAC(projection_dim=24, adapt_first_task=False, backbone=backbone,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, scenario=scenario, batch_size=8))
    h, y, val = _features(model, range(2))
    errors = []
    for alpha in RIDGES:  # the held-out fifth chooses the ridge
        pred = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky").fit(h[~val], y[~val]).predict(h[val])
        errors.append(((pred - y[val]) ** 2).sum())
    chosen = RIDGES[int(np.argmin(errors))]
    assert float(model.ridge) == chosen
    expected = Ridge(alpha=chosen, fit_intercept=False, solver="cholesky").fit(h, y).coef_.T
    np.testing.assert_allclose(model.ridge_weights.double().numpy(), expected, rtol=1e-4, atol=1e-6)
    # and it predicts h W_o (seen classes only in class-IL)
    x = model.datamodule.task_loader(1, "test").data.batch(torch.arange(4), model.datamodule.eval_transform())
    scores = model.class_scores(x.x, x.task)
    assert torch.allclose(scores[:, :4], (model.projected(x.x) @ model.ridge_weights)[:, :4], atol=1e-5)


def test_first_task_adapts_then_the_backbone_is_frozen() -> None:
    torch.manual_seed(0)
    model = RanPAC(projection_dim=16, backbone=MLP(in_features=16, hidden=(12,)),
                   optimizer=lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1))  # fmt: skip
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    seen = []
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8),
        callbacks=[_Track(seen)])  # fmt: skip
    after0 = seen[0]
    assert any(not torch.equal(start[k], after0[k]) for k in start), "the first task trains the backbone"
    assert all(torch.equal(after0[k], v) for k, v in model.backbone.state_dict().items()), "then it is frozen"


class _Track(ContinualCallback):
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def on_task_end(self, trainer, module, task: int) -> None:
        self.seen.append({k: v.clone() for k, v in module.backbone.state_dict().items()})


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="projection_dim must be >= 1"):
        RanPAC(projection_dim=0)

"""WeightAligning: the new classes' head rows rescaled to the old classes' mean norm at each task end."""

from __future__ import annotations

from typing import Any

import torch

from clfw import ContinualCallback
from clfw.backbones import MLP
from clfw.strategies import LwF, Naive, WeightAligning
from tests.helpers import TinyStream, fit


class Norms(ContinualCallback):
    """Records the head's row norms when each task ends (callbacks run after the strategy's and plugins' hooks)."""

    def __init__(self) -> None:
        self.norms: dict[int, torch.Tensor] = {}

    def on_task_end(self, trainer: Any, module: Any, task: int) -> None:
        self.norms[task] = module.head.weight.detach().norm(dim=1).clone()


def test_new_rows_end_each_task_with_the_old_rows_mean_norm_and_the_teacher_is_aligned() -> None:
    torch.manual_seed(0)
    lwf = LwF(alpha=2.0, temperature=2.0)
    model = Naive(backbone=MLP(in_features=16, hidden=(16,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.3),
                  plugins=[WeightAligning(), lwf])  # fmt: skip
    norms = Norms()
    fit(model, TinyStream(n_tasks=3, num_classes_total=6, batch_size=8), callbacks=[norms])
    for task in (1, 2):
        old, new = norms.norms[task][: 2 * task], norms.norms[task][2 * task : 2 * task + 2]
        assert torch.allclose(old.mean(), new.mean(), rtol=1e-5), (task, old, new)
    # listed before LwF, so the teacher frozen at the task end is the aligned model
    assert torch.equal(lwf.teacher.head.weight, model.head.weight)


def test_without_new_classes_nothing_changes() -> None:
    torch.manual_seed(0)
    model = Naive(backbone=MLP(in_features=16, hidden=(16,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.3),
                  plugins=[WeightAligning()])  # fmt: skip
    norms = Norms()
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8, scenario="domain"), callbacks=[norms])
    assert not torch.allclose(norms.norms[1][:2].mean(), norms.norms[1][2:].mean())  # left as trained

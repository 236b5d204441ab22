"""A-GEM: the projection by hand, no change without conflict, and the SGD step equal to -lr times the projection."""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.backbones import MLP
from clfw.strategies import AGEM
from tests.helpers import TinyStream, fit


def test_projection_on_a_hand_worked_case() -> None:
    g, g_ref = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1.0, -1.0, 2.0])
    # g . g_ref = -1 < 0, g_ref . g_ref = 6: g - (-1 / 6) g_ref = [7/6, 11/6, 1/3]
    projected = AGEM.project(g, g_ref)
    assert torch.allclose(projected, torch.tensor([7 / 6, 11 / 6, 1 / 3]))
    assert abs(torch.dot(projected, g_ref).item()) < 1e-6
    no_conflict = torch.tensor([1.0, 0.0, 1.0])
    assert AGEM.project(no_conflict, g_ref) is no_conflict


class RecordSteps(pl.Callback):
    """Records, for each optimizer step of the last task, the weights, the raw gradient and an independent g_ref."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, module: AGEM, optimizer: Any) -> None:
        if module.current_task < 1:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        memory = copy.deepcopy(module.buffer).sample(module.sample_size)  # the draw A-GEM is about to make
        twin = copy.deepcopy(module)
        with torch.enable_grad():
            x = trainer.datamodule.train_transform()(memory["x"])
            loss = F.cross_entropy(twin.masked(twin(x), memory["task"]), memory["y"])
            ref = torch.autograd.grad(loss, [p for p in twin.parameters() if p.requires_grad])
        self.steps.append(
            {
                "theta": torch.cat([p.detach().flatten() for p in params]).clone(),
                "g": torch.cat([p.grad.flatten() for p in params]).clone(),
                "g_ref": torch.cat([r.flatten() for r in ref]),
            }
        )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, module: AGEM, *args: Any) -> None:
        if self.steps and "after" not in self.steps[-1]:
            self.steps[-1]["after"] = torch.cat([p.detach().flatten() for p in module.parameters() if p.requires_grad])


def test_one_sgd_step_moves_the_weights_by_minus_lr_times_the_projected_gradient() -> None:
    torch.manual_seed(0)
    lr = 0.1
    m = AGEM(
        backbone=MLP(in_features=16, hidden=(8,)),
        buffer_size=20,
        sample_size=8,
        optimizer=lambda p: torch.optim.SGD(p, lr),
    )
    rec = RecordSteps()
    fit(m, TinyStream(n_tasks=2, batch_size=8), callbacks=[rec])
    assert len(m.buffer) == 20 and set(m.buffer.task.tolist()) == {0, 1}, "buffer_size // n_tasks per task"
    conflicts = 0
    for step in rec.steps:
        dot = torch.dot(step["g"], step["g_ref"])
        expected = step["g"] - (dot / step["g_ref"].dot(step["g_ref"])) * step["g_ref"] if dot < 0 else step["g"]
        conflicts += int(dot < 0)
        assert torch.allclose(step["after"] - step["theta"], -lr * expected, atol=1e-6)
    assert len(rec.steps) == 6 and 0 < conflicts, "some steps needed the projection"

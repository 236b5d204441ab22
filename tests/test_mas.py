"""MAS: the output sensitivity against a per-sample loop, the penalty, and the importance summed over tasks."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw import Batch, ContinualCallback, ContinualModule
from clfw.backbones import MLP, SmallCNN
from clfw.data import ScenarioName
from clfw.fisher import output_sensitivity
from clfw.strategies import Naive
from clfw.strategies.mas import MAS
from tests.helpers import TinyStream, fit


def loop_sensitivity(m: ContinualModule, batches: list[Batch]) -> dict[str, Tensor]:
    """(1/N) sum_k |d ||masked logits(x_k)||^2 / d theta|, one backward pass per sample, in eval mode."""
    total = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    count, was_training = 0, m.training
    m.eval()
    with torch.enable_grad():
        for b in batches:
            for k in range(len(b.y)):
                m.zero_grad()
                out = m(b.x[k : k + 1])
                mask = m.class_mask(b.task[k : k + 1])
                if mask is not None:
                    out = torch.where(mask, out, torch.zeros_like(out))
                out.pow(2).sum().backward()
                for n, p in m.named_parameters():
                    total[n] += p.grad.abs()
                count += 1
    m.zero_grad()
    m.train(was_training)
    return {n: t / count for n, t in total.items()}


@pytest.mark.parametrize(
    ("backbone", "scenario", "task"),
    [
        (MLP(in_features=16, hidden=(8,)), "class", 0),
        (SmallCNN(in_channels=1, channels=(4,)), "class", 0),
        (MLP(in_features=16, hidden=(8,)), "task", 1),
        (MLP(in_features=16, hidden=(8,)), "domain", 1),
    ],
)
def test_output_sensitivity_equals_a_per_sample_loop(
    backbone: torch.nn.Module, scenario: ScenarioName, task: int
) -> None:
    torch.manual_seed(0)
    dm = TinyStream(n_tasks=2, scenario=scenario, eval_batch_size=7)
    m = Naive(backbone=backbone)
    m.attach_stream(dm)
    m.double()
    m.current_task = 0
    m._update_seen_mask()  # class-IL after task 0: classes 0 and 1; task-IL: the sample's task; domain-IL: all
    batches = [b._replace(x=b.x.double()) for b in dm.task_loader(task, "test")]
    sensitivity = output_sensitivity(m, batches, chunk_size=3)
    expected = loop_sensitivity(m, batches)
    assert sensitivity.keys() == expected.keys()
    for n in sensitivity:
        torch.testing.assert_close(sensitivity[n], expected[n], rtol=1e-9, atol=1e-12)
    masked_out = {"class": [2, 3], "task": [0, 1], "domain": []}[scenario]  # class-IL: unseen; task-IL: other task's
    assert torch.all(sensitivity["head.bias"][masked_out] == 0), "masked units contribute nothing"
    assert torch.all(torch.tensor([i not in masked_out for i in range(4)]) == (sensitivity["head.bias"] > 0))


class RecordImportance(ContinualCallback):
    """At each task end (after the plugin's): the loop sensitivity on the task's training data, the plugin's state."""

    def __init__(self, plugin: MAS) -> None:
        self.plugin = plugin
        self.expected: list[Tensor] = []
        self.importance: list[Tensor] = []

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        loop = loop_sensitivity(module, list(module.datamodule.task_loader(task, "train")))
        self.expected.append(torch.cat([loop[n].flatten() for n, _ in module.named_parameters()]))
        self.importance.append(self.plugin.importance.clone())


def test_importance_is_summed_over_tasks_and_the_penalty_is_the_papers() -> None:
    torch.manual_seed(0)
    plugin = MAS(mas_lambda=3.0)
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[plugin])
    recorder = RecordImportance(plugin)
    trainer, _ = fit(m, TinyStream(n_tasks=2, batch_size=8), callbacks=[recorder])
    e0, e1 = recorder.expected
    torch.testing.assert_close(recorder.importance[0], e0)
    torch.testing.assert_close(recorder.importance[1], e0 + e1)
    assert plugin.tasks == 2 and "train/mas" in trainer.callback_metrics
    assert plugin.penalty(m) == 0, "right after a task end theta is the anchor"
    # a perturbed model: lambda sum_i Omega_i (theta_i - theta*_i)^2, parameter by parameter
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    expected, offset = torch.zeros(()), 0
    for n, p in m.named_parameters():
        omega = plugin.importance[offset : offset + p.numel()].view_as(p)
        expected = expected + (omega * (p.detach() - before[n]) ** 2).sum()
        offset += p.numel()
    torch.testing.assert_close(plugin.penalty(m), 3.0 * expected)
    assert MAS().loss_terms(m, None, {}) == {}, "no term before a task has ended"
    fresh = Naive(backbone=MLP(in_features=16, hidden=(8,)), num_classes=4, plugins=[MAS(mas_lambda=3.0)])
    fresh.load_state_dict(m.state_dict())  # the buffers are sized from the state dict
    assert fresh.plugins[0].tasks == 2 and torch.equal(fresh.plugins[0].importance, plugin.importance)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mas_lambda must be >= 0, got -1"):
        MAS(mas_lambda=-1.0)
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)))
    m.attach_stream(TinyStream())
    with pytest.raises(ValueError, match="output sensitivity needs at least one sample"):
        output_sensitivity(m, [])
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        output_sensitivity(m, [], chunk_size=0)

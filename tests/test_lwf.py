"""LwF: distillation from the frozen previous model on the old classes, computed independently."""

from __future__ import annotations

import pytest
import torch

from clfw.backbones import MLP
from clfw.strategies import ER, LwF, Naive
from tests.helpers import TinyStream, fit


def test_distillation_term_matches_the_paper_formula() -> None:
    plugin = LwF(alpha=0.7, temperature=2.0)
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[plugin])
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    teacher = plugin.teacher
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    # the teacher is the model frozen at the end of task 1 (the last task)
    assert torch.equal(teacher.head.weight, m.head.weight)
    with torch.no_grad():
        m.head.weight.add_(0.3 * torch.randn_like(m.head.weight))  # make the student differ from the teacher
    m.current_task = 1  # training task 1: the old classes are task 0's, 0 and 1
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    with torch.no_grad():
        student = m(batch.x)
        term = plugin.loss_terms(m, batch, {"loss": torch.tensor(0.0), "logits": student})["lwf"]
        t_logits = teacher(batch.x)[:, :2]
        expected = -(torch.softmax(t_logits / 2, 1) * torch.log_softmax(student[:, :2] / 2, 1)).sum(1).mean() * 0.7
    torch.testing.assert_close(term, expected)
    balanced = LwF(alpha=0.7, temperature=2.0, weighting="balanced")
    balanced.teacher = teacher
    with torch.no_grad():  # the 2nd task: (t - 1) T^2 = 4
        term = balanced.loss_terms(m, batch, {"loss": torch.tensor(0.0), "logits": student})["lwf"]
    torch.testing.assert_close(term, expected * 4)


def test_gradient_pulls_the_student_towards_the_teacher_only_on_old_classes() -> None:
    plugin = LwF()
    m = Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[plugin])
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    m.current_task = 1
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    m.zero_grad()
    plugin.loss_terms(m, batch, {"loss": torch.tensor(0.0), "logits": m(batch.x)})["lwf"].backward()
    assert m.head.weight.grad[2:].abs().max() == 0 and m.head.weight.grad[:2].abs().max() > 0


def test_lwf_composes_with_er_and_its_teacher_survives_a_checkpoint() -> None:
    m = ER(buffer_size=16, replay_batch_size=4, backbone=MLP(in_features=16, hidden=(8,)), plugins=[LwF()])
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    fresh = ER(buffer_size=16, replay_batch_size=4, backbone=MLP(in_features=16, hidden=(8,)), plugins=[LwF()])
    fresh.attach_stream(dm)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.plugins[0].teacher.head.weight, m.plugins[0].teacher.head.weight)
    with pytest.raises(RuntimeError, match="once attached"):
        Naive(backbone=MLP(in_features=16, hidden=(8,)), num_classes=4, plugins=[LwF()]).load_state_dict(
            Naive(backbone=MLP(in_features=16, hidden=(8,)), num_classes=4, plugins=[m.plugins[0]]).state_dict()
        )


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        LwF(temperature=0)
    with pytest.raises(ValueError, match="weighting"):
        LwF(weighting="even")  # type: ignore[arg-type]

"""``ContinualModule.copy_model``: a copy that predicts exactly as the module, for every strategy, and its users (LwF's
and iCaRL's teachers, GDumb's model retrained from scratch)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

import clfw.strategies
from clfw import ContinualModule
from clfw.buffers import Memory
from clfw.testing.checks import needs_validation
from tests.helpers import TinyStream
from tests.test_contract import NAMES, make


def attached(name: str, monkeypatch: pytest.MonkeyPatch, task: int = 1) -> tuple[ContinualModule, TinyStream]:
    """``make(name)`` on a 2-task TinyStream, inside ``task`` (masks set, CODA's components drawn), without a Trainer.

    ``datamodule`` (the Trainer's, in a fit) is the stream itself here.
    """
    torch.manual_seed(0)
    m = make(name)
    dm = TinyStream(n_tasks=2, batch_size=8, val_fraction=0.2 if needs_validation(m) else 0.0)
    monkeypatch.setattr(ContinualModule, "datamodule", property(lambda self: dm))
    m.attach_stream(dm)
    for t in range(task + 1):
        m.current_task, m.task_ended = t, False
        m._update_seen_mask()
        m.on_task_start(t)
    return m, dm


def inputs(dm: TinyStream) -> Tensor:
    """Test inputs of both tasks, as evaluators see them."""
    return torch.cat([dm.stream.tasks[t].test.batch(torch.arange(20), dm.eval_transform()).x for t in range(2)])


def storages(module: torch.nn.Module) -> set[int]:
    """Addresses of the memory behind every non-empty parameter and buffer of ``module``."""
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()] if t.numel()}


@pytest.mark.parametrize("name", NAMES)
def test_the_copy_predicts_exactly_as_the_module_and_shares_no_storage(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m, dm = attached(name, monkeypatch)
    x = inputs(dm)
    teacher = m.copy_model(frozen=True)
    m.eval()
    teacher.eval()
    with torch.no_grad():
        before = m(x)
        torch.testing.assert_close(teacher(x), before, rtol=0, atol=0)
    assert type(teacher) is type(m) and teacher is not m
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not storages(teacher) & storages(m), "the copy shares tensors with the module"
    assert len(teacher.plugins) == 0 and not any(isinstance(s, Memory) for s in teacher.modules())
    assert teacher._trainer is None and teacher.stream is m.stream, "the stream is shared, not copied"

    # one optimizer step on every parameter of the module (frozen ones included) moves the module, not the copy
    m.train()
    params = list(m.parameters())
    for p in params:
        p.requires_grad_(True)
    y = torch.arange(len(x)) % 4
    F.cross_entropy(m(x), y).backward()
    torch.optim.SGD(params, lr=0.5).step()
    m.eval()
    with torch.no_grad():
        assert not torch.equal(m(x), before), "the step must change the module's predictions"
        assert torch.equal(teacher(x), before), "the copy changed with the module"
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_lwf_distills_the_models_own_predictions(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after LwF takes its teacher, the distillation targets are the model's own tempered softmax.

    The targets are read back from the term's gradient: for ``-mean_b sum_c t_bc log softmax(s_b / T)_c``, the
    gradient in the student logits ``s`` is ``(softmax(s / T) - t) / (T B)``. A teacher made of the backbone and head
    alone misses the prompts of L2P, DualPrompt and CODA-Prompt.
    """
    torch.manual_seed(0)
    lwf = clfw.strategies.LwF(alpha=1.0, temperature=2.0)
    m = make(name)
    dm = TinyStream(n_tasks=2, batch_size=8, val_fraction=0.2 if needs_validation(m) else 0.0)
    m.plugins.append(lwf)
    monkeypatch.setattr(ContinualModule, "datamodule", property(lambda self: dm))
    m.attach_stream(dm)
    m.current_task, m.task_ended = 0, False
    m._update_seen_mask()
    m.on_task_start(0)
    lwf.on_task_end(m, 0)
    m.current_task = 1  # training task 1: task 0's classes 0 and 1 are distilled
    m._update_seen_mask()
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    m.eval()
    with torch.no_grad():
        logits = m(batch.x)
    student = logits.clone().requires_grad_(True)
    term = lwf.loss_terms(m, batch, {"loss": torch.tensor(0.0), "logits": student})["lwf"]
    (grad,) = torch.autograd.grad(term, student)
    own = torch.softmax(logits[:, :2] / 2.0, dim=1)
    targets = own - grad[:, :2] * 2.0 * len(logits)
    torch.testing.assert_close(targets, own, rtol=0, atol=1e-6)
    assert torch.equal(grad[:, 2:], torch.zeros_like(grad[:, 2:])), "only the old classes are distilled"
    assert len(lwf.teacher.plugins) == 0, "the teacher holds no plugins, hence no teacher"
    lwf.on_task_end(m, 1)
    assert len(lwf.teacher.plugins) == 0


def test_lwf_teacher_of_a_prompt_strategy_survives_a_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    dm = TinyStream(n_tasks=2, batch_size=8)
    monkeypatch.setattr(ContinualModule, "datamodule", property(lambda self: dm))

    def build() -> ContinualModule:
        m = make("CODAPrompt")
        m.plugins.append(clfw.strategies.LwF())
        m.attach_stream(dm)
        return m

    m = build()
    m.current_task, m.task_ended = 0, False
    m._update_seen_mask()
    m.on_task_start(0)
    m.plugins[0].on_task_end(m, 0)
    m.current_task, m.task_ended = 1, False  # checkpointed in the middle of task 1
    m._update_seen_mask()
    m.on_task_start(1)
    fresh = build()
    fresh.current_task, fresh.task_ended = 1, False  # what on_load_checkpoint restores before the weights
    fresh.load_state_dict(m.state_dict())
    teacher, restored = m.plugins[0].teacher, fresh.plugins[0].teacher
    assert teacher.current_task == restored.current_task == 0
    x = inputs(dm)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), teacher.eval()(x))


def test_icarl_previous_model_holds_no_earlier_one_and_no_exemplars(monkeypatch: pytest.MonkeyPatch) -> None:
    m, dm = attached("ICaRL", monkeypatch, task=0)
    m.on_task_end(0)
    first = m.teacher
    assert len(m.buffer) == 20 and first.buffer is None and first.teacher is None
    m.current_task = 1
    m._update_seen_mask()
    m.on_task_end(1)
    assert m.teacher is not first and m.teacher.teacher is None and m.teacher.buffer is None
    x = inputs(dm)
    with torch.no_grad():
        torch.testing.assert_close(m.teacher.eval()(x), m.eval()(x), rtol=0, atol=0)


def test_gdumb_loads_the_model_it_retrained_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    m, dm = attached("GDumb", monkeypatch, task=0)
    data = dm.stream.tasks[0].train
    m.buffer.add(x=data.x, y=data.y, task=data.task)
    initial = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.on_task_end(0)
    retrained = m.retrain(0)  # the same draws: the same model
    assert retrained.buffer is None and not any(isinstance(s, Memory) for s in retrained.modules())
    x = inputs(dm)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), retrained.eval()(x), rtol=0, atol=0)
    moved = {n for n, p in m.named_parameters() if not torch.equal(initial[n], p)}
    assert moved == set(initial) - {"placeholder"}, "every network parameter is retrained, the placeholder is not"


def test_a_forward_left_bound_on_the_instance_is_rebound_to_the_copy() -> None:
    """Lightning's DDP re-routes ``training_step`` by patching ``module.forward`` and leaves it as an instance attribute
    bound to the module: the copy must call its own forward, with its own parameters (GDumb retrained nothing)."""
    module = make("Naive")
    module.attach_stream(TinyStream(n_tasks=2))
    module.forward = module.forward  # type: ignore[method-assign]  (what Lightning's DDP leaves behind)
    copy = module.copy_model()
    assert copy.forward.__self__ is copy
    with torch.no_grad():
        copy.head.weight.add_(1.0)
    x = torch.randn(3, 1, 4, 4)
    assert not torch.equal(copy(x), module(x))

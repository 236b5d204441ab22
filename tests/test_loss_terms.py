"""Every strategy's and plugin's loss terms recomputed by hand on small cases, in the middle of the stream.

The stream has 3 tasks of 2 classes: during task 0 only classes 0-1 are seen, during task 1 classes 0-3. A term that
forgets its class mask therefore changes value here, whereas after the last task of a stream every class is seen and
the mask changes nothing. Expected values come from the formulas, written with torch ops on the same tensors; the
strategies' own helpers are not called. Replay memories hold exactly one replay minibatch, so a draw returns all of it
(in some order) and every mean over the draw is known without the memory's sampler. Modules run without a Trainer:
``datamodule`` is the stream itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

import clfw.strategies
from clfw import Batch, ContinualModule
from clfw.backbones import MLP
from clfw.prompt import run_blocks, vit_tokens
from tests.helpers import TinyStream, tiny_vit

Stream = Callable[..., TinyStream]
M = TypeVar("M", bound=ContinualModule)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Stream:
    """Makes the 3-task, 6-class TinyStream (``scenario`` "class" or "task") the modules' datamodule."""

    def make(scenario: str = "class") -> TinyStream:
        dm = TinyStream(n_tasks=3, num_classes_total=6, batch_size=8, scenario=scenario)
        monkeypatch.setattr(ContinualModule, "datamodule", property(lambda self: dm))
        return dm

    return make


def start(m: M, dm: TinyStream, task: int) -> M:
    """Attaches ``m`` to ``dm`` and runs it into ``task`` (task starts only, no task end), in train mode."""
    torch.manual_seed(1)
    m.attach_stream(dm)
    for t in range(task + 1):
        m.current_task, m.task_ended = t, False
        m._update_seen_mask()
        m.on_task_start(t)
    return m.train()


def mlp() -> MLP:
    return MLP(in_features=16, hidden=(8,))


def picks(dm: TinyStream, task: int, per_class: int) -> Tensor:
    """Indices of the first ``per_class`` training samples of each class of ``task``."""
    y = dm.stream.tasks[task].train.y
    return torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in torch.unique(y).tolist()])


def batch(dm: TinyStream, task: int, per_class: int = 4) -> Batch:
    return dm.stream.tasks[task].train.batch(picks(dm, task, per_class), dm.train_transform())


def raw(dm: TinyStream, task: int, per_class: int = 2) -> dict[str, Tensor]:
    """Untransformed samples of ``task``, as memories store them."""
    data, idx = dm.stream.tasks[task].train, picks(dm, task, per_class)
    return {"x": data.x[idx], "y": data.y[idx], "task": data.task[idx]}


def ce_over(logits: Tensor, y: Tensor, lo: int | Tensor, hi: int | Tensor) -> Tensor:
    """Mean over samples of the cross-entropy of the softmax over classes ``[lo, hi)`` (per sample when tensors)."""
    lo, hi = torch.as_tensor(lo).expand(len(y)), torch.as_tensor(hi).expand(len(y))
    return torch.stack([F.cross_entropy(z[a:b], t - a) for z, t, a, b in zip(logits, y, lo, hi, strict=True)]).mean()


def flat(m: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters() if p.requires_grad])


def nudge(m: nn.Module, scale: float = 0.2) -> None:
    """Moves every trainable parameter by Gaussian noise."""
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def assert_differs(a: Tensor, b: Tensor) -> None:
    """Guards the test itself: the wrong variant must give a clearly different value."""
    assert (a - b).abs().max() > 1e-3, "this case cannot tell the variants apart"


# ------------------------------------------------------------------------------------------------ cross-entropy masks
@pytest.mark.parametrize(("name", "hi"), [("Naive", 2), ("Cumulative", 2), ("Joint", 6)])
def test_base_cross_entropy_over_the_classes_seen_so_far(stream: Stream, name: str, hi: int) -> None:
    dm = stream()
    m = start(getattr(clfw.strategies, name)(backbone=mlp()), dm, 0)
    b = batch(dm, 0)
    with torch.no_grad():
        out = m.training_loss(b)
        logits = m(b.x)
    torch.testing.assert_close(out["loss"], ce_over(logits, b.y, 0, hi))
    assert_differs(ce_over(logits, b.y, 0, 2), ce_over(logits, b.y, 0, 6))


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_er_one_cross_entropy_over_current_and_replayed_samples_each_masked(stream: Stream, scenario: str) -> None:
    dm = stream(scenario)
    m = start(clfw.strategies.ER(backbone=mlp(), buffer_size=10, replay_batch_size=4), dm, 1)
    memory = raw(dm, 0)
    m.buffer.add(**memory)
    b = batch(dm, 1)
    with torch.no_grad():
        out = m.training_loss(b)
        logits = m(torch.cat([b.x, dm.train_transform()(memory["x"])]))
    y, task = torch.cat([b.y, memory["y"]]), torch.cat([b.task, memory["task"]])
    lo, hi = (0, 4) if scenario == "class" else (2 * task, 2 * task + 2)
    expected = ce_over(logits, y, lo, hi)
    torch.testing.assert_close(out["loss"], expected)
    assert_differs(expected, ce_over(logits, y, 0, 6))


# ------------------------------------------------------------------------------------------------------- DER, DER++
def test_der_adds_alpha_times_the_mse_between_replayed_and_stored_logits(stream: Stream) -> None:
    dm = stream()
    m = start(clfw.strategies.DER(backbone=mlp(), buffer_size=10, replay_batch_size=4, alpha=0.3), dm, 0)
    memory = raw(dm, 0)
    stored = 2 * torch.randn(4, 6)
    m.buffer.add(**memory, logits=stored)
    b = batch(dm, 0)
    with torch.no_grad():
        out = m.training_loss(b)
        current, replayed = m(b.x), m(dm.train_transform()(memory["x"]))
    mse = (replayed - stored).pow(2).sum() / stored.numel()  # mean over samples and all 6 logits
    torch.testing.assert_close(out["der"], 0.3 * mse)
    torch.testing.assert_close(out["loss"], ce_over(current, b.y, 0, 2) + 0.3 * mse)
    assert set(out) == {"loss", "logits", "der"}


@pytest.mark.parametrize(("scenario", "task"), [("class", 0), ("class", 1), ("task", 1)])
def test_derpp_adds_beta_times_the_masked_cross_entropy_of_replayed_labels(
    stream: Stream, scenario: str, task: int
) -> None:
    dm = stream(scenario)
    m = clfw.strategies.DERPP(backbone=mlp(), buffer_size=10, replay_batch_size=4, alpha=0.2, beta=0.7)
    m = start(m, dm, task)
    memory = raw(dm, 0)
    stored = 2 * torch.randn(4, 6)
    m.buffer.add(**memory, logits=stored)
    b = batch(dm, task)
    with torch.no_grad():
        out = m.training_loss(b)
        current, replayed = m(b.x), m(dm.train_transform()(memory["x"]))
    mse = (replayed - stored).pow(2).mean()
    # replayed task-0 samples: classes 0..1 in task-IL, the classes seen so far (0..2t+1) in class-IL
    replay_ce = ce_over(replayed, memory["y"], 0, 2 if scenario == "task" else 2 * task + 2)
    current_lo = 2 * task if scenario == "task" else 0
    torch.testing.assert_close(out["derpp"], 0.7 * replay_ce)
    torch.testing.assert_close(out["der"], 0.2 * mse)
    current_ce = ce_over(current, b.y, current_lo, 2 * task + 2)
    torch.testing.assert_close(out["loss"], current_ce + 0.2 * mse + 0.7 * replay_ce)
    assert_differs(replay_ce, ce_over(replayed, memory["y"], 0, 6))


# ------------------------------------------------------------------------------------------------------------ ER-ACE
def test_er_ace_incoming_over_present_classes_replay_over_seen_classes(stream: Stream) -> None:
    dm = stream()
    m = start(clfw.strategies.ERACE(backbone=mlp(), buffer_size=10, replay_batch_size=4), dm, 1)
    memory = raw(dm, 0)
    m.buffer.add(**memory)
    b = batch(dm, 1)  # classes 2 and 3
    with torch.no_grad():
        out = m.training_loss(b)
        current, replayed = m(b.x), m(dm.train_transform()(memory["x"]))
    incoming, replay = ce_over(current, b.y, 2, 4), ce_over(replayed, memory["y"], 0, 4)
    torch.testing.assert_close(out["replay"], replay)
    torch.testing.assert_close(out["loss"], incoming + replay)
    assert_differs(incoming, ce_over(current, b.y, 0, 4))
    assert_differs(replay, ce_over(replayed, memory["y"], 0, 6))
    data = dm.stream.tasks[1].train
    only_three = data.batch(torch.nonzero(data.y == 3).flatten()[:4], dm.train_transform())
    with torch.no_grad():  # one present class: a softmax over one logit, zero loss; the replay term remains
        out = m.training_loss(only_three)
    torch.testing.assert_close(out["loss"], out["replay"])


# ------------------------------------------------------------------------------------------------------------- iCaRL
def test_icarl_bce_over_seen_classes_with_the_previous_models_sigmoids_on_old_ones(stream: Stream) -> None:
    dm = stream()
    m = start(clfw.strategies.ICaRL(backbone=mlp(), memory_size=6, replay_batch_size=6), dm, 0)
    previous = copy.deepcopy(nn.Sequential(m.backbone, m.head)).eval()  # the model at the end of task 0
    m.on_task_end(0)  # takes the previous model and 3 exemplars of classes 0 and 1
    m.current_task, m.task_ended = 1, False
    m._update_seen_mask()
    nudge(m)  # the student moves away from the previous model
    b = batch(dm, 1)
    n = len(m.buffer)
    memory_x, memory_y = m.buffer.x[:n], m.buffer.y[:n]
    assert n == 6 and set(memory_y.tolist()) == {0, 1}
    with torch.no_grad():
        out = m.training_loss(b)
        x = torch.cat([b.x, dm.train_transform()(memory_x)])
        logits, old = m(x), torch.sigmoid(previous(x))
    y = torch.cat([b.y, memory_y])
    targets = F.one_hot(y, 6).float()
    targets[:, :2] = old[:, :2]  # distillation targets on the old classes 0, 1; one-hot on the new ones 2, 3
    bce = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
    expected = bce[:, :4].sum(1).mean()  # summed over the seen classes, averaged over the samples
    torch.testing.assert_close(out["loss"], expected)
    assert_differs(expected, bce.sum(1).mean())
    one_hot = F.one_hot(y, 6).float()
    no_distillation = -(one_hot * F.logsigmoid(logits) + (1 - one_hot) * F.logsigmoid(-logits))[:, :4].sum(1).mean()
    assert_differs(expected, no_distillation)


# --------------------------------------------------------------------------------------------------------------- LwF
@pytest.mark.parametrize(("weighting", "weight"), [("fixed", 0.7), ("balanced", 0.7 * 2 * 3.0**2)])
def test_lwf_tempered_distillation_on_the_old_classes_only(stream: Stream, weighting: str, weight: float) -> None:
    dm = stream()
    lwf = clfw.strategies.LwF(alpha=0.7, temperature=3.0, weighting=weighting)  # type: ignore[arg-type]
    m = start(clfw.strategies.Naive(backbone=mlp(), plugins=[lwf]), dm, 1)
    previous = copy.deepcopy(nn.Sequential(m.backbone, m.head)).eval()
    lwf.on_task_end(m, 1)
    m.current_task, m.task_ended = 2, False  # the third task: tasks 0 and 1's classes 0..3 are old
    m._update_seen_mask()
    nudge(m)
    b = batch(dm, 2)
    student = m(b.x)
    term = lwf.loss_terms(m, b, {"loss": torch.tensor(0.0), "logits": student})["lwf"]
    with torch.no_grad():
        teacher = previous(b.x)
    expected = -(torch.softmax(teacher[:, :4] / 3.0, 1) * torch.log_softmax(student[:, :4] / 3.0, 1)).sum(1).mean()
    torch.testing.assert_close(term, weight * expected)
    (grad,) = torch.autograd.grad(term, student)
    assert torch.equal(grad[:, 4:], torch.zeros_like(grad[:, 4:])), "the current task's classes are not distilled"


# ----------------------------------------------------------------------------------------------- EWC, SI, MAS penalties
def trainable(m: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in m.named_parameters() if p.requires_grad]


def draws(m: nn.Module, count: int) -> tuple[Callable[..., dict[str, Tensor]], list[Tensor]]:
    """A stand-in for a plugin's importance function (Fisher, MAS sensitivity): it returns ``count`` positive
    importance dicts (by parameter name) in turn, and records each, flattened, in the list returned beside it."""
    values = iter([{n: torch.rand_like(p) + 0.1 for n, p in trainable(m)} for _ in range(count)])
    given: list[Tensor] = []

    def importance(*args: object) -> dict[str, Tensor]:
        value = next(values)
        given.append(as_flat(value, m))
        return value

    return importance, given


def as_flat(values: dict[str, Tensor], m: nn.Module) -> Tensor:
    return torch.cat([values[n].flatten() for n, _ in trainable(m)])


@pytest.mark.parametrize("online", [False, True])
def test_ewc_penalty_is_half_lambda_times_the_fisher_weighted_squared_distance(
    stream: Stream, monkeypatch: pytest.MonkeyPatch, online: bool
) -> None:
    dm = stream()
    ewc = clfw.strategies.EWC(ewc_lambda=3.0, online=online, gamma=0.5)
    m = start(clfw.strategies.Naive(backbone=mlp(), plugins=[ewc]), dm, 0)
    fake_fisher, given = draws(m, 2)
    monkeypatch.setattr(clfw.strategies.ewc, "diagonal_fisher", fake_fisher)
    ewc.on_task_end(m, 0)
    anchor0 = flat(m)
    nudge(m)
    torch.testing.assert_close(ewc.penalty(m), 0.5 * 3.0 * (given[0] * (flat(m) - anchor0) ** 2).sum())
    ewc.on_task_end(m, 1)
    anchor1 = flat(m)
    nudge(m)
    theta = flat(m)
    if online:  # one Fisher, decayed, and the latest anchor
        expected = 0.5 * 3.0 * ((0.5 * given[0] + given[1]) * (theta - anchor1) ** 2).sum()
        slope = 3.0 * (0.5 * given[0] + given[1]) * (theta - anchor1)
    else:  # one term per task
        expected = 0.5 * 3.0 * ((given[0] * (theta - anchor0) ** 2).sum() + (given[1] * (theta - anchor1) ** 2).sum())
        slope = 3.0 * (given[0] * (theta - anchor0) + given[1] * (theta - anchor1))
    term = ewc.loss_terms(m, batch(dm, 2), {"loss": torch.tensor(0.0)})["ewc"]
    torch.testing.assert_close(term, expected)
    grads = torch.autograd.grad(term, [p for _, p in trainable(m)])
    torch.testing.assert_close(torch.cat([g.flatten() for g in grads]), slope)  # pulls back toward the anchors


def test_si_importance_is_the_normalised_path_integral_and_the_penalty_c_times_it(stream: Stream) -> None:
    dm = stream()
    si = clfw.strategies.SI(c=2.0, xi=0.1)
    m = start(clfw.strategies.Naive(backbone=mlp(), plugins=[si]), dm, 0)
    si.on_task_start(m, 0)
    params = [p for _, p in trainable(m)]
    start_theta, omega = flat(m), torch.zeros_like(flat(m))
    for _ in range(3):  # three optimizer steps: gradient g, then the step's change d
        g = [torch.randn_like(p) for p in params]
        for p, gp in zip(params, g, strict=True):
            p.grad = gp.clone()
        si.before_optimizer_step(m, torch.optim.SGD(params, lr=0.1))
        before = flat(m)
        with torch.no_grad():
            for p, gp in zip(params, g, strict=True):
                p.sub_(0.1 * gp + 0.02 * torch.randn_like(p))
        omega -= torch.cat([gp.flatten() for gp in g]) * (flat(m) - before)  # -g . delta theta
    si.on_task_end(m, 0)
    anchor = flat(m)
    importance = omega / ((anchor - start_theta) ** 2 + 0.1)
    assert (importance > 0).float().mean() > 0.9, "descent steps: mostly positive importance"
    nudge(m)
    term = si.loss_terms(m, batch(dm, 1), {"loss": torch.tensor(0.0)})["si"]
    torch.testing.assert_close(term, 2.0 * (importance * (flat(m) - anchor) ** 2).sum())


def test_mas_penalty_is_lambda_times_the_summed_importance_weighted_squared_distance(
    stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = stream()
    mas = clfw.strategies.MAS(mas_lambda=0.5)
    m = start(clfw.strategies.Naive(backbone=mlp(), plugins=[mas]), dm, 0)
    fake_sensitivity, given = draws(m, 2)
    monkeypatch.setattr(clfw.strategies.mas, "output_sensitivity", fake_sensitivity)
    mas.on_task_end(m, 0)
    anchor = flat(m)
    nudge(m)
    torch.testing.assert_close(mas.penalty(m), 0.5 * (given[0] * (flat(m) - anchor) ** 2).sum())  # no 1/2
    mas.on_task_end(m, 1)
    anchor = flat(m)
    nudge(m)
    term = mas.loss_terms(m, batch(dm, 2), {"loss": torch.tensor(0.0)})["mas"]
    torch.testing.assert_close(term, 0.5 * ((given[0] + given[1]) * (flat(m) - anchor) ** 2).sum())


# ------------------------------------------------------------------------------------------------------------- A-GEM
@pytest.mark.parametrize("conflict", [True, False])
def test_agem_projects_against_the_masked_memory_gradient(stream: Stream, conflict: bool) -> None:
    dm = stream()
    m = start(clfw.strategies.AGEM(backbone=mlp(), buffer_size=6, sample_size=2), dm, 0)
    m.on_task_end(0)  # 6 // 3 tasks = 2 samples of task 0
    m.current_task, m.task_ended = 1, False
    m._update_seen_mask()
    params = [p for _, p in trainable(m)]
    n = len(m.buffer)
    memory_x, memory_y = m.buffer.x[:n], m.buffer.y[:n]
    assert n == 2
    logits = m(dm.train_transform()(memory_x))
    g_ref = torch.cat([g.flatten() for g in torch.autograd.grad(ce_over(logits, memory_y, 0, 4), params)])
    g = (-g_ref if conflict else g_ref) + 0.5 * g_ref.norm() / g_ref.numel() ** 0.5 * torch.randn_like(g_ref)
    dot = torch.dot(g, g_ref)
    assert (dot < 0) == conflict
    for p, part in zip(params, g.split([p.numel() for p in params]), strict=True):
        p.grad = part.view_as(p).clone()
    m.before_optimizer_step(torch.optim.SGD(params, lr=0.1))
    after = torch.cat([p.grad.flatten() for p in params])
    expected = g - dot / torch.dot(g_ref, g_ref) * g_ref if conflict else g
    torch.testing.assert_close(after, expected)
    if conflict:
        assert abs(torch.dot(after, g_ref)) < 1e-5 * g.norm() * g_ref.norm(), "projected onto the half-space"
        unmasked = torch.autograd.grad(ce_over(m(dm.train_transform()(memory_x)), memory_y, 0, 6), params)
        u = torch.cat([r.flatten() for r in unmasked])
        assert_differs(expected, g - torch.dot(g, u) / torch.dot(u, u) * u)


# ----------------------------------------------------------------------------------------------------- prompt methods
def prompt(name: str, **kwargs: object) -> ContinualModule:
    torch.manual_seed(0)
    return getattr(clfw.strategies, name)(vit=tiny_vit(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)


def test_l2p_pull_is_weight_times_one_minus_cosine_of_the_selected_keys(stream: Stream) -> None:
    dm = stream()
    kwargs = {"pool_size": 4, "prompt_length": 2, "top_k": 2, "pull_weight": 0.5, "batchwise_selection": False}
    m = start(prompt("L2P", **kwargs), dm, 1)
    b = batch(dm, 1)
    out = m.training_loss(b)
    with torch.no_grad():
        query = m.backbone.forward_features(b.x)[:, 0]  # the frozen ViT's [CLS] without prompts
        sims = F.cosine_similarity(query[:, None, :], m.keys[None], dim=-1)  # [B, pool]
        top, idx = sims.topk(2, dim=1)
    pull = 0.5 * (1 - top).sum(1).mean()
    torch.testing.assert_close(out["prompt_aux"], pull)
    # in training, class-IL logits are masked to the current task's classes (2, 3)
    torch.testing.assert_close(out["loss"], ce_over(out["logits"].detach(), b.y, 2, 4) + pull)
    # the pull's gradient moves the selected keys toward the queries
    (grad,) = torch.autograd.grad(out["loss"], m.keys)
    with torch.no_grad():
        moved = F.cosine_similarity(query[:, None, :], (m.keys - 0.1 * grad)[None], dim=-1).gather(1, idx)
    assert moved.mean() > top.mean()


def test_dualprompt_pull_is_weight_times_one_minus_cosine_of_the_current_tasks_key(stream: Stream) -> None:
    dm = stream()
    kwargs = {"g_length": 2, "g_layers": [0], "e_pool_size": 3, "e_length": 2, "e_layers": [1, 2], "pull_weight": 0.5}
    m = start(prompt("DualPrompt", **kwargs), dm, 1)
    b = batch(dm, 1)
    out = m.training_loss(b)
    with torch.no_grad():
        query = m.backbone.forward_features(b.x)[:, 0]
        pull = 0.5 * (1 - F.cosine_similarity(query, m.e_keys[1][None], dim=-1)).mean()
    torch.testing.assert_close(out["prompt_aux"], pull)
    torch.testing.assert_close(out["loss"], ce_over(out["logits"].detach(), b.y, 2, 4) + pull)
    (grad,) = torch.autograd.grad(out["loss"], m.e_keys)
    assert grad[[0, 2]].abs().max() == 0 and grad[1].abs().max() > 0, "only the current task's key is pulled"


def coda() -> ContinualModule:
    return prompt("CODAPrompt", pool_size=6, prompt_length=2, layers=[0, 1], ortho_weight=0.1)


def test_coda_orthogonality_penalty_on_the_used_components(stream: Stream) -> None:
    dm = stream()
    m = start(coda(), dm, 1)  # components 0..3 used: task 0's (detached) and task 1's
    nudge(m, 0.3)  # away from orthonormal, else the penalty is 0
    out = m.training_loss(batch(dm, 1))
    penalty = torch.zeros(())
    with torch.no_grad():
        for layer in range(2):
            for x in (m.keys[layer, :4], m.attention[layer, :4], m.prompts[layer, :4].flatten(1)):
                penalty = penalty + ((x @ x.T - torch.eye(4)) ** 2).mean()
    assert penalty > 0.1
    torch.testing.assert_close(out["prompt_aux"], 0.1 * penalty)


def test_coda_prompt_is_the_attention_weighted_sum_of_components(stream: Stream) -> None:
    """alpha_m = cos(q * A_m, K_m), prompt = sum_m alpha_m P_m, first half key prefixes, second half values."""
    dm = stream()
    m = start(coda(), dm, 1).eval()
    nudge(m, 0.3)  # keys and attention vectors of any norm, not only the unit rows drawn at task start
    x = batch(dm, 1).x
    vit = m.backbone

    def logits(use_attention: bool) -> Tensor:
        query = vit.forward_features(x)[:, 0]
        prefixes = {}
        for i, layer in enumerate([0, 1]):
            a, k, p = m.attention[i, :4], m.keys[i, :4], m.prompts[i, :4]
            q = query[:, None, :] * a[None] if use_attention else query[:, None, :].expand(-1, 4, -1)
            alpha = F.cosine_similarity(q, k[None], dim=-1)  # [B, 4]
            weighted = (alpha[:, :, None, None] * p[None]).sum(1)  # [B, length, D]
            prefixes[layer] = (weighted[:, :1], weighted[:, 1:])
        return m.head(run_blocks(vit, vit_tokens(vit, x), prefixes)[:, 0])

    with torch.no_grad():
        expected = logits(use_attention=True)
        torch.testing.assert_close(m(x), expected)
        assert_differs(expected, logits(use_attention=False))

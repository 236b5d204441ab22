"""X-DER: the logit update on hand-made memories, the task-end memory, the constraints and SupCon on hand values, the
future-head masking, a short run."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from clfw.backbones import MLP
from clfw.data import StrongAugment, _shift_hue
from clfw.strategies import XDER
from tests.helpers import TinyStream, fit


def trained(**kwargs: float) -> tuple[XDER, TinyStream]:
    """X-DER fitted on a 3-task, 6-class TinyStream (training transform = evaluation transform: no augmentation)."""
    torch.manual_seed(0)
    args = {"buffer_size": 12, "replay_batch_size": 4, "supcon_batch_size": 4, **kwargs}
    m = XDER(backbone=MLP(in_features=16, hidden=(8,)), **args)
    dm = TinyStream(n_tasks=3, num_classes_total=6, batch_size=8)
    fit(m, dm)
    return m, dm


def at_task(m: XDER, t: int) -> None:
    m.current_task = t
    m._update_seen_mask()


def hand_memory(m: XDER, dm: TinyStream, logits: torch.Tensor, y: list[int]) -> torch.Tensor:
    """Puts task-0 training samples of labels ``y`` with the given ``logits`` in the memory; returns their inputs."""
    data = dm.stream.tasks[0].train
    pools = {c: torch.nonzero(data.y == c).flatten().tolist() for c in set(y)}
    idx = torch.tensor([pools[c].pop(0) for c in y])
    x = data.x[idx]
    m.buffer.assign(x=x, y=torch.tensor(y), task=torch.zeros(len(y), dtype=torch.long), logits=logits,
                    slot=torch.arange(len(y)))  # fmt: skip
    return x


def test_update_logits_hand_values() -> None:
    m = XDER(backbone=MLP(in_features=16, hidden=(8,)), num_classes=6, gamma=0.85)
    old = torch.tensor([[5.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 9.0, 9.0, 9.0, 9.0]])
    new = torch.tensor([[0.0, 0.0, 10.0, 2.0, -1.0, 4.0], [7.0, 7.0, 1.0, 1.5, -3.0, 0.5]])
    heads = torch.tensor([False, False, True, True, True, True])
    out = m.update_logits(old, new, torch.tensor([0, 1]), heads)
    # row 0: max 10 > ground truth 5: x 0.85 * 5 / 10 = 0.425; row 1: max 1.5 < ground truth 2: coefficient 1
    expected = torch.tensor([[5.0, 1.0, 4.25, 0.85, -0.425, 1.7], [1.0, 2.0, 1.0, 1.5, -3.0, 0.5]])
    torch.testing.assert_close(out, expected)
    assert torch.equal(old[1], torch.tensor([1.0, 2.0, 9.0, 9.0, 9.0, 9.0])), "the input is not modified"


def test_online_update_of_replayed_logits_hand_values() -> None:
    m, dm = trained()
    at_task(m, 1)
    stored = torch.full((5, 6), 9.0)
    stored[:, :2] = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    hand_memory(m, dm, stored.clone(), [0, 1, 0, 0, 1])
    m.buffer.task[4] = 1  # a sample of the current task: never revised
    m.update_counter.zero_()
    outputs = torch.tensor([[5.0, 5.0, 4.0, 1.0, 0.0, -2.0], [0.0, 0.0, 1.0, 2.5, -1.0, 0.0], [0.0, 0.0, 8, 8, 8, 8]])
    m.refresh_replayed(torch.tensor([0, 1, 4]), outputs)  # first draw in the task: always revised
    got = m.buffer.logits[:5]
    # slot 0: y 0, truth 2, max(4, 1, 0, -2) = 4 > 2: x 0.85 * 2 / 4; slot 1: y 1, truth 3 > 2.5: x 1
    torch.testing.assert_close(got[0], torch.tensor([2.0, 0.0, 1.7, 0.425, 0.0, -0.85]))
    torch.testing.assert_close(got[1], torch.tensor([0.0, 3.0, 1.0, 2.5, -1.0, 0.0]))
    assert torch.equal(got[2:], stored[2:]), "undrawn slots and the current task's sample keep their logits"
    assert m.update_counter[:5].tolist() == [1, 1, 0, 0, 1]
    counts = []  # the k-th draw of a slot revises it with probability 1 / k
    for _ in range(2, 202):
        m.buffer.logits[0] = stored[0]
        m.refresh_replayed(torch.tensor([0]), outputs[:1])
        counts.append(not torch.equal(m.buffer.logits[0], stored[0]))
    assert int(m.update_counter[0]) == 201
    expected = sum(1 / k for k in range(2, 202))  # about 4.9
    assert 0 < sum(counts) < 4 * expected, (sum(counts), expected)


def test_task_end_memory_class_balanced_and_logits_revised() -> None:
    m, dm = trained(gamma=0.85)
    at_task(m, 1)
    y = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    stored = torch.full((10, 6), 7.0)
    stored[torch.arange(10), torch.tensor(y)] = torch.tensor([0.01, 1000.0] * 5)  # class 0: scaled; 1: not
    x_old = hand_memory(m, dm, stored.clone(), y)
    m.update_counter.fill_(3)
    m.on_task_end(1)
    buf, n = m.buffer, len(m.buffer)
    assert n == 12 and torch.bincount(buf.y[:n], minlength=6).tolist() == [3, 3, 3, 3, 0, 0]
    assert buf.task[:n].tolist() == [0] * 6 + [1] * 6
    assert torch.equal(buf.x[:6], torch.cat([x_old[[0, 2, 4]], x_old[[1, 3, 5]]])), "the first 3 of each class kept"
    assert int(m.update_counter.abs().sum()) == 0
    with torch.no_grad():
        r = m(dm.replay_inputs(buf.x[:n]))
    old, new = slice(0, 6), slice(6, 12)
    torch.testing.assert_close(buf.logits[old][:, :2], stored[[0, 2, 4, 1, 3, 5]][:, :2])  # heads of task 0: kept
    truth = torch.tensor([0.01] * 3 + [1000.0] * 3)
    top = r[old][:, 2:].max(1).values
    assert bool((top > 0.01).all()[None]) and bool((top[3:] < 1000).all())
    expected = r[old][:, 2:] * torch.where(top > truth, 0.85 * truth / top, torch.ones(6))[:, None]
    torch.testing.assert_close(buf.logits[old][:, 2:], expected)  # heads of tasks >= 1: the network's, scaled
    torch.testing.assert_close(buf.logits[3:6, 2:], r[3:6, 2:])  # below the ground truth: unscaled
    rn, yn = r[new], buf.y[new]
    gt, past_top = rn.gather(1, yn[:, None]).squeeze(1), rn[:, :2].max(1).values
    expected_new = rn.clone()
    expected_new[:, :2] *= torch.where(past_top > gt, 0.85 * gt / past_top, torch.ones(6))[:, None]
    torch.testing.assert_close(buf.logits[new], expected_new)  # new samples: past heads bounded by the truth
    train1 = dm.stream.tasks[1].train
    for xi, yi in zip(buf.x[new], yn.tolist(), strict=True):
        assert any(torch.equal(xi, xj) and yj == yi for xj, yj in zip(train1.x, train1.y.tolist(), strict=True))


def test_constraints_hand_values() -> None:
    m = XDER(backbone=MLP(in_features=16, hidden=(8,)), num_classes=6, eta=0.1, m=0.5)
    own = torch.tensor([[True, True, False, False]]).expand(3, -1)
    future = torch.tensor([False, False, True, True])
    outputs = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.0, 1.0, 4.0, 2.0], [2.0, 0.0, 1.8, 0.0]])
    # gaps 2 + .5 - 3 = -.5 (inactive), 4 + .5 - 1 = 3.5, 1.8 + .5 - 2 = .3: 0.1 * mean(3.5, .3) = 0.19
    torch.testing.assert_close(m.future_penalty(outputs, own, future), torch.tensor(0.19))
    assert float(m.future_penalty(outputs[:1], own[:1], future)) == 0.0
    logits = torch.log(torch.tensor([[1.0, 2, 3, 4, 1, 1], [4, 1, 1, 4, 1, 1], [1, 1, 1, 7, 1, 1]]))
    logits[:, 4:] = 100.0  # future classes: outside the softmax
    logits.requires_grad_(True)
    cur = torch.tensor([[False, False, True, True, False, False]]).expand(3, -1)
    past = torch.tensor([True, True, False, False, False, False])
    # softmax over 4 seen classes = [.1 .2 .3 .4], [.4 .1 .1 .4], [.1 .1 .1 .7]; gaps .2+.5-.4, .4+.5-.4, .1+.5-.7
    loss = m.past_penalty(logits, cur, past)
    torch.testing.assert_close(loss, torch.tensor(0.1 * (0.3 + 0.5) / 2))
    (grad,) = torch.autograd.grad(loss, logits)
    probs = torch.softmax(logits[:2, :4], 1)
    (expected,) = torch.autograd.grad(-0.1 / 2 * probs[:, 2:].max(1).values.sum(), logits)  # the past max: constant
    torch.testing.assert_close(grad, expected)
    assert float(grad[:, 4:].abs().sum()) == 0.0


def supcon_loop(features: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """SupCon written anchor by anchor (Khosla et al. 2020, L^sup_out, base temperature = tau)."""
    n, v = features.shape[:2]
    z = [features[i, a] for a in range(v) for i in range(n)]
    y = [int(labels[i]) for a in range(v) for i in range(n)]
    total = 0.0
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        log_den = torch.logsumexp(torch.stack([z[i] @ z[j] / tau for j in others]), 0)
        pos = [j for j in others if y[j] == y[i]]
        total = total - sum(z[i] @ z[p] / tau - log_den for p in pos) / len(pos)
    return total / len(z)


def test_supcon_hand_values_and_loop() -> None:
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    # each anchor: its other view (dot 1) among 3 others (dots 1, 0, 0)
    torch.testing.assert_close(XDER.supcon(f, torch.tensor([0, 1]), 1.0), torch.tensor(math.log(math.e + 2) - 1))
    # same label: 3 positives with dots 1, 0, 0
    torch.testing.assert_close(XDER.supcon(f, torch.tensor([0, 0]), 1.0), torch.tensor(math.log(math.e + 2) - 1 / 3))
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(5, 3, 4, generator=g), dim=2)
    labels = torch.tensor([0, 1, 0, 2, 1])
    torch.testing.assert_close(XDER.supcon(feats, labels, 5.0), supcon_loop(feats, labels, 5.0))


def test_future_heads_and_supcon_term() -> None:
    m, dm = trained(lambd=0.05, temperature=5.0)
    at_task(m, 0)
    assert m.heads(range(1, 3)).tolist() == [False, False, True, True, True, True]
    at_task(m, 1)
    assert m.heads(range(2, 3)).tolist() == [False] * 4 + [True] * 2
    assert m.heads_from(1).tolist() == [False, False, True, True, True, True]
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    drawn = copy.deepcopy(m.buffer).sample(4)
    rng = torch.get_rng_state()
    m.zero_grad()
    term = m.future_preparation(batch)
    term.backward()
    grad = m.head.weight.grad
    assert float(grad[:4].abs().sum()) == 0.0 and float(grad[4:].abs().sum()) > 0, "only future heads are prepared"
    torch.set_rng_state(rng)  # the same strong augmentations again
    raw = torch.cat([drawn["x"], dm.stream.tasks[1].train.x[:4]])  # supcon_batch_size stored + as many current
    with torch.no_grad():
        views = dm.eval_transform()(StrongAugment()(raw.repeat_interleave(2, 0)))
        out = m(views).view(8, 2, 6)
        labels = torch.cat([drawn["y"], batch.y[:4]])
        expected = 0.05 * supcon_loop(F.normalize(out[:, :, 4:], dim=2), labels, 5.0)  # one future head at task 1
    torch.testing.assert_close(term.detach(), expected)
    with torch.no_grad():
        terms = m.training_loss(batch)
    assert {"der", "derpp", "supcon", "future_constraint", "past_constraint"} <= set(terms)
    at_task(m, 2)
    with torch.no_grad():
        terms = m.training_loss(dm.stream.tasks[2].train.batch(torch.arange(8), dm.train_transform()))
    assert "supcon" not in terms and "future_constraint" not in terms, "no future heads in the last task"


def test_present_head_cross_entropy_and_derpp_over_past_heads() -> None:
    m, dm = trained(lambd=0.0, future_constraint=False, past_constraint=False, alpha=0.3, beta=0.8)
    at_task(m, 2)
    older = torch.nonzero(m.buffer.task[: len(m.buffer)] < 2).flatten()  # the memory during task 2
    m.buffer.assign(**{k: getattr(m.buffer, k)[older] for k in ("x", "y", "task", "logits")}, slot=torch.arange(8))
    batch = dm.stream.tasks[2].train.batch(torch.arange(8), dm.train_transform())
    draws = copy.deepcopy(m.buffer)
    first, second = draws.sample(4), draws.sample(4)
    t = dm.train_transform()
    with torch.no_grad():
        out = m.training_loss(batch)
        ce = F.cross_entropy(m(batch.x)[:, 4:], batch.y - 4)  # the current head only
        mse = ((m(t(first["x"])) - first["logits"]) ** 2).mean()
        ce_past = F.cross_entropy(m(t(second["x"]))[:, :4], second["y"])  # the past heads only
    torch.testing.assert_close(out["der"], 0.3 * mse)
    torch.testing.assert_close(out["derpp"], 0.8 * ce_past)
    torch.testing.assert_close(out["loss"], ce + 0.3 * mse + 0.8 * ce_past)


def test_short_run_learns_every_task_with_a_class_balanced_memory() -> None:
    torch.manual_seed(0)
    m = XDER(backbone=MLP(in_features=16, hidden=(32,)), optimizer=functools.partial(torch.optim.SGD, lr=0.05),
             buffer_size=60, replay_batch_size=8, supcon_batch_size=8)  # fmt: skip
    dm = TinyStream(n_tasks=3, num_classes_total=6, batch_size=8, epochs_per_task=5, train_per_class=48)
    _, matrix = fit(m, dm, plot=False)
    n = len(m.buffer)
    assert n == 60 and torch.bincount(m.buffer.y[:n], minlength=6).tolist() == [10] * 6
    assert m.buffer.task[:n].tolist() == (m.buffer.y[:n] // 2).tolist()
    assert m.buffer.slot[:n].tolist() == list(range(60))
    last = matrix.rows[-1]
    assert min(last) >= 0.6, last  # Naive ends at [0, .5, 1]: it forgets


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_views": 1}, "num_views"), ({"gamma": 0.0}, "gamma"), ({"lambd": -1.0}, "lambd"),
     ({"temperature": 0.0}, "temperature"), ({"buffer_size": 0}, "buffer_size")],
)  # fmt: skip
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        XDER(backbone=MLP(in_features=16, hidden=(8,)), **kwargs)


def test_strong_augment_hue_matches_torchvision_and_views_vary() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for shift in (0.07, -0.1):
        ref = torch.stack([tvf.adjust_hue(xi, shift) for xi in x])
        torch.testing.assert_close(_shift_hue(x, torch.full((4,), shift)), ref, atol=1e-5, rtol=0)
    raw = (x * 255).to(torch.uint8)
    torch.manual_seed(0)
    a = StrongAugment()(raw)
    torch.manual_seed(0)
    assert torch.equal(a, StrongAugment()(raw)) and a.shape == raw.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 255 and not torch.equal(a, StrongAugment()(raw))

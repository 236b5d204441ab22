"""The stability-gap lab (issue 16): the plugin hooks' order, and each mitigation's mechanism on a hand-computable
case (gradient projection, LR warm-up, nearest-mean head, CLS-ER, Layerwise Proximal Replay)."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

import clfw.strategies as S  # noqa: N812
from clfw import ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.seeding import derived_generator
from clfw.testing import build_model, fit, model_config
from tests.helpers import TinyStream


class Flat(nn.Module):
    """Identity feature extractor over TinyStream's [1, 4, 4] inputs: features are the 16 pixels."""

    num_features = 16

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


# ------------------------------------------------------------------------------------------------------ the hooks
class Recorder(Plugin):
    def __init__(self, name: str, log: list[str], offset: float = 0.0) -> None:
        super().__init__()
        self.name, self.log, self.offset = name, log, offset

    @override
    def predict(self, module: ContinualModule, x: Tensor, task_ids: Tensor, scores: Tensor) -> Tensor:
        self.log.append(f"predict {self.name}")
        return scores + self.offset

    @override
    def after_optimizer_step(self, module: ContinualModule) -> None:
        self.log.append(f"after {self.name} {module.trainer.global_step}")


class RecordingNaive(S.Naive):
    def __init__(self, log: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log

    @override
    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        self.log.append("predict strategy")
        return super().predict(x, task_ids)

    @override
    def after_optimizer_step(self) -> None:
        self.log.append(f"after strategy {self.trainer.global_step}")


class EvaluationSeen(pl.Callback):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.log.append(f"callback {trainer.global_step}")


def test_plugin_hooks_run_in_order_strategy_first_then_plugins_before_any_callback() -> None:
    log: list[str] = []
    plugins = [Recorder("a", log, 1.0), Recorder("b", log, 10.0)]
    model = RecordingNaive(log, backbone=MLP(in_features=16, hidden=(8,)), plugins=plugins)
    fit(model, TinyStream(n_tasks=1, batch_size=48), [EvaluationSeen(log)], plot=False)
    steps = [e for e in log if e.startswith(("after", "callback"))]
    assert steps[:6] == ["after strategy 0", "after a 0", "after b 0", "callback 1", "after strategy 1", "after a 1"]
    log.clear()
    x, t = torch.randn(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    model.eval()
    scores = model.class_scores(x, t)
    assert log == ["predict strategy", "predict a", "predict b"]
    torch.testing.assert_close(scores, model.predict(x, t) + 11.0)


# ------------------------------------------------------------------------------------------ gradient projection
def _er_with_memory(plugin: Plugin, x: Tensor, y: Tensor) -> S.ER:
    model = S.ER(buffer_size=10, replay_batch_size=4, backbone=Flat(), num_classes=4, plugins=[plugin])
    model.attach_stream(TinyStream(n_tasks=2))
    model.current_task = 1
    model._update_seen_mask()
    model.buffer.add(gather=False, x=x, y=y, task=torch.zeros_like(y))
    model.replay_inputs = lambda raw: raw  # type: ignore[method-assign]  # no datamodule: the stored inputs as they are
    model.stored_eval_inputs = lambda raw: raw  # type: ignore[method-assign]
    return model


@pytest.mark.parametrize("conflicting", [True, False])
def test_projection_removes_exactly_the_conflicting_component(conflicting: bool) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 0, 1])
    plugin = S.GradientProjection(sample_size=4, eps=0.0)
    model = _er_with_memory(plugin, x, y)
    plugin.on_setup(model)
    params = model.trainable_parameters()
    # the reference gradient, computed here independently: CE of the memory's 4 samples over the seen classes 0..3
    loss = F.cross_entropy(model(x), y)
    g_ref = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    u = torch.randn_like(g_ref)
    u -= (u @ g_ref) / (g_ref @ g_ref) * g_ref  # orthogonal to g_ref
    g = (-2.0 if conflicting else 2.0) * g_ref + u
    for p, part in zip(params, g.split([p.numel() for p in params]), strict=True):
        p.grad = part.view_as(p).clone()
    plugin.before_optimizer_step(model, torch.optim.SGD(params, lr=0.1))
    got = torch.cat([p.grad.flatten() for p in params])
    torch.testing.assert_close(got, u if conflicting else g, rtol=1e-5, atol=1e-6)


def test_projection_skips_the_first_task_and_needs_a_replay_memory() -> None:
    with pytest.raises(ValueError, match="GradientProjection needs a replay memory, but Naive"):
        S.Naive(backbone=Flat(), plugins=[S.GradientProjection()]).attach_stream(TinyStream(n_tasks=2))
    with pytest.raises(ValueError, match="sample_size must be >= 1, got 0"):
        S.GradientProjection(sample_size=0)


# ------------------------------------------------------------------------------------------------------ warm-up
class SeenRate(Plugin):
    def __init__(self) -> None:
        super().__init__()
        self.rates: list[float] = []

    @override
    def before_optimizer_step(self, module: ContinualModule, optimizer: torch.optim.Optimizer) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_warmup_ramps_each_task_linearly_and_restores_the_rate() -> None:
    seen = SeenRate()
    model = S.Naive(
        backbone=MLP(in_features=16, hidden=(8,)),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.4),
        plugins=[S.LRWarmup(warmup_steps=4), seen],
    )
    trainer, _ = fit(model, TinyStream(n_tasks=2, batch_size=8), plot=False)  # 6 steps a task
    ramp = [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    torch.testing.assert_close(torch.tensor(seen.rates), torch.tensor(ramp + ramp))
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.4
    model = S.Naive(backbone=Flat(), plugins=[S.LRWarmup(warmup_steps=4, first_task=False), seen := SeenRate()])
    fit(model, TinyStream(n_tasks=2, batch_size=8), plot=False)
    assert seen.rates[:6] == [seen.rates[0]] * 6 and seen.rates[6] == pytest.approx(seen.rates[0] / 4)


# ------------------------------------------------------------------------------------------- nearest-mean head
def test_nearest_mean_head_predicts_the_class_of_the_nearest_memory_mean() -> None:
    # memory: class 0 at (1, 0) and (3, 0) -> mean (2, 0); class 1 at (0, 2) -> mean (0, 2); in the first 2 pixels
    mem = torch.zeros(3, 1, 4, 4)
    mem.view(3, 16)[:, :2] = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    plugin = S.NearestMeanHead(source="memory", normalize=False)
    model = _er_with_memory(plugin, mem, torch.tensor([0, 0, 1]))
    plugin.on_setup(model)
    model.current_task = 0  # the first task's classes 0, 1: the memory holds both
    model._update_seen_mask()
    queries = torch.zeros(2, 1, 4, 4)
    queries.view(2, 16)[:, :2] = torch.tensor([[1.4, 1.5], [0.5, 0.3]])  # nearer (0, 2); nearer (2, 0)... by hand:
    # sample 0: |(1.4,1.5)-(2,0)| = 1.615, |(1.4,1.5)-(0,2)| = 1.487 -> class 1; sample 1: 1.526 vs 1.761 -> class 0
    model.eval()
    scores = model.class_scores(queries, torch.zeros(2, dtype=torch.long))
    assert scores.argmax(1).tolist() == [1, 0]
    torch.testing.assert_close(scores[0, :2], -torch.tensor([(0.36 + 2.25) ** 0.5, (1.96 + 0.25) ** 0.5]))
    assert torch.isinf(scores[:, 2:]).all(), "classes of unseen tasks stay masked"


def test_nearest_mean_head_leaves_training_unchanged_and_running_means_count_every_sample() -> None:
    def run(plugins: list[Plugin]) -> tuple[dict[str, Tensor], S.ER]:  # the state without the plugins' entries
        torch.manual_seed(0)
        model = S.ER(buffer_size=20, replay_batch_size=4, backbone=MLP(in_features=16, hidden=(8,), dropout=0.3),
                     plugins=plugins)  # fmt: skip
        fit(model, TinyStream(n_tasks=2, batch_size=8), plot=False)
        return {k: v for k, v in model.state_dict().items() if not k.startswith("plugins.")}, model

    plain, _ = run([])
    head = S.NearestMeanHead(source="running")
    with_head, _ = run([head])
    for k, v in plain.items():
        assert torch.equal(v, with_head[k]), f"the nearest-mean head changed training: {k}"
    assert head.counts.tolist() == [24.0] * 4  # every training sample counted once (1 epoch a task)


# --------------------------------------------------------------------------------------------------------- CLS-ER
def _clser(**kwargs: Any) -> S.CLSER:
    model = S.CLSER(buffer_size=10, replay_batch_size=2, backbone=Flat(), num_classes=4, **kwargs)
    model.attach_stream(TinyStream(n_tasks=2))
    return model


def test_clser_models_are_the_closed_form_moving_averages_after_k_steps() -> None:
    model = _clser(plastic_update_freq=1.0, plastic_alpha=0.8, stable_update_freq=0.5, stable_alpha=0.6, ema_seed=3)
    w0 = model.head.weight.detach().clone()
    thetas = [torch.full_like(w0, float(k)) for k in range(1, 6)]
    plastic, stable = w0.clone(), w0.clone()
    for step, theta in enumerate(thetas, start=1):
        with torch.no_grad():
            model.head.weight.copy_(theta)
        model.update_ema_models(step)
        u_s = torch.rand(2, generator=derived_generator(3, step))[1].item()  # the documented draw of the stable model
        plastic = min(1 - 1 / (step + 1), 0.8) * plastic + (1 - min(1 - 1 / (step + 1), 0.8)) * theta
        if u_s < 0.5:
            stable = min(1 - 1 / (step + 1), 0.6) * stable + (1 - min(1 - 1 / (step + 1), 0.6)) * theta
    # by hand for the plastic model (updated at every step): a = 1/2, 2/3, 3/4, 0.8, 0.8
    by_hand = ((((w0 * 0.5 + 0.5) * (2 / 3) + 2 / 3) * 0.75 + 0.75) * 0.8 + 0.8) * 0.8 + 1.0
    torch.testing.assert_close(model.plastic.head.weight, by_hand)
    torch.testing.assert_close(model.plastic.head.weight, plastic)
    torch.testing.assert_close(model.stable.head.weight, stable)
    fired = [torch.rand(2, generator=derived_generator(3, s))[1].item() < 0.5 for s in range(1, 6)]
    assert any(fired) and not all(fired), "the seed must exercise both outcomes"


def test_clser_consistency_target_is_the_more_confident_teacher_and_the_stable_model_predicts() -> None:
    model = _clser()
    model.current_task = 1
    model._update_seen_mask()
    with torch.no_grad():
        for m in (model.plastic, model.stable):
            m.head.weight.zero_(), m.head.bias.zero_()
        model.plastic.head.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))  # confident in class 0
        model.stable.head.bias.copy_(torch.tensor([0.0, 2.0, 0.0, 0.0]))  # confident in class 1
    x, task = torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    target = model.consistency_target(x, torch.tensor([0, 1, 2]), task)
    # label 0: plastic p = e^3/(e^3+3) > stable's 1/(e^2+3); label 1: stable; label 2: plastic 1/(e^3+3) < 1/(e^2+3)
    assert torch.equal(target[0], model.plastic.head.bias) and torch.equal(target[1], model.stable.head.bias)
    assert torch.equal(target[2], model.stable.head.bias)
    model.eval()
    assert model.class_scores(x, task).argmax(1).tolist() == [1, 1, 1]


def test_clser_trains_and_its_stable_model_tracks_the_working_model() -> None:
    torch.manual_seed(0)
    model = S.CLSER(buffer_size=20, replay_batch_size=4, backbone=MLP(in_features=16, hidden=(8,)),
                    stable_update_freq=1.0, stable_alpha=0.5)  # fmt: skip
    fit(model, TinyStream(n_tasks=2, batch_size=8), plot=False)
    assert not torch.equal(model.stable.head.weight, model.head.weight)
    assert (model.stable.head.weight - model.head.weight).abs().max() < 0.5
    with pytest.raises(ValueError, match=r"stable_alpha must be in \[0, 1\], got 2"):
        S.CLSER(stable_alpha=2.0)


# ------------------------------------------------------------------------------------------------------------ LPR
def test_lpr_preconditions_a_linear_layer_as_computed_by_hand_and_moves_replayed_outputs_less() -> None:
    torch.manual_seed(0)
    mem = torch.randn(5, 1, 4, 4)
    plugin = S.LayerwiseProximalReplay(omega_0=2.0)
    model = _er_with_memory(plugin, mem, torch.tensor([0, 1, 0, 1, 0]))
    plugin.on_setup(model)
    assert list(plugin.layers(model)) == ["head"]
    inverses = plugin.compute(model, mem)
    a = torch.cat([mem.flatten(1), torch.ones(5, 1)], 1).double()  # inputs of the head, with the bias column
    p = torch.eye(17, dtype=torch.float64) + 2.0 * a.T @ a / 5
    torch.testing.assert_close(inverses["head"], torch.linalg.inv(p).float())
    g_w, g_b = torch.randn(4, 16), torch.randn(4)
    model.head.weight.grad, model.head.bias.grad = g_w.clone(), g_b.clone()
    plugin.inverses = inverses
    plugin.precondition(model)
    by_hand = (torch.cat([g_w, g_b[:, None]], 1).double() @ torch.linalg.inv(p)).float()
    torch.testing.assert_close(model.head.weight.grad, by_hand[:, :16])
    torch.testing.assert_close(model.head.bias.grad, by_hand[:, 16])
    # an SGD step with the preconditioned gradient changes the replayed samples' outputs less than the plain one
    lr = 0.5
    plain = lr * (torch.cat([g_w, g_b[:, None]], 1) @ a.float().T)
    preconditioned = lr * (by_hand @ a.float().T)
    assert preconditioned.norm() < 0.5 * plain.norm()


def test_lpr_conv_and_batchnorm_preconditioners_follow_the_definition() -> None:
    conv, bn = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)
    plugin = S.LayerwiseProximalReplay(omega_0=1.0, beta=1.0)
    rows, per_sample = plugin.layer_inputs(conv, torch.randn(3, 1, 4, 4))
    assert rows.shape == (3 * 16, 10) and per_sample == 16 and torch.all(rows[:, -1] == 1)

    net = nn.Sequential(conv, bn)  # layers named "0" and "1"
    x = torch.randn(3, 1, 4, 4)
    inverses = plugin.compute(net, x)  # type: ignore[arg-type]
    a, _ = plugin.layer_inputs(conv, x)
    torch.testing.assert_close(inverses["0"], torch.linalg.inv(torch.eye(10).double() + a.T @ a / (3 * 16)).float())
    z = (conv(x).detach() - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[
        None, :, None, None
    ]
    z0 = z[:, 0].flatten().double()
    stats = torch.tensor([[(z0 * z0).sum(), z0.sum()], [z0.sum(), float(len(z0))]], dtype=torch.float64)
    torch.testing.assert_close(inverses["1"][0], torch.linalg.inv(torch.eye(2).double() + stats / (3 * 16)).float())


# ------------------------------------------------------------------------------------------ composition by config
MITIGATIONS = [
    {"class_path": "clfw.strategies.GradientProjection", "init_args": {"sample_size": 4}},
    {"class_path": "clfw.strategies.LRWarmup", "init_args": {"warmup_steps": 3}},
    {"class_path": "clfw.strategies.NearestMeanHead", "init_args": {"source": "memory"}},
    {"class_path": "clfw.strategies.LayerwiseProximalReplay", "init_args": {"every_n_steps": 2}},
]


@pytest.mark.parametrize("host", ["ER", "DERPP"])
def test_every_mitigation_composes_with_er_and_derpp_from_a_config(host: str) -> None:
    from tests.test_contract import TINY_KWARGS

    config = model_config(f"clfw.strategies.{host}", TINY_KWARGS[host])
    config["init_args"]["plugins"] = MITIGATIONS
    model = build_model(config)
    assert [type(p).__name__ for p in model.plugins] == [
        "GradientProjection", "LRWarmup", "NearestMeanHead", "LayerwiseProximalReplay",
    ]  # fmt: skip
    _, matrix = fit(model, TinyStream(n_tasks=2, batch_size=8), plot=False)
    assert len(matrix.rows) == 2 and model.plugins[3].inverses

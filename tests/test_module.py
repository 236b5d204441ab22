"""ContinualModule: the task lifecycle in one fit, head masking, composition with plugins, and bad input."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from clfw import AccuracyMatrix, Batch, ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.metrics import summarize
from clfw.strategies import Cumulative, Joint, Naive
from tests.helpers import L2Plugin, RecordEvents, ScaledLoss, TinyStream, fit


def tiny_model(cls: type[ContinualModule] = Naive, **kwargs: Any) -> ContinualModule:
    return cls(backbone=MLP(in_features=16, hidden=(16,)), optimizer=lambda p: torch.optim.Adam(p, lr=0.01), **kwargs)


class Recorder(Plugin):
    """Records what each training epoch served and the order of hooks."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log
        self.served: dict[int, list[tuple[int, int]]] = {}

    @override
    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        pairs = list(zip(batch.task.tolist(), batch.index.tolist(), strict=False))
        self.served.setdefault(module.current_epoch, []).extend(pairs)

    @override
    def on_task_start(self, module: ContinualModule, task: int) -> None:
        self.log.append(("plugin start", task))

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        self.log.append(("plugin end", task))


class Watched(Naive):
    """Records its hooks, how many accuracy-matrix rows exist at its task end, and the head at task boundaries."""

    def __init__(self, log: list, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_log = log
        self.heads: dict[tuple[str, int], Tensor] = {}

    @override
    def on_task_start(self, task: int) -> None:
        self.hook_log.append(("strategy start", task))
        self.heads["start", task] = self.head.weight.detach().clone()

    @override
    def on_task_end(self, task: int) -> None:
        matrix = next(cb for cb in self.trainer.callbacks if isinstance(cb, AccuracyMatrix))
        self.hook_log.append(("strategy end", task, len(matrix.rows)))
        self.heads["end", task] = self.head.weight.detach().clone()


class EventLog(RecordEvents):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.hook_log = log

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        super().on_task_end(trainer, module, task)
        self.hook_log.append(("callback end", task))


def watched_fit(scenario: str = "class", epochs_per_task: int = 3, n_tasks: int = 2, **dm_kwargs: Any):
    log: list = []
    recorder = Recorder(log)
    m = Watched(
        log,
        backbone=MLP(in_features=16, hidden=(16,)),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        plugins=[recorder],
    )
    events = EventLog(log)
    dm = TinyStream(n_tasks=n_tasks, scenario=scenario, epochs_per_task=epochs_per_task, batch_size=8, **dm_kwargs)
    # the AccuracyMatrix is registered before the events callback, so it runs first among callbacks
    trainer, matrix = fit(m, dm, callbacks=[events])
    return m, dm, trainer, matrix, recorder, events, log


def test_tasks_switch_at_the_right_epochs_in_one_fit() -> None:
    _m, dm, trainer, _matrix, recorder, events, _ = watched_fit(epochs_per_task=3)
    assert trainer.max_epochs == 6 and trainer.current_epoch == 6
    assert [e for e in events.events if e[0] == "start"] == [("start", 0, 0), ("start", 1, 3)]
    assert [e for e in events.events if e[0] == "end"] == [("end", 0, 2), ("end", 1, 5)]
    for epoch, pairs in recorder.served.items():
        task = epoch // 3
        assert {t for t, _ in pairs} == {task}
        assert sorted(i for _, i in pairs) == list(range(len(dm.stream.tasks[task].train)))  # each sample once


def test_end_hook_runs_before_task_end_evaluation_and_hook_order() -> None:
    *_, matrix, _, _, log = watched_fit(epochs_per_task=1)
    assert log == [
        ("strategy start", 0),
        ("plugin start", 0),
        ("strategy end", 0, 0),
        ("plugin end", 0),
        ("callback end", 0),
        ("strategy start", 1),
        ("plugin start", 1),
        ("strategy end", 1, 1),
        ("plugin end", 1),
        ("callback end", 1),
    ]
    assert len(matrix.rows) == 2


def test_task_end_evaluation_sees_what_the_end_hook_did() -> None:
    class PerfectAtEnd(Naive):
        """At task end, replaces the head so that it predicts class 0 for every input."""

        @override
        def on_task_end(self, task: int) -> None:
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    m = PerfectAtEnd(backbone=MLP(in_features=16, hidden=(8,)))
    _, matrix = fit(m, TinyStream(n_tasks=2, batch_size=8))
    # class 0 is half of task 0's test set and absent from task 1
    assert matrix.rows == [[0.5, 0.0], [0.5, 0.0]]


def test_class_il_masks_unseen_classes_in_training_and_evaluation() -> None:
    m, dm, *_ = watched_fit("class", epochs_per_task=1)
    init, after0 = m.heads["start", 0], m.heads["end", 0]
    assert torch.equal(init[2:], after0[2:]), "unseen classes' head rows must get no gradient"
    assert not torch.equal(init[:2], after0[:2])
    m.current_task = 0
    m._update_seen_mask()
    mask = m.class_mask(torch.tensor([0, 1]))
    assert mask.tolist() == [[True, True, False, False]] * 2
    scores = m.predict(dm.stream.tasks[1].test.batch(torch.arange(3), dm.eval_transform()).x, torch.tensor([1, 1, 1]))
    assert torch.isinf(scores[:, 2:]).all() and torch.isfinite(scores[:, :2]).all()


def test_task_il_masks_each_sample_to_its_task() -> None:
    m, *_ = watched_fit("task", epochs_per_task=1)
    start1, end1 = m.heads["start", 1], m.heads["end", 1]
    assert torch.equal(start1[:2], end1[:2]), "task 0's head rows must not move while training task 1"
    assert m.class_mask(torch.tensor([1, 0])).tolist() == [[False, False, True, True], [True, True, False, False]]


def test_domain_il_has_no_mask() -> None:
    m, dm, *_ = watched_fit("domain", epochs_per_task=1)
    assert dm.stream.tasks[1].classes == (0, 1, 2, 3)
    assert m.class_mask(torch.tensor([0, 1])) is None


def test_cumulative_serves_all_seen_tasks() -> None:
    log: list = []
    recorder = Recorder(log)
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(tiny_model(Cumulative, plugins=[recorder]), dm)
    assert {t for t, _ in recorder.served[0]} == {0}
    assert sorted(recorder.served[1]) == sorted((t, i) for t in (0, 1) for i in range(48))


def test_joint_visits_every_sample_once_per_pass_with_sequential_step_count() -> None:
    log: list = []
    recorder = Recorder(log)
    dm = TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)
    m = tiny_model(Joint, plugins=[recorder])
    trainer, _ = fit(m, dm)
    everything = sorted((t, i) for t in (0, 1) for i in range(48))
    assert sorted(recorder.served[0] + recorder.served[1]) == everything  # pass 1 = epochs 0-1
    assert sorted(recorder.served[2] + recorder.served[3]) == everything  # pass 2 = epochs 2-3
    assert trainer.global_step == 4 * 6  # as a sequential strategy: 2 tasks x 2 epochs x 48 / 8 batches
    assert m.seen_mask.all()


def test_plugin_composes_with_a_strategy_written_outside_clfw(tmp_path) -> None:
    plugin = L2Plugin(weight=0.5)
    m = ScaledLoss(factor=2.0, backbone=MLP(in_features=16, hidden=(8,)), plugins=[plugin])
    logger = pl.loggers.CSVLogger(tmp_path)
    fit(m, TinyStream(n_tasks=2, batch_size=8), logger=logger, log_every_n_steps=1)
    assert m.task_end_calls == [0, 1] and plugin.events == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert int(plugin.steps) == 12 and "plugins.0.steps" in m.state_dict()
    text = open(os.path.join(logger.log_dir, "metrics.csv")).read()
    assert "train/l2_logits" in text and "train/loss" in text


def test_loss_includes_plugin_terms() -> None:
    class Const(Plugin):
        @override
        def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
            return {"const": torch.tensor(3.0)}

    m = tiny_model(plugins=[Const()])
    dm = TinyStream()
    fit(m, dm, max_epochs=dm.total_epochs)  # sets up the module
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.eval_transform())
    with torch.no_grad():
        plain = m.training_loss(batch)["loss"]
        m.log = lambda *a, **k: None  # outside a Trainer loop
        total = m.training_step(batch, 0)
    assert torch.allclose(total, plain + 3.0)


def test_optimizer_is_recreated_per_task_only_when_asked() -> None:
    class Spy(Naive):
        seen: list[tuple[int, int]]

        @override
        def on_task_start(self, task: int) -> None:
            opt = self.trainer.optimizers[0]
            self.seen.append((id(opt), len(opt.state)))

    for reset in (False, True):
        seen: list[tuple[int, int]] = []
        Spy.seen = seen
        fit(Spy(backbone=MLP(in_features=16, hidden=(8,)), reset_optimizer_per_task=reset), TinyStream(batch_size=8))
        assert (seen[0][0] != seen[1][0]) == reset
        assert seen[1][1] == (0 if reset else 2 * 2), "a fresh Adam has no state; the old one has 2 tensors x 2 layers"


def test_accuracy_matrix_matches_a_direct_computation(tmp_path) -> None:
    m = tiny_model()
    dm = TinyStream(n_tasks=2, epochs_per_task=2, batch_size=8)
    _trainer, matrix = fit(m, dm, root=str(tmp_path))
    m.eval()
    for j, task in enumerate(dm.stream.tasks):
        x = dm.eval_transform()(task.test.x)
        acc = (m.predict(x, task.test.task).argmax(1) == task.test.y).double().mean().item()
        assert matrix.rows[-1][j] == pytest.approx(acc, abs=1e-12)
    assert matrix.rows[0][1] == 0.0  # class-IL: task 1's classes are masked after task 0
    assert len(matrix.initial) == 2
    data = json.load(open(tmp_path / "metrics.json"))
    assert data["accuracy_matrix"] == matrix.rows and data["tasks_completed"] == 2
    assert data["summary"] == summarize(matrix.rows, matrix.initial, "class")
    assert data["summary"]["forward_transfer"] is None and len(data["per_class_accuracy"][1]) == 4


def test_validation_split_is_evaluated_after_each_task(tmp_path) -> None:
    logger = pl.loggers.CSVLogger(tmp_path)
    _, matrix = fit(tiny_model(), TinyStream(val_fraction=0.25, batch_size=8), logger=logger)
    assert len(matrix.val_rows) == 2
    assert "val/acc" in open(os.path.join(logger.log_dir, "metrics.csv")).read()


def test_unsupported_scenario_is_refused_before_training() -> None:
    class ClassOnly(Naive):
        supported_scenarios = ("class",)

    m = ClassOnly(backbone=MLP(in_features=16, hidden=(8,)))
    with pytest.raises(ValueError, match=r"ClassOnly does not support the 'task' scenario \(supported: \['class'\]\)"):
        fit(m, TinyStream(scenario="task"))


def test_backbone_that_cannot_take_the_inputs_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"cannot process this stream's inputs of shape \(1, 4, 4\).*784"):
        fit(Naive(backbone=MLP(in_features=784)), TinyStream())
    with pytest.raises(ValueError, match="needs an int attribute num_features"):
        Naive(backbone=nn.Linear(16, 4), num_classes=4)


def test_head_size_must_match_the_stream() -> None:
    with pytest.raises(ValueError, match="num_classes=10, but the stream has 4 classes"):
        fit(Naive(backbone=MLP(in_features=16), num_classes=10), TinyStream())


def test_default_backbone_is_sized_from_the_stream() -> None:
    m = Naive()
    fit(m, TinyStream())
    assert m.backbone.in_features == 16 and m.head.out_features == 4


def test_max_epochs_set_by_hand_is_refused() -> None:
    with pytest.raises(ValueError, match=r"max_epochs=3, but this stream takes .* = 2 epochs"):
        fit(tiny_model(), TinyStream(), max_epochs=3)

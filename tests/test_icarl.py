"""iCaRL: exemplar sets by herding and cut to their prefixes, NME classification, distillation targets."""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import ContinualCallback, ContinualModule
from clfw.backbones import MLP
from clfw.buffers import Memory, ReservoirBuffer, herding
from clfw.strategies import ICaRL
from tests.helpers import TinyStream, fit


class KeepMemory(ContinualCallback):
    """Copies the exemplar memory after each task end."""

    def __init__(self) -> None:
        self.after: list[Memory] = []

    @override
    def on_task_end(self, trainer: object, module: ContinualModule, task: int) -> None:
        self.after.append(copy.deepcopy(module.buffer))


def features(m: ICaRL, dm: TinyStream, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(m.eval().features(dm.eval_transform()(x)), dim=1)


def test_exemplars_are_herded_then_cut_to_their_prefix_and_nme_uses_their_means() -> None:
    torch.manual_seed(0)
    m = ICaRL(backbone=MLP(in_features=16, hidden=(8,)), memory_size=20, replay_batch_size=4)
    dm = TinyStream(n_tasks=2, batch_size=8)
    keep = KeepMemory()
    fit(m, dm, callbacks=[keep])
    first, final = keep.after
    assert first.y[: len(first)].tolist() == [0] * 10 + [1] * 10, "20 // 2 classes = 10 per class after task 0"
    assert final.y[: len(final)].tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for c in (0, 1):  # Algorithm 5: the first 5 of the earlier selection
        assert torch.equal(final.x[c * 5 : c * 5 + 5], first.x[c * 10 : c * 10 + 5])
    data = dm.stream.tasks[1].train
    for c in (2, 3):  # Algorithm 4 with the model of the task end (the final model)
        pos = torch.nonzero(data.y == c).flatten()
        chosen = pos[herding(features(m, dm, data.x[pos]), 5)]
        assert torch.equal(final.x[(c - 2) * 5 + 10 : (c - 2) * 5 + 15], data.x[chosen])
    # nearest mean of exemplars, L2-normalised features and means
    test = dm.stream.tasks[0].test.batch(torch.arange(20), dm.eval_transform())
    means = torch.stack([F.normalize(features(m, dm, final.x[final.y == c]).mean(0), dim=0) for c in range(4)])
    f = features(m, dm, dm.stream.tasks[0].test.x[:20])
    expected = torch.cdist(f, means).argmin(1)
    with torch.no_grad():
        assert torch.equal(m.predict(test.x, test.task).argmax(1), expected)
        assert not torch.equal(m.predict(test.x, test.task), m.masked(m(test.x), test.task))


def test_loss_is_bce_with_one_hot_new_classes_and_the_previous_models_sigmoids_for_old_ones() -> None:
    torch.manual_seed(0)
    m = ICaRL(backbone=MLP(in_features=16, hidden=(8,)), memory_size=20, replay_batch_size=4)
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    batch = dm.stream.tasks[1].train.batch(torch.arange(8), dm.train_transform())
    draw = copy.deepcopy(m.buffer).sample(4)
    with torch.no_grad():
        out = m.training_loss(batch)
        x = torch.cat([batch.x, dm.train_transform()(draw["x"])])
        y = torch.cat([batch.y, draw["y"]])
        old = torch.sigmoid(m.teacher(x))[:, :2]
        targets = torch.cat([old, F.one_hot(y, 4)[:, 2:].float()], dim=1)
        expected = F.binary_cross_entropy_with_logits(m(x), targets, reduction="sum") / len(y)
    assert torch.allclose(out["loss"], expected)
    assert isinstance(m.buffer, Memory) and not isinstance(m.buffer, ReservoirBuffer)

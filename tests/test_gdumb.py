"""GDumb: class-balanced memory from the stream, the model retrained from scratch on it at each task end."""

from __future__ import annotations

import torch

from clfw.backbones import MLP
from clfw.strategies import GDumb
from tests.helpers import TinyStream, fit


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_memory_is_class_balanced_and_the_model_is_retrained_from_scratch_on_it() -> None:
    torch.manual_seed(0)
    m = GDumb(
        backbone=MLP(in_features=16, hidden=(16,)),
        buffer_size=18,
        epochs=20,
        batch_size=6,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )
    dm = TinyStream(n_tasks=2, batch_size=8, epochs_per_task=1)
    initial = flat(m.backbone)
    _, matrix = fit(m, dm)
    assert sorted(m.buffer.class_counts().values()) == [4, 4, 5, 5], "18 slots over 4 classes, greedily balanced"
    assert set(m.buffer.task.tolist()) == {0, 1}
    final = torch.cat([flat(m.backbone), flat(m.head)])
    assert not torch.equal(flat(m.backbone), initial)
    # from scratch: the retrained model does not depend on the weights it starts from
    with torch.no_grad():
        for p in [*m.backbone.parameters(), *m.head.parameters()]:
            p.add_(torch.randn_like(p))
    again = m.retrain(1)
    assert torch.equal(torch.cat([flat(again.backbone), flat(again.head)]), final)
    assert matrix.rows[-1][0] > 0.5 and matrix.rows[-1][1] > 0.5, "the memory-trained model knows both tasks"


def test_the_stream_does_not_train_the_model() -> None:
    m = GDumb(backbone=MLP(in_features=16, hidden=(8,)), buffer_size=10, epochs=1)
    dm = TinyStream(n_tasks=2, batch_size=8)
    fit(m, dm)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["placeholder"]
    assert m.placeholder.item() == 0.0

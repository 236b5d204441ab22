"""PODNet: the backbones' intermediates, and the loss terms of a training batch on a convolutional backbone against
the formulas (themselves doctested on hand-computed values) applied to the batch's own features and maps."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from clfw import Batch
from clfw.backbones import MLP, ResNet18, SmallCNN, intermediates
from clfw.strategies import PODNet
from tests.helpers import TinyStream, fit


@pytest.mark.parametrize(
    ("backbone", "shape", "maps"),
    [
        (MLP(in_features=16, hidden=(8, 6), dropout=0.2), (2, 1, 4, 4), [(2, 8), (2, 6)]),
        (SmallCNN(1, (4, 6)), (2, 1, 8, 8), [(2, 4, 4, 4), (2, 6, 2, 2)]),
        (ResNet18(3, 4), (2, 3, 16, 16), [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2)]),
    ],
)
def test_intermediates_are_the_stage_outputs_and_end_in_the_features(backbone, shape, maps) -> None:
    backbone.eval()
    x = torch.randn(*shape)
    features, outputs = intermediates(backbone, x)
    assert torch.allclose(features, backbone(x)) and [tuple(o.shape) for o in outputs] == maps
    with pytest.raises(ValueError, match="no forward_intermediates"):
        intermediates(torch.nn.Linear(2, 2), torch.randn(1, 2))


def test_terms_of_a_batch_on_a_convolutional_backbone() -> None:
    torch.manual_seed(0)
    model = PODNet(buffer_size=20, replay_batch_size=6, proxies_per_class=3, backbone=SmallCNN(1, (4, 6)),
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip
    fit(model, TinyStream(n_tasks=3, num_classes_total=6, batch_size=8))
    model.current_task = 2  # as during task 2: 6 classes seen, 2 new
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 4, 4, generator=g)
    batch = Batch(x, torch.tensor([4, 5, 4, 5]), torch.full((4,), 2), torch.arange(4))
    memory = {"x": model.buffer.x[:6], "y": model.buffer.y[:6], "task": model.buffer.task[:6]}
    model.draw_replay = lambda b: memory  # type: ignore[method-assign]
    model.eval()
    out = model.training_loss(batch)
    x = torch.cat([batch.x, model.replay_inputs(memory["x"])])
    y = torch.cat([batch.y, memory["y"]])
    f, maps = intermediates(model.backbone, x)
    with torch.no_grad():
        f_old, maps_old = intermediates(model.teacher.backbone, x)
    factor = (6 / 2) ** 0.5

    def pooled(m: torch.Tensor) -> torch.Tensor:  # width- and height-pooled squared map, normalised
        return F.normalize(torch.cat([m.pow(2).sum(3).flatten(1), m.pow(2).sum(2).flatten(1)], 1), dim=1)

    spatial = torch.stack(
        [(pooled(m) - pooled(o)).norm(dim=1).mean() for m, o in zip(maps, maps_old, strict=True)]
    ).mean()
    assert len(maps) == 2 and maps[0].dim() == 4
    assert torch.allclose(out["pod_spatial"], 3.0 * factor * spatial, atol=1e-6)
    assert torch.allclose(out["pod_flat"], factor * (1 - F.cosine_similarity(f, f_old, dim=1)).mean(), atol=1e-6)
    sims = PODNet.lsc(f, model.proxies, 3)
    assert torch.allclose(model(x), model.scale * sims, atol=1e-6)
    nca = PODNet.nca(sims, y, model.scale, 0.6)
    assert torch.allclose(out["loss"], nca + out["pod_spatial"] + out["pod_flat"], atol=1e-5)


def test_it_learns_and_its_scale_stays_positive() -> None:
    """A learnable scale that could turn negative zeroed the NCA hinge by inverting the ranking: the model then
    predicted the wrong class of every pair (0.5% on MNIST's first task)."""
    torch.manual_seed(0)
    model = PODNet(buffer_size=20, replay_batch_size=4, proxies_per_class=2, backbone=MLP(in_features=16, hidden=(8,)),
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9))  # fmt: skip
    _, matrix = fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8, epochs_per_task=3))
    assert matrix.rows[0][0] >= 0.9 and float(model.scale) > 0


@pytest.mark.parametrize("k", [3, 30])  # 30 > the 24 samples of a class: its features repeated
def test_new_proxies_are_the_k_means_centres_of_the_new_classes_features(k: int) -> None:
    """The reference's ``imprinted``/``kmeans`` weight generation, checked against scikit-learn's KMeans run here."""
    from sklearn.cluster import KMeans

    torch.manual_seed(0)
    model = PODNet(buffer_size=20, replay_batch_size=4, proxies_per_class=k, backbone=SmallCNN(1, (4, 6)),
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip
    seen: dict[str, torch.Tensor] = {}
    original = model.on_task_start

    def spy(task: int) -> None:
        if task == 1:
            model.eval()
            with torch.no_grad():
                batches = list(model.datamodule.task_loader(1))
                order = torch.argsort(torch.cat([b.index for b in batches]))
                seen["features"] = torch.cat([model.features(b.x) for b in batches])[order]
                seen["y"] = torch.cat([b.y for b in batches])[order]
            model.train()
            seen["before"] = model.proxies.detach().clone()
        original(task)
        if task == 1:
            seen["after"] = model.proxies.detach().clone()

    model.on_task_start = spy  # type: ignore[method-assign]
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8))
    before, after = seen["before"], seen["after"]
    assert torch.equal(before[: 2 * k], after[: 2 * k])  # old classes' proxies untouched
    norm = before[: 2 * k].norm(dim=1).mean()
    for c in (2, 3):
        unit = F.normalize(seen["features"][seen["y"] == c].double(), dim=1)
        if k < len(unit):
            centres = torch.from_numpy(
                KMeans(n_clusters=k, n_init=10, random_state=0).fit(unit.numpy()).cluster_centers_
            )
        else:
            centres = unit[torch.arange(k) % len(unit)]
        assert torch.allclose(after[c * k : (c + 1) * k], centres.float() * norm, atol=1e-5), c
    assert not torch.allclose(before[2 * k :], after[2 * k :])


def test_without_imprinting_new_proxies_keep_their_initialisation() -> None:
    torch.manual_seed(0)
    model = PODNet(buffer_size=20, replay_batch_size=4, proxies_per_class=2, backbone=SmallCNN(1, (4, 6)),
                   imprint=False, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip
    seen: list[torch.Tensor] = []
    original = model.on_task_start

    def spy(task: int) -> None:
        seen.append(model.proxies.detach().clone())
        original(task)
        seen.append(model.proxies.detach().clone())

    model.on_task_start = spy  # type: ignore[method-assign]
    fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8))
    assert torch.equal(seen[2], seen[3]) and not torch.equal(seen[1], seen[2])  # task 1's start; task 0 trained


def test_its_scale_grows_and_it_learns_a_second_task() -> None:
    """With the paper's hinge [.]_+ around the NCA loss and a learnable scale, an unmet margin is cheapest to "fix" by
    shrinking the scale: on MNIST it fell from 1 to 0.06 within two tasks, after which the loss sat at log(n - 1)
    and nothing new was learned (0.00 on every old task, chance on the new one). The reference's default has no
    hinge, so a larger scale lowers the loss once the classes are separated."""
    torch.manual_seed(0)
    model = PODNet(buffer_size=40, replay_batch_size=8, proxies_per_class=2, backbone=MLP(in_features=16, hidden=(8,)),
                   spatial_factor=0.0, flat_factor=0.0,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))  # fmt: skip
    _, matrix = fit(model, TinyStream(n_tasks=2, num_classes_total=4, batch_size=8, epochs_per_task=3))
    assert float(model.scale) > 1.0
    assert matrix.rows[1][0] >= 0.8 and matrix.rows[1][1] >= 0.8, matrix.rows

"""EASE on hand-computable cases: the semantic-guided prototype complement, the reweighted subspace scores, the
AdaptFormer adapter beside timm's blocks, and earlier tasks' adapters frozen while a later task trains."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from clfw import ContinualCallback, ContinualModule
from clfw.adapters import Adapter, adapted_block_forward, run_adapted_blocks, vit_adapters
from clfw.prompt import vit_tokens
from clfw.strategies import EASE
from tests.helpers import TinyStream, fit, snapshot, tiny_vit


def make(**extra: Any) -> EASE:
    torch.manual_seed(0)
    sgd = {"optimizer": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4)}
    return EASE(vit=tiny_vit(), **{"bottleneck": 4, **sgd, **extra})


def test_prototype_complement_weights_new_classes_by_similarity_in_the_old_subspace() -> None:
    # classes: 0 in task 0; 1, 2 in task 1; 3 in task 2. D = 2. Entries a class has no data for are junk (50, -50):
    # the complement must never read them (it reads only subspaces <= the class's task)
    junk = [50.0, -50.0]
    p = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],  # subspace 0: data for every class
            [junk, [2.0, 0.0], [0.0, 4.0], [6.0, 0.0]],  # subspace 1: data for tasks 1, 2
            [junk, junk, junk, [0.0, 3.0]],  # subspace 2: data for task 2
        ]
    )
    class_task = torch.tensor([0, 1, 1, 2])

    two = p[:2, :3].clone()  # after task 1: class 0 in subspace 1 from classes 1, 2 (cosines 1 and 0 in subspace 0)
    EASE.complete_prototypes(two, class_task[:3], task=1)
    e = math.e
    assert two[1, 0].tolist() == pytest.approx([2 * e / (1 + e), 4 / (1 + e)], abs=1e-6)  # [1.462117, 1.075766]
    assert torch.equal(two[:, 1:], p[:2, 1:3]) and torch.equal(two[0], p[0, :3]), "data prototypes stay as they are"

    EASE.complete_prototypes(p, class_task, task=2)
    # class 0 in subspace 1, recomputed over classes 1, 2, 3 (tasks 1..2): cosines 1, 0, -1 in subspace 0
    s = e + 1 + 1 / e
    w = [e / s, 1 / s, 1 / e / s]  # [0.665241, 0.244728, 0.090031]
    assert p[1, 0].tolist() == pytest.approx([2 * w[0] + 6 * w[2], 4 * w[1]], abs=1e-6)  # [1.870668, 0.978913]
    # subspace 2 has data for class 3 only: every older class's prototype there is class 3's
    assert torch.equal(p[2, :3], torch.tensor([[0.0, 3.0]] * 3))


def test_reweighted_scores_weight_the_own_subspace_one_and_the_others_alpha_over_k_minus_1() -> None:
    f = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # [K=3, B=1, D=2]
    p = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],  # cosines with f_0: 1, 0, 1
            [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]],  # with f_1: 1, 1, 0
            [[1.0, 1.0], [1.0, 0.0], [-1.0, -1.0]],  # with f_2: 1, 1/sqrt(2), -1
        ]
    )
    class_task = torch.tensor([0, 1, 2])
    scores = EASE.reweighted_scores(f, p, class_task, alpha=0.1)
    # own cosine + 0.1 / 2 * the other two: 1 + 0.05 * 2; 1 + 0.05 / sqrt(2); -1 + 0.05 * 1
    assert scores[0].tolist() == pytest.approx([1.1, 1 + 0.05 / math.sqrt(2), -0.95], abs=1e-6)
    # without reweighting: cosines of the 6-d concatenations: 4 / (2 * 2), 2 / (2 sqrt 3), -1 / (2 * 2)
    plain = EASE.reweighted_scores(f, p, class_task, alpha=0.1, reweight=False)
    assert plain[0].tolist() == pytest.approx([1.0, 1 / math.sqrt(3), -0.25], abs=1e-6)
    one = EASE.reweighted_scores(f[:1], p[:1], class_task, alpha=0.1)  # one subspace: plain cosines
    assert one[0, 0].item() == pytest.approx(1.0) and one[0, 1].item() == pytest.approx(0.1 * 0.0)


def test_a_zero_adapter_is_exactly_the_frozen_vit_and_a_trained_one_adds_beside_the_mlp() -> None:
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.randn(5, 1, 4, 4)
    tokens = vit_tokens(vit, x)
    adapters = vit_adapters(vit, bottleneck=4).eval()
    assert torch.equal(run_adapted_blocks(vit, tokens, adapters), vit.forward_features(x)), "zero up-projection"
    block, adapter = vit.blocks[0], adapters[0]
    with torch.no_grad():
        adapter.up.weight.normal_()
    mid = tokens + block.drop_path1(block.ls1(block.attn(block.norm1(tokens))))  # after the attention residual
    with torch.no_grad():
        out = adapted_block_forward(block, tokens, adapter)
        assert not torch.allclose(out, block(tokens))
        torch.testing.assert_close(out, block(tokens) + adapter(mid))  # parallel to the MLP, fed the same stream
        assert not torch.allclose(run_adapted_blocks(vit, tokens, adapters), vit.forward_features(x))
    # the strategy: before training its features are the frozen ViT's [CLS]
    m = make()
    m.attach_stream(TinyStream(n_tasks=2))
    with torch.no_grad():
        assert torch.equal(m.eval().features(x), m.backbone.forward_features(x)[:, 0])


class _AtTaskStart(ContinualCallback):
    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.trainable: dict[int, set[int]] = {}

    def on_task_start(self, trainer: Any, module: ContinualModule, task: int) -> None:
        self.states[task] = snapshot(module)
        self.trainable[task] = {id(p) for p in module.trainable_parameters()}


def test_earlier_adapters_stay_frozen_while_a_later_task_trains() -> None:
    m, dm = make(), TinyStream(n_tasks=2, batch_size=8)
    m.attach_stream(dm)
    initial = snapshot(m)
    seen = _AtTaskStart()
    fit(m, dm, callbacks=[seen])
    final = snapshot(m)

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
        keys = [k for k in a if k.startswith(prefix)]
        assert keys, prefix
        return all(torch.equal(a[k], b[k]) for k in keys)

    start1 = seen.states[1]
    assert not same(initial, start1, "adapters.0.") and same(initial, start1, "adapters.1."), "task 0 trains its own"
    assert same(start1, final, "adapters.0.") and not same(start1, final, "adapters.1."), "task 1 trains its own only"
    assert same(initial, final, "backbone.")
    adapter_ids = {k: {id(p) for p in m.adapters[k].parameters()} for k in (0, 1)}
    assert adapter_ids[1] <= seen.trainable[1] and not adapter_ids[0] & seen.trainable[1]

    # prediction: both subspaces, each [CLS] under its own task's adapter, scored against the stored prototypes
    x = next(iter(dm.task_loader(0, "test"))).x
    with torch.no_grad():
        m.eval()
        tokens = vit_tokens(m.backbone, x)
        feats = torch.stack([run_adapted_blocks(m.backbone, tokens, m.adapters[k])[:, 0] for k in (0, 1)])
        expected = EASE.reweighted_scores(feats, m.prototypes, m.class_task, alpha=0.1)
        assert torch.equal(m.predict(x, torch.zeros(len(x), dtype=torch.long)), expected)
    assert m.prototypes.abs().sum(-1).gt(0).all(), "every class has a prototype in every subspace after task 1"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bottleneck": 0}, "bottleneck"),
        ({"alpha": -0.1}, "alpha"),
        ({"adapter_dropout": 1.0}, "adapter_dropout"),
        ({"adapter_scale": 0.0}, "adapter_scale"),
        ({"reset_optimizer_per_task": False}, "reset_optimizer_per_task"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_adapter_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="bottleneck"):
        Adapter(16, bottleneck=0)


def test_a_stream_whose_tasks_share_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="each class in one task"):
        make().attach_stream(TinyStream(n_tasks=2, blurry_m=20))

"""InfLoRA: the design of A_t against a direct eigendecomposition, DualGPM's threshold on hand-made spectra, the LoRA
attention against timm's with W + B A, interference-freeness on a toy layer, and the wiring in the strategy."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw import ContinualCallback, ContinualModule
from clfw.prompt import block_forward, prefix_attention
from clfw.strategies import InfLoRA
from clfw.strategies.inflora import A_SCALE, design_lora_a, dualgpm_update, lora_qkv
from tests.helpers import TinyStream, fit, tiny_vit

D = 8


def rotation(d: int = D, seed: int = 0) -> Tensor:
    """A random orthogonal matrix (float64): the hand cases are diagonal in its columns."""
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def with_energies(q: Tensor, energies: list[float]) -> Tensor:
    """``Q diag(sqrt(e)) Q^T``: its singular values squared are ``energies`` (the fractions DualGPM compares)."""
    return q @ torch.diag(torch.tensor(energies, dtype=torch.float64).sqrt()) @ q.T


def projector(columns: Tensor) -> Tensor:
    return columns @ columns.T


def test_design_on_a_diagonal_case_skips_the_earlier_direction() -> None:
    h = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    earlier = torch.eye(5, dtype=torch.float64)[:, :1]  # e0 is taken: the top-2 of what is left are e1 and e2
    a = design_lora_a(h, earlier, False, 2)
    assert torch.allclose(a.abs(), torch.eye(5, dtype=torch.float64)[1:3])
    assert torch.allclose(design_lora_a(h, earlier[:, :0], False, 2).abs(), torch.eye(5, dtype=torch.float64)[:2])


def test_design_is_orthogonal_to_the_earlier_basis_and_spans_the_projected_top_eigenvectors() -> None:
    g = np.random.default_rng(0)
    x = g.normal(size=(60, D)) * np.array([4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.7, 0.3])
    h = x.T @ x / len(x)
    earlier = np.linalg.qr(g.normal(size=(D, 3)))[0]
    p = np.eye(D) - earlier @ earlier.T
    vals, vecs = np.linalg.eigh(p @ h @ h.T @ p)  # (P H)(P H)^T: its eigenvectors are P H's left singular vectors
    assert vals[-2] - vals[-3] > 1e-3 * vals[-1], "a clear gap, so the top-2 subspace is well defined"
    top = torch.from_numpy(vecs[:, -2:])
    ht, basis = torch.from_numpy(h), torch.from_numpy(earlier)
    a = design_lora_a(ht, basis, False, 2)
    assert torch.allclose(a @ a.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert (a @ basis).abs().max() < 1e-12, "A_t's rows are orthogonal to the earlier tasks' subspace"
    assert torch.allclose(projector(a.T), projector(top), atol=1e-10)
    complement = torch.from_numpy(np.linalg.svd(earlier)[0][:, 3:])  # the same subspace stored as its complement
    assert torch.allclose(projector(design_lora_a(ht, complement, True, 2).T), projector(top), atol=1e-10)
    unprojected = design_lora_a(ht, basis[:, :0], False, 2)
    assert (unprojected @ basis).abs().max() > 0.1, "control: without the projection A_t meets the earlier subspace"


def test_dualgpm_keeps_the_directions_below_the_threshold_and_switches_to_the_complement() -> None:
    q, none = rotation(), torch.zeros(D, 0, dtype=torch.float64)
    first = with_energies(q, [0.5, 0.3, 0.12, 0.08, 0, 0, 0, 0])  # cumulative 0.5, 0.8, 0.92, 1.0
    basis, retain = dualgpm_update(none, False, first, 0.95)
    assert basis.shape == (D, 3) and not retain, "0.5, 0.8, 0.92 are below 0.95: three directions"
    assert torch.allclose(projector(basis), projector(q[:, :3]), atol=1e-10)
    assert dualgpm_update(none, False, first, 0.9)[0].shape[1] == 2, "0.92 is not below 0.9: two"

    # subspace mode: 0.3 of the energy is inside span(q0..q2); q3 (0.4) brings it to 0.7, q4 (0.2) to 0.9
    second = with_energies(q, [0.3, 0, 0, 0.4, 0.2, 0.1, 0, 0])
    kept, retain = dualgpm_update(basis, False, second, 0.65)
    assert kept.shape[1] == 4 and not retain, "0.7 >= 0.65 after q3: four = D / 2 directions, still the subspace"
    assert torch.allclose(projector(kept), projector(q[:, :4]), atol=1e-10)
    complement, retain = dualgpm_update(basis, False, second, 0.85)
    assert retain and complement.shape[1] == 3, "q3 and q4 reach 0.9 >= 0.85: five > D / 2, the complement is kept"
    assert torch.allclose(projector(complement), projector(q[:, 5:]), atol=1e-10)

    # complement mode: 0.5 of the energy lies in span(q5, q6, q7); removing q5 (0.3) leaves 0.2 >= 0.1, removing q6
    # (0.15) leaves 0.05 < 1 - 0.9: q5 and q6 leave the complement
    third = with_energies(q, [0.5, 0, 0, 0, 0, 0.3, 0.15, 0.05])
    last, retain = dualgpm_update(complement, True, third, 0.9)
    assert retain and last.shape[1] == 1
    assert torch.allclose(projector(last), projector(q[:, 7:]), atol=1e-10)


def test_lora_attention_is_timms_with_zero_b_and_uses_w_plus_ba_otherwise() -> None:
    torch.manual_seed(0)
    block = tiny_vit().blocks[0].eval()
    x, a = torch.randn(3, 5, 16), torch.randn(4, 16)
    zero = torch.zeros(16, 4)
    with torch.no_grad():
        unchanged = block_forward(block, x, qkv_fn=partial(lora_qkv, block.attn, a=a, b_k=zero, b_v=zero))
        assert torch.equal(unchanged, block(x)), "B = 0: bit for bit timm's block"
        b_k, b_v = torch.randn(16, 4), torch.randn(16, 4)
        merged = copy.deepcopy(block)
        merged.attn.qkv.weight[16:32] += b_k @ a  # timm's qkv rows: queries, keys, values
        merged.attn.qkv.weight[32:] += b_v @ a
        out = block_forward(block, x, qkv_fn=partial(lora_qkv, block.attn, a=a, b_k=b_k, b_v=b_v))
        assert torch.allclose(out, merged(x), atol=1e-5)
        assert not torch.allclose(out, block(x), atol=1e-2)


def make(n_tasks: int = 3, **kwargs: Any) -> tuple[InfLoRA, TinyStream]:
    torch.manual_seed(0)
    m = InfLoRA(vit=tiny_vit(), pretrained=False, rank=2, optimizer=lambda p: torch.optim.Adam(p, lr=0.01), **kwargs)
    dm = TinyStream(n_tasks=n_tasks, num_classes_total=2 * n_tasks, batch_size=8)
    m.attach_stream(dm)
    return m, dm


def test_the_strategys_vit_runs_every_branch_so_far_as_w_plus_the_sum_of_b_a() -> None:
    m, _ = make()
    m.eval()
    x = torch.randn(4, 1, 4, 4)
    vit = m.backbone
    with torch.no_grad():
        assert torch.equal(m.encode(x), vit.forward_features(x)), "before training: timm's ViT"
        m.current_task = 1
        m.lora_a.normal_()
        assert torch.equal(m.encode(x), vit.forward_features(x)), "B = 0: timm's ViT whatever A"
        m.lora_b.normal_()
        merged = copy.deepcopy(vit)
        for layer, block in enumerate(merged.blocks):
            for s in range(2):  # tasks 0 and 1; task 2's branch is not used yet
                block.attn.qkv.weight[16:32] += m.lora_b[s, 0, layer] @ m.lora_a[s, layer]
                block.attn.qkv.weight[32:] += m.lora_b[s, 1, layer] @ m.lora_a[s, layer]
        assert torch.allclose(m.encode(x), merged.forward_features(x), atol=1e-4)


def test_training_task_2_leaves_task_1s_outputs_in_the_protected_subspace_unchanged() -> None:
    """A toy attention layer: A_1 from task 1's representations, B_1 as if trained, DualGPM's basis from them; then
    A_2 is designed against it and B_2 trained on task 2. On task-1 inputs inside the basis the layer's output is
    unchanged; with an unprojected A_2 (the control) it is not."""
    torch.manual_seed(0)
    attn = tiny_vit().blocks[0].attn.eval().requires_grad_(False)
    inside = torch.linalg.qr(torch.randn(16, 4, dtype=torch.float64))[0]
    tokens = torch.linalg.qr(torch.randn(30, 4, dtype=torch.float64))[0] * 30**0.5  # orthogonal, mean square 1
    x1 = (tokens * torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64) @ inside.T).reshape(6, 5, 16)
    x2 = torch.randn(6, 5, 16, dtype=torch.float64)

    def representation(x: Tensor) -> Tensor:
        flat = x.reshape(-1, 16)
        return flat.T @ flat / len(flat)

    def layer(x: Tensor, a: Tensor, b_k: Tensor, b_v: Tensor) -> Tensor:
        return prefix_attention(attn, x, qkv_fn=partial(lora_qkv, attn, a=a, b_k=b_k, b_v=b_v))

    h1 = representation(x1)
    a1 = (A_SCALE * design_lora_a(h1, torch.zeros(16, 0, dtype=torch.float64), False, 2)).float()
    b1_k, b1_v = torch.randn(16, 2), torch.randn(16, 2)
    basis, retain = dualgpm_update(torch.zeros(16, 0, dtype=torch.float64), False, h1, 0.995)
    assert not retain and basis.shape[1] == 2, "energies 81, 16, 1, 1/16 (of 98.06): cumulative 0.826, 0.989, 0.9994"
    protected = (x1 @ projector(basis)).float()  # task 1's inputs, inside the protected subspace

    def task_2(project: bool) -> Tensor:
        a2 = A_SCALE * design_lora_a(representation(x2), basis if project else basis[:, :0], False, 2)
        a = torch.cat([a1, a2.float()])
        b2_k, b2_v = torch.zeros(16, 2, requires_grad=True), torch.zeros(16, 2, requires_grad=True)
        optimizer = torch.optim.Adam([b2_k, b2_v], lr=0.1)
        target = torch.randn(6, 5, 16, generator=torch.Generator().manual_seed(1))
        for _ in range(20):
            out = layer(x2.float(), a, torch.cat([b1_k, b2_k], 1), torch.cat([b1_v, b2_v], 1))
            loss = (out - target).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert b2_k.abs().max() > 0.5, "B_2 trained"
        with torch.no_grad():
            before = layer(protected, a1, b1_k, b1_v)
            after = layer(protected, a, torch.cat([b1_k, b2_k], 1), torch.cat([b1_v, b2_v], 1))
        return (after - before).abs().max() / before.abs().max()

    assert task_2(project=True) < 1e-5, "interference-free on the protected subspace"
    assert task_2(project=False) > 1e-2, "control: an A_2 that ignores the earlier subspace interferes"


class Capture(ContinualCallback):
    """At each task start (after the strategy's): the DualGPM basis and the new A; at each task end: B."""

    def __init__(self) -> None:
        self.starts: dict[int, tuple[list[tuple[Tensor, bool]], Tensor]] = {}
        self.ends: dict[int, Tensor] = {}

    @override
    def on_task_start(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        assert isinstance(module, InfLoRA)
        bases = [module.basis(layer) for layer in range(len(module.backbone.blocks))]
        self.starts[task] = (bases, module.lora_a[task].detach().clone())

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self.ends[task] = module.lora_b.detach().clone()  # type: ignore[union-attr]


def test_the_strategy_designs_each_a_against_the_basis_and_trains_only_the_current_b() -> None:
    m, dm = make(threshold=0.9, threshold_end=1.0)
    capture = Capture()
    fit(m, dm, callbacks=[capture])
    for task in range(3):
        bases, a = capture.starts[task]
        assert torch.allclose(a.norm(dim=-1), torch.full((3, 2), A_SCALE), atol=1e-6), "rows of norm 1/sqrt(3)"
        for (basis, retain), rows in zip(bases, a.double(), strict=True):
            if task == 0:
                assert basis.shape[1] == 0
            elif retain:  # the basis spans the free space: A_t lies in it
                assert torch.allclose(rows @ projector(basis), rows, atol=1e-5)
            else:
                assert (rows @ basis).abs().max() < 1e-5
            assert task == 0 or basis.shape[1] > 0
    for task in range(3):
        b = capture.ends[task]
        assert b[task].abs().max() > 0, f"task {task}'s B trained"
        assert not b[task + 1 :].any(), "later tasks' B untouched"
        for later in range(task + 1, 3):
            assert torch.equal(capture.ends[later][task], b[task]), f"task {task}'s B fixed after it"
    assert int(m.gpm_size.min()) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank must be in"),
        ({"rank": 17}, "got 17"),
        ({"threshold": 0.0}, "threshold=0.0"),
        ({"threshold": 0.99, "threshold_end": 0.9}, "threshold_end=0.9"),
        ({"cache_queries": True}, "cache_queries"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InfLoRA(vit=tiny_vit(), pretrained=False, **kwargs)

"""Checkpoints hold everything a resumed run needs: the in-process resume checks (a killed run resumed from the CLI:
tests/test_resume_cli.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from clfw.backbones import MLP
from clfw.benchmarks import SplitMNIST
from clfw.strategies import Naive
from tests.helpers import fit

ROOT = Path(__file__).resolve().parents[1]


def test_resume_without_loader_state_would_differ() -> None:
    """Guard for the resume tests (the SIGKILL matrix is tests/test_resume_cli.py): a different data order changes
    the weights, so bit-identity is not vacuous."""
    outs = []
    for seed in (0, 1):
        torch.manual_seed(0)
        dm = SplitMNIST(n_tasks=5, batch_size=64, seed=seed)
        m = Naive(backbone=MLP(hidden=(32,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
        fit(m, dm)
        outs.append(m.head.weight.detach().clone())
    assert not torch.equal(outs[0], outs[1])


def test_same_seed_is_bit_identical() -> None:
    weights, rows = [], []
    for _ in range(2):
        torch.manual_seed(0)
        dm = SplitMNIST(n_tasks=5, batch_size=64)
        m = Naive(backbone=MLP(hidden=(32,), dropout=0.2), optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
        _, matrix = fit(m, dm)
        weights.append({k: v.clone() for k, v in m.state_dict().items()})
        rows.append(matrix.rows)
    assert rows[0] == rows[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

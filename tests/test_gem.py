"""GEM: the quadratic program's solution against hand-computed minimisers of ||g' - g||^2 under g' . g_k >= 0, and the
update a training run applies."""

from __future__ import annotations

import sys

import pytest
import torch

from clfw.backbones import MLP
from clfw.strategies import GEM
from tests.helpers import TinyStream, fit


def t(*rows: tuple[float, ...] | float) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize(
    ("g", "G", "expected"),
    [
        # no constraint violated: g itself
        (t(1.0, 2.0), t((0.0, 1.0), (1.0, 0.0)), t(1.0, 2.0)),
        # one violated and active: the component along g_1 removed
        (
            t(1.0, -1.0),
            t(
                (0.0, 1.0),
            ),
            t(1.0, 0.0),
        ),
        # one violated, one satisfied and left inactive by the projection
        (t(1.0, -1.0), t((0.0, 1.0), (1.0, 0.0)), t(1.0, 0.0)),
        # both violated but only the second active: projecting onto x + y = 0 gives (1, -1, 1), which has x >= 0;
        # removing the first constraint's component first, as sequential projections would, gives (0, -3, 1)
        (t(-1.0, -3.0, 1.0), t((1.0, 0.0, 0.0), (1.0, 1.0, 0.0)), t(1.0, -1.0, 1.0)),
        # two active constraints at an angle: x >= 0 and y >= x; g' = 0 = g + G^T v with v = (3, 2) >= 0
        (t(-1.0, -2.0), t((1.0, 0.0), (-1.0, 1.0)), t(0.0, 0.0)),
    ],
)
def test_projection_is_the_hand_computed_minimiser(g: torch.Tensor, G: torch.Tensor, expected: torch.Tensor) -> None:
    out = GEM.project(g, G)
    assert torch.allclose(out, expected, atol=1e-9), out
    if bool((G @ g >= 0).all()):
        assert out is g


def test_memory_strength_is_the_dual_lower_bound() -> None:
    # g = (1, -0.2), g_1 = (0, 1): the exact dual v = 0.2 is raised to gamma = 0.5, so g' = g + 0.5 g_1 = (1, 0.3)
    out = GEM.project(
        t(1.0, -0.2),
        t(
            (0.0, 1.0),
        ),
        memory_strength=0.5,
    )
    assert torch.allclose(out, t(1.0, 0.3), atol=1e-9)


def test_training_updates_never_conflict_with_an_earlier_task() -> None:
    """In a task-IL run, every applied gradient has a non-negative dot product with each earlier task's memory
    gradient (exact projection: memory_strength 0, eps 0) and the projection is needed at some step."""
    calls = []
    project = GEM.project

    def spy(g, G, memory_strength=0.0, eps=0.0):
        out = project(g, G, memory_strength, eps)
        calls.append((g.clone(), G.clone(), out.clone()))
        return out

    torch.manual_seed(0)
    model = GEM(buffer_size=30, memory_strength=0.0, eps=0.0, backbone=MLP(in_features=16, hidden=(16,)),
                optimizer=lambda p: torch.optim.SGD(p, lr=0.3))  # fmt: skip
    model.project = spy  # type: ignore[method-assign]
    fit(model, TinyStream(n_tasks=3, num_classes_total=6, scenario="task", batch_size=8))
    assert len(model.buffer) == 30 and model.buffer.task.tolist().count(0) == 10
    assert {G.shape[0] for _, G, _ in calls} == {1, 2}, "one row per earlier task"
    projected = [(g, G, out) for g, G, out in calls if not torch.equal(g, out)]
    assert projected, "some update conflicted with an earlier task"
    for _, G, out in calls:
        assert bool((G.double() @ out.double() >= -1e-4 * G.norm()).all())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="memory_strength and eps must be >= 0"):
        GEM(memory_strength=-1.0)


def test_without_quadprog_the_cli_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path) -> None:
    from clfw.cli import main

    monkeypatch.setitem(sys.modules, "quadprog", None)  # import quadprog raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/quickstart.yaml", "--config", "configs/model/gem.yaml",
              f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'pip install "clfw[gem]"' in err and len(err.strip().splitlines()) == 1, err

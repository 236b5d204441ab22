"""Native Lightning DDP on 2 CPU processes: sharded training, identical replicas, exact distributed evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clfw import ContinualEvaluation, evaluate
from clfw.backbones import MLP
from clfw.strategies import Naive
from clfw.testing import ContractError, check_replicas, ddp_results
from tests.helpers import TinyStream


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_ddp_two_processes(ddp_suite: Path) -> None:
    r0, r1 = (torch.load(ddp_suite / "fit" / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for k in r0["state_dict"]:
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), f"replicas differ in {k}"
    assert r0["rows"] == r1["rows"]
    # each rank trained on its own half of every task: together they cover each task's 60 samples
    assert not set(r0["pairs"]) & set(r1["pairs"])
    assert set(r0["pairs"]) | set(r1["pairs"]) == {(t, i) for t in (0, 1) for i in range(60)}

    # the distributed task-end evaluation (21 test samples per task: odd, so padding would show) equals one process's
    dm = TinyStream(n_tasks=2, num_classes_total=6, train_per_class=20, test_per_class=7, batch_size=8)
    model = Naive(backbone=MLP(in_features=16, hidden=(16,), dropout=0.2), num_classes=6)
    model.load_state_dict(r0["state_dict"])
    model.attach_stream(dm)
    model.current_task = 1
    model._update_seen_mask()
    acc, _ = evaluate(model, dm, [0, 1])
    assert acc == r0["rows"][-1]
    assert len(dm.stream.tasks[0].test) == 21

    # per-iteration evaluation: 15 samples per task split 8/7 over the ranks; the summed counts give the
    # single-process accuracy of the same subsample, at every step and on both ranks
    assert r0["curves"] == r1["curves"] and r0["last"] == r1["last"]
    positions = ContinualEvaluation(samples_per_task=15, tasks="all").subsample_positions([21, 21])
    model.eval()
    with torch.no_grad():
        expected = []
        for task, pos in zip(dm.stream.tasks, positions, strict=True):
            batch = task.test.batch(pos, dm.eval_transform())
            expected.append((model.predict(batch.x, batch.task).argmax(1) == batch.y).double().mean().item())
    assert r0["curves"][-1] == expected


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_every_strategy_under_ddp_keeps_identical_replicas(ddp_suite: Path) -> None:
    """clfw.testing's DDP check of every strategy, composed with Refresh and a replay memory, by the kit's own launch
    script (run inside the suite's launch); a strategy whose state is rank-local, in the same launch, is caught."""
    from tests.scripts.ddp_suite import contract_configs
    from tests.test_contract import NAMES

    results = ddp_results(ddp_suite / "contract", list(contract_configs()))
    for name in NAMES:
        check_replicas(name, *results[name])
    with pytest.raises(ContractError, match=r"rank-local \[ddp\]: the replicas differ in indices_seen"):
        check_replicas("rank-local", *results["rank-local"])
    er = results["ER"][0]["state_dict"]
    # 2 tasks x 48 samples, both ranks' shards offered to one shared memory: ER's own and the replay plugin's
    assert int(er["buffer.seen"]) == int(er["plugins.1.memory.seen"]) == 96
    assert len(set(er["buffer.task"].tolist())) == 2

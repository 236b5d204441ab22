"""mylab's strategy and plugin pass clfw's contract checks (clfw.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clfw.testing import CHECKS, COMPANIONS, check_ddp, check_strategy, compose, model_config

TINY = {  # init_args as in a config file; clfw.testing adds a tiny backbone and optimizer
    "mylab.AlignedReplay": {"buffer_size": 20, "replay_batch_size": 4},
    "mylab.L2Anchor": {"weight": 0.1},  # a plugin: checked on clfw.strategies.Naive
}


@pytest.mark.parametrize("strategy", sorted(TINY))
def test_single_process_checks(strategy: str, tmp_path: Path) -> None:
    check_strategy(strategy, TINY[strategy], checks=[c for c in CHECKS if c != "ddp"], tmp_path=tmp_path)


def test_ddp_keeps_identical_replicas(tmp_path: Path) -> None:  # both in one 2-process launch
    check_ddp({name: compose(model_config(name, args), COMPANIONS) for name, args in TINY.items()}, tmp_path)

"""The suite's DDP jobs in one 2-process launch (gloo): ``python tests/scripts/ddp_suite.py OUTDIR [JOB...]``.

Each job is the ``main(outdir)`` of a script module here and writes into ``OUTDIR/<job>``; the tests read those files
(``tests/conftest.py``'s ``ddp_suite`` fixture runs the launch once per test session). Launching torch and Lightning
costs seconds per process on a 2-core machine, so the jobs share one pair of processes: Lightning's ``strategy="ddp"``
re-runs this command line for rank 1 at the first fit, and later fits and the bare collectives reuse its process group.
The jobs that end in an exception on purpose (a preemption, a non-finite loss) run last.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch


def _equivalence(outdir: str) -> None:
    from tests.scripts.ddp_equivalence import main
    from tests.test_ddp_equivalence import FAMILIES

    main(outdir, 2, FAMILIES)


def contract_configs() -> dict[str, dict]:
    """Every strategy of the contract table composed with the kit's companions, and a strategy with rank-local state
    (which the check must catch)."""
    from clfw.testing import COMPANIONS, compose, model_config
    from tests.test_contract import NAMES, config

    configs = {name: compose(config(name), COMPANIONS) for name in NAMES}
    configs["rank-local"] = model_config("tests.test_testing_kit.RankLocalState")
    return configs


def _contract(outdir: str) -> None:
    import json

    from clfw.testing.ddp import main

    path = Path(outdir) / "configs.json"
    if torch.distributed.get_rank() == 0:
        path.write_text(json.dumps(list(contract_configs().values())))
    torch.distributed.barrier()
    main([str(path), outdir])


def _resume_world(outdir: str) -> None:
    """Both 2-process parts of tests/test_ddp_resume_world.py: from the start, and resumed from the 1-process
    checkpoints the ``ddp_suite`` fixture wrote before the launch."""
    from tests.scripts.ddp_resume_world import main
    from tests.test_ddp_resume_world import FAMILIES

    main(outdir, 2, "start", FAMILIES)
    main(outdir, 2, "1", FAMILIES)


def _job(module: str) -> Callable[[str], None]:
    def run(outdir: str) -> None:
        __import__(f"tests.scripts.{module}", fromlist=["main"]).main(outdir)

    return run


JOBS: dict[str, Callable[[str], None]] = {  # in launch order: the first one is a Lightning fit, which starts rank 1
    "fit": _job("ddp_fit"),
    "task_free": _job("ddp_task_free"),
    "buffer": _job("ddp_buffer"),
    "fisher": _job("ddp_fisher"),
    "equivalence": _equivalence,
    "contract": _contract,
    "resume_world": _resume_world,
    "preemption": _job("ddp_preemption"),
    "nan": _job("ddp_nan"),
}


def main(outdir: str, names: list[str]) -> None:
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        raise ValueError(f"unknown jobs {unknown}; expected some of {list(JOBS)}")
    for name in names or list(JOBS):
        out = Path(outdir) / name
        out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(1)
        JOBS[name](str(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

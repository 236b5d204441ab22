"""Fits every strategy of ``clfw.strategies.__all__`` (tiny kwargs from tests/test_contract.py) on an accelerator and
checks that its accuracy matrix is complete. Run on a GPU machine from the repository root:
``PYTHONPATH=. python tests/scripts/accelerator_smoke.py`` (with ``cpu`` as argument it runs on the CPU, which the test
suite already covers).
"""

from __future__ import annotations

import sys

import torch

from tests.helpers import TinyStream, fit
from tests.test_contract import NAMES, make


def main(accelerator: str = "gpu") -> None:
    failed = []
    for name in NAMES:
        torch.manual_seed(0)
        try:
            model = make(name)
            _, matrix = fit(model, TinyStream(n_tasks=2, batch_size=8), accelerator=accelerator)
            assert len(matrix.rows) == 2, matrix.rows
            print(f"{name}: ok, final row {[round(a, 3) for a in matrix.rows[-1]]}", flush=True)
        except Exception as err:  # report every strategy, then fail
            failed.append(name)
            print(f"{name}: FAILED {type(err).__name__}: {err}", flush=True)
    if failed:
        raise SystemExit(f"failed on {accelerator}: {failed}")


if __name__ == "__main__":
    main(*sys.argv[1:])

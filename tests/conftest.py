import os
import sys
import warnings

import pytest

# Lightning's advice to add workers is noise for in-memory tensors on 2 CPU cores.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _quiet_lightning(caplog):
    caplog.set_level("WARNING", logger="pytorch_lightning")
    yield


@pytest.fixture(autouse=True, scope="session")
def _only_canonical_import_names():
    """clfw's strategies and streams are ``clfw.strategies`` / ``clfw.benchmarks``. Importing the source folders under
    their bare names (possible from the repository root) would create second copies of every class, whose checkpoints
    and ``isinstance`` checks disagree with the installed ones: no test may do it."""
    yield
    bare = sorted(name for name in ("strategies", "benchmarks") if name in sys.modules)
    assert not bare, f"a test imported {bare} by the bare name; use clfw.strategies / clfw.benchmarks"

import os
import sys
import warnings
from pathlib import Path

import pytest

# Lightning's advice to add workers is noise for in-memory tensors on 2 CPU cores.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
os.environ.setdefault("PYTHONHASHSEED", "0")
if "PYTEST_XDIST_WORKER" in os.environ:
    # pytest-xdist runs one worker per core (pyproject's addopts): one thread each, and for the processes they start
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def ddp_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the suite's one 2-process DDP launch (``tests/scripts/ddp_suite.py``): ``<folder>/<job>`` holds
    each job's files. Under pytest-xdist the workers share it: the first worker that needs it launches, under a file
    lock, and the others wait for it (the tests also carry ``@pytest.mark.xdist_group("ddp")``)."""
    from filelock import FileLock

    from tests.helpers import run_script
    from tests.scripts.ddp_resume_world import main as resume_world
    from tests.test_ddp_resume_world import FAMILIES

    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent  # the session's folder, above each worker's own
    out, done = shared / "ddp_suite", shared / "ddp_suite.done"
    with FileLock(str(shared / "ddp_suite.lock")):
        if not done.exists():
            out.mkdir(exist_ok=True)
            (out / "resume_world").mkdir(exist_ok=True)
            resume_world(str(out / "resume_world"), 1, "start", FAMILIES)  # the checkpoints the launch resumes
            run_script("ddp_suite.py", str(out), cwd=out)
            done.touch()
    return out

"""The example plug-in of docs/writing-a-strategy.md (examples/mylab), installed outside the repository, trains through
the ``clfw`` command and passes its own tests, which run clfw.testing on it.

The package is copied to a temporary folder and pip-installed from there into another (``--target``, no
dependencies, no build isolation: offline), which the subprocesses get as ``PYTHONPATH``; nothing is installed into the
environment. pytest's ``testpaths`` do not include examples/, so the example's own test runs only here, in its own
pytest session (its pyproject.toml makes it the rootdir).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The example's source copied out of the tree, and an environment whose ``PYTHONPATH`` holds its installed copy."""
    tmp = tmp_path_factory.mktemp("example")
    source, site = tmp / "mylab", tmp / "site"
    shutil.copytree(ROOT / "examples" / "mylab", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    out = subprocess.run([*pip, "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (site / "mylab" / "aligned_replay.py").exists()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return source, env


@pytest.mark.slow
def test_the_cli_trains_the_outside_strategy_with_the_outside_plugin(
    outside: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    _, env = outside
    clfw = Path(sys.executable).with_name("clfw")
    command = [str(clfw)] if clfw.exists() else [sys.executable, "-m", "clfw"]
    args = [
        "fit", "--model", "mylab.AlignedReplay", "--model.buffer_size", "20", "--model.plugins+=mylab.L2Anchor",
        "--model.plugins.weight=0.1", "--data", "SplitMNIST", "--data.n_tasks=2", "--data.epochs_per_task=1",
        "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    out = subprocess.run([*command, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]

    (metrics,) = tmp_path.rglob("metrics.json")
    data = json.loads(metrics.read_text())
    assert data["tasks_completed"] == 2 and len(data["accuracy_matrix"]) == 2
    model = data["run"]["config"]["model"]
    assert model["class_path"] == "mylab.AlignedReplay"
    assert [p["class_path"] for p in model["init_args"]["plugins"]] == ["mylab.L2Anchor"]
    # both hooks ran: the head was aligned at the end of task 1, the plugin anchored at the end of task 0
    (ckpt,) = tmp_path.rglob("*.ckpt")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert float(state["gamma"]) != 1.0 and bool(state["plugins.0.anchored"])
    weights = sum(v.numel() for k, v in state.items() if k.startswith(("backbone.", "head.")))
    assert state["plugins.0.anchor"].numel() == weights


@pytest.mark.slow
def test_the_example_passes_clfw_testing_in_its_own_test_session(outside: tuple[Path, dict[str, str]]) -> None:
    source, env = outside
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests"],
        cwd=source, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 passed" in out.stdout, out.stdout[-2000:]


def test_the_guide_shows_the_example_files_as_they_are() -> None:
    """docs/writing-a-strategy.md quotes the example's files whole (a block right after "`examples/mylab/...`:"):
    every quoted file equals the one the tests above install and run."""
    import re

    guide = (ROOT / "docs" / "writing-a-strategy.md").read_text()
    quoted = re.findall(r"`(examples/mylab/[^`]+)`:\n\n```[a-z]+\n(.*?)```", guide, flags=re.S)
    assert {path for path, _ in quoted} == {
        "examples/mylab/pyproject.toml",
        "examples/mylab/src/mylab/aligned_replay.py",
        "examples/mylab/src/mylab/l2_anchor.py",
        "examples/mylab/tests/test_mylab.py",
    }
    for path, text in quoted:
        assert text == (ROOT / path).read_text(), f"docs/writing-a-strategy.md quotes an outdated {path}"

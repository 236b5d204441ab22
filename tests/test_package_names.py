"""clfw's strategies and streams install as ``clfw.strategies`` / ``clfw.benchmarks``: the bare names ``strategies``
and ``benchmarks`` are unrelated packages on PyPI, and clfw must work beside them (issue 12, packaging).

- with fake top-level ``strategies`` and ``benchmarks`` packages first on ``sys.path``, clfw imports, a CLI run with
  short names trains, and the fake packages stay importable as themselves;
- an old class path (``strategies.ER``, in an argument or a config file) is refused with one line naming the new one;
- a checkpoint written before the rename (old class paths in its fingerprint and config) still resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import clfw.strategies
from clfw.backbones import MLP
from clfw.checkpoint import CheckpointError
from clfw.cli import main
from tests.helpers import TinyStream
from tests.test_no_silent_wrong_result import checkpoint_of, fit, naive

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data.n_tasks=2", "--data.epochs_per_task=1", "--trainer.limit_train_batches=2", "--data.batch_size=8"]
TINY += ["--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.enable_checkpointing=false"]


def fake_packages(root: Path) -> Path:
    """Top-level ``strategies`` and ``benchmarks`` packages that are not clfw's (as PyPI's are)."""
    for name in ("strategies", "benchmarks"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"WHO = 'the other {name}'\n")
    return root


def clfw_cli(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``clfw`` in a subprocess from ``cwd`` (not the repository, so its folders are not importable by accident)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    code = "import sys; from clfw.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_clfw_works_beside_unrelated_strategies_and_benchmarks_packages(tmp_path: Path) -> None:
    fakes = fake_packages(tmp_path / "site")
    code = textwrap.dedent("""
        import json, strategies, benchmarks, clfw.cli, clfw.strategies, clfw.benchmarks
        print(json.dumps([strategies.WHO, benchmarks.WHO, clfw.strategies.ER.__module__, clfw.benchmarks.__file__]))
    """)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(fakes)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    who_s, who_b, er_module, benchmarks_file = json.loads(out.stdout.strip().splitlines()[-1])
    assert (who_s, who_b) == ("the other strategies", "the other benchmarks")
    assert er_module == "clfw.strategies.er"
    assert Path(benchmarks_file).parent == ROOT / "benchmarks"

    run = clfw_cli(
        "fit", "--model=ER", "--data=SplitMNIST", "--data.source=offline", *TINY, cwd=tmp_path, pythonpath=fakes
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Accuracy matrix" in run.stdout


@pytest.mark.parametrize(
    ("args", "old", "new"),
    [
        (["--model=strategies.ER", "--data=SplitMNIST"], "strategies.ER", "clfw.strategies.ER"),
        (["--model=Naive", "--data=benchmarks.SplitMNIST"], "benchmarks.SplitMNIST", "clfw.benchmarks.SplitMNIST"),
        (["--model=Naive", "--model.plugins+=strategies.EWC"], "strategies.EWC", "clfw.strategies.EWC"),
    ],
)
def test_an_old_class_path_is_refused_naming_the_new_one(
    args: list[str], old: str, new: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(["fit", *args, *TINY], capsys)
    assert f"{old} is now {new}" in line


def test_an_old_class_path_in_a_config_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "old.yaml"
    config.write_text("model:\n  class_path: strategies.er.ER\n  init_args:\n    buffer_size: 20\n")
    line = refused(["fit", "--config", str(config), "--data=SplitMNIST", *TINY], capsys)
    assert "strategies.er.ER is now clfw.strategies.er.ER" in line


@pytest.mark.slow
def test_a_user_package_named_strategies_is_not_mistaken_for_an_old_path(tmp_path: Path) -> None:
    """Only names that exist in clfw are mapped: the user's own ``strategies.Mine`` reaches the parser unchanged."""
    fakes = fake_packages(tmp_path / "site")
    run = clfw_cli("fit", "--model=strategies.Mine", "--data=SplitMNIST", *TINY, cwd=tmp_path, pythonpath=fakes)
    assert run.returncode == 2
    assert "is now" not in run.stderr and "strategies.Mine" in run.stderr


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of ``clfw ARGS``, which must exit with code 2 before training. The check runs before the
    parser imports anything, so it holds whatever ``sys.path`` holds (``test_clfw_works_beside_...`` runs a fake
    ``strategies`` package in a subprocess)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clfw: error: "), lines
    return lines[0]


def _rename_to_old_paths(last: Path) -> None:
    ckpt = torch.load(last, weights_only=False)
    fingerprint = ckpt["clfw"]["fingerprint"]
    assert fingerprint["strategy"] == "clfw.strategies.naive.Naive"
    fingerprint["strategy"] = "strategies.naive.Naive"
    torch.save(ckpt, last)


def test_a_checkpoint_written_before_the_rename_still_resumes(tmp_path: Path) -> None:
    last = checkpoint_of(naive(), TinyStream(n_tasks=2, batch_size=8), tmp_path / "a")
    _rename_to_old_paths(last)
    fit(naive(), TinyStream(n_tasks=2, batch_size=8), ckpt_path=str(last), root=str(tmp_path / "b"))


def test_a_renamed_checkpoint_of_another_strategy_is_still_refused(tmp_path: Path) -> None:
    """The mapping renames; it does not make every old path equal to every new one."""
    last = checkpoint_of(naive(), TinyStream(n_tasks=2, batch_size=8), tmp_path / "a")
    _rename_to_old_paths(last)
    er = clfw.strategies.ER(backbone=MLP(in_features=16, hidden=(8,)), buffer_size=10, replay_batch_size=4)
    with pytest.raises(CheckpointError, match=r"'clfw\.strategies\.naive\.Naive' \(checkpoint\) != 'clfw\.strategies"):
        fit(er, TinyStream(n_tasks=2, batch_size=8), ckpt_path=str(last), root=str(tmp_path / "b"))

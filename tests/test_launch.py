"""Cluster launch paths (issue 15): the SLURM script's ``srun`` line is a valid ``clfw fit`` command, and a 2-process
run started by ``torchrun`` (not Lightning's own launcher) is the 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from clfw.cli import main

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "clfw.sbatch"


def srun_command(script: str, env: dict[str, str]) -> list[str]:
    """The script's ``srun`` command with its variables set from ``env`` (continuation lines joined)."""
    text = script.replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("srun ")]
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], line)
    return shlex.split(line)


def test_the_sbatch_script_asks_for_the_preemption_signal_and_its_srun_line_parses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = SBATCH.read_text()
    options = re.findall(r"^#SBATCH (\S+)", script, flags=re.M)
    assert "--signal=SIGUSR1@90" in options and "--requeue" in options
    per_node = next(o for o in options if o.startswith("--ntasks-per-node=")).split("=")[1]
    env = {
        "CONFIG": "configs/quickstart.yaml",
        "NAME": "clfw",
        "VERSION": "4242",
        "SLURM_NTASKS_PER_NODE": per_node,
        "SLURM_NNODES": "2",
    }
    words = srun_command(script, env)
    assert words[:3] == ["srun", "clfw", "fit"]
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main([*words[2:], "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err
    config = yaml.safe_load(out.out)
    trainer = config["trainer"]
    assert (trainer["devices"], trainer["num_nodes"], trainer["strategy"]) == (per_node, 2, "ddp")
    assert str(trainer["logger"]["init_args"]["version"]) == "4242" and config["resume"] == "auto"


TINY = """
seed_everything: 5
trainer:
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  logger: {class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: runs, name: tiny}}
  callbacks:
    - class_path: clfw.ContinualEvaluation
      init_args: {samples_per_task: 10, windows: [3], plot: false}
evaluation: {plot: false}
data:
  class_path: tests.helpers.TinyStream
  init_args: {n_tasks: 2, epochs_per_task: 2}
model:
  class_path: clfw.strategies.ER
  init_args:
    buffer_size: 20
    backbone: {class_path: clfw.backbones.MLP, init_args: {in_features: 16, hidden: [16], dropout: 0.0}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9}}
"""


def _result(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: metrics[k] for k in ("accuracy_matrix", "continual", "tasks_completed")}


@pytest.mark.slow
def test_a_torchrun_launch_is_the_one_process_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run.yaml").write_text(TINY)
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    cmd += ["-m", "clfw", "fit", "--config", "../run.yaml", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    cmd += ["--data.init_args.batch_size", "4"]
    out = subprocess.run(cmd, cwd=two, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert sorted(os.listdir(two / "runs" / "tiny")) == ["version_0"], "one run directory for both ranks"
    monkeypatch.chdir(one)
    main(["fit", "--config", "../run.yaml", "--trainer.devices", "1", "--data.init_args.batch_size", "8"])
    got, want = _result(two / "runs/tiny/version_0"), _result(one / "runs/tiny/version_0")
    assert got["tasks_completed"] == want["tasks_completed"] == 2
    assert got["accuracy_matrix"] == want["accuracy_matrix"]
    assert got["continual"]["steps"] == want["continual"]["steps"]


def test_preemption_arguments_are_checked() -> None:
    from clfw.preemption import Preemption

    with pytest.raises(ValueError, match="signal_name must name a signal such as SIGUSR1, got 'USR1'"):
        Preemption(signal_name="USR1")
    with pytest.raises(ValueError, match="sync_every_n_steps must be at least 1, got 0"):
        Preemption(sync_every_n_steps=0)


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_under_ddp_a_signal_on_one_rank_stops_every_rank_at_the_same_step_with_one_checkpoint(ddp_suite: Path) -> None:
    tmp_path = ddp_suite / "preemption"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [4, 4], "both ranks stop at the first sync step after the signal"
    assert all(r["stopped"] and "after step 4" in r["stopped"] for r in ranks)
    assert ranks[0]["path"] == ranks[1]["path"] == str(tmp_path / "checkpoints" / "hpc_ckpt_1.ckpt")
    saved = torch.load(ranks[0]["path"], weights_only=False)
    assert saved["global_step"] == 4 and len(saved["clfw"]["rng_per_rank"]) == 2

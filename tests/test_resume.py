"""Checkpoints hold everything a resumed run needs: a run killed mid-task ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clfw.backbones import MLP
from clfw.benchmarks import SplitMNIST
from clfw.strategies import Naive
from tests.helpers import fit

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
seed_everything: 7
trainer:
  accelerator: cpu
  devices: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  deterministic: true
  callbacks:
    - class_path: clfw.ContinualEvaluation
      init_args: {windows: [5]}
data:
  class_path: clfw.benchmarks.SplitMNIST
  init_args: {n_tasks: 5, batch_size: 64, epochs_per_task: 1, seed: 3}
model:
  class_path: clfw.strategies.Naive
  init_args:
    backbone: {class_path: clfw.backbones.MLP, init_args: {hidden: [64, 64], dropout: 0.3}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05, momentum: 0.9}}
"""


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "clfw", "fit", "--config", str(tmp_path / "run.yaml"), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def final_state_args(path: Path) -> list[str]:
    return ["--trainer.callbacks+=tests.helpers.SaveFinalState", f"--trainer.callbacks.path={path}"]


@pytest.mark.slow
def test_sigkill_mid_task_then_resume_is_bit_identical(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(CONFIG)
    # 800 training images per task / 64 = 13 batches per task: task 1 spans steps 14..26.
    ckpt = [
        "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.callbacks.every_n_train_steps=4",
        "--trainer.callbacks.save_last=true",
        "--trainer.callbacks.save_top_k=-1",
    ]
    ref = run_cli(tmp_path, "--trainer.default_root_dir=ref", *final_state_args(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = run_cli(
        tmp_path,
        "--trainer.default_root_dir=run",
        *ckpt,
        "--trainer.callbacks+=tests.helpers.KillAtStep",
        "--trainer.callbacks.step=22",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 20 and last["epoch"] == 1, "checkpoint must be mid-task: step 20 = task 1, batch 7"
    assert last["clfw"]["task"] == 1 and not last["clfw"]["task_ended"]

    resumed = run_cli(
        tmp_path,
        "--trainer.default_root_dir=run",
        f"--ckpt_path={tmp_path / 'ckpt' / 'last.ckpt'}",
        *final_state_args(tmp_path / "resumed.pt"),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # the per-iteration curves continue where the checkpoint left them: identical to the uninterrupted run's
    ref_curves = json.loads((tmp_path / "ref" / "metrics.json").read_text())["continual"]
    resumed_curves = json.loads((tmp_path / "run" / "metrics.json").read_text())["continual"]
    assert ref_curves["steps"] == resumed_curves["steps"] == list(range(66))
    assert ref_curves["accuracy"] == resumed_curves["accuracy"]
    assert ref_curves["last"] == resumed_curves["last"]

    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert a["step"] == b["step"] == 65
    assert a["rows"] == b["rows"] and a["initial"] == b["initial"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_resume_without_loader_state_would_differ() -> None:
    """Guard for the test above: a different data order changes the weights, so bit-identity is not vacuous."""
    outs = []
    for seed in (0, 1):
        torch.manual_seed(0)
        dm = SplitMNIST(n_tasks=5, batch_size=64, seed=seed)
        m = Naive(backbone=MLP(hidden=(32,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
        fit(m, dm)
        outs.append(m.head.weight.detach().clone())
    assert not torch.equal(outs[0], outs[1])


def test_same_seed_is_bit_identical() -> None:
    weights, rows = [], []
    for _ in range(2):
        torch.manual_seed(0)
        dm = SplitMNIST(n_tasks=5, batch_size=64)
        m = Naive(backbone=MLP(hidden=(32,), dropout=0.2), optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
        _, matrix = fit(m, dm)
        weights.append({k: v.clone() for k, v in m.state_dict().items()})
        rows.append(matrix.rows)
    assert rows[0] == rows[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

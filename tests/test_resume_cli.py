"""The CLI's resume policy, run by SIGKILL: a resumed run is the same run (same directory, history, result), or it
does not start.

One real SIGKILL per kill point on Naive through ``clfw fit`` (and SLURM's SIGUSR1 warning, on which the run writes
its own checkpoint and exits), resumed with ``--resume auto`` as a requeued cluster job
would be: the accuracy matrix, the continual-evaluation curves, ``metrics.csv`` and every ``state_dict`` tensor equal
the uninterrupted run's. Then the policy's refusals, each one line with exit code 2.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from clfw.cli import main
from clfw.preemption import EXIT_PREEMPTED
from clfw.resume import _set_version

ROOT = Path(__file__).resolve().parents[1]

# 2 tasks x 2 epochs x 6 batches: task 0 ends at step 12, the run at step 24
CONFIG = """
seed_everything: 3
trainer:
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 5
  logger:
    class_path: pytorch_lightning.loggers.CSVLogger
    init_args: {save_dir: runs, name: tiny}
  callbacks:
    - class_path: clfw.ContinualEvaluation
      init_args: {samples_per_task: 10, windows: [3], plot: false}
evaluation: {plot: false}
data:
  class_path: tests.helpers.TinyStream
  init_args: {n_tasks: 2, batch_size: 8, epochs_per_task: 2}
model:
  class_path: clfw.strategies.Naive
  init_args:
    backbone: {class_path: clfw.backbones.MLP, init_args: {in_features: 16, hidden: [16], dropout: 0.2}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9}}
"""

# kill point -> (checkpoint every n steps, KillAt arguments)
KILLS = {
    "mid_task": (5, ["--trainer.callbacks.point=step", "--trainer.callbacks.step=22"]),
    "last_step": (12, ["--trainer.callbacks.point=step", "--trainer.callbacks.step=13"]),
    "task_end": (5, ["--trainer.callbacks.point=task_end", "--trainer.callbacks.step=12"]),
    "evaluation": (5, ["--trainer.callbacks.point=evaluation", "--trainer.callbacks.step=17"]),
    "checkpoint_write": (5, ["--trainer.callbacks.point=checkpoint_write", "--trainer.callbacks.step=5"]),
    # SLURM's warning signal: clfw writes hpc_ckpt_1.ckpt at the end of step 17 (newer than last.ckpt of step 15)
    # into the run's own checkpoints/, and exits 75; --resume auto picks the newer file
    "sigusr1": (5, ["--trainer.callbacks.point=sigusr1", "--trainer.callbacks.step=17"]),
}


def clfw(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "clfw", "fit", "--config", str(cwd.parent / "run.yaml"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def checkpointing(every: int) -> list[str]:
    return [
        "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.every_n_train_steps={every}",
        "--trainer.callbacks.save_last=true",
        "--trainer.callbacks.save_top_k=-1",
    ]


def outcome(run: Path) -> tuple[dict, list[dict], dict]:
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    state = torch.load(run / "final.pt")
    return {k: metrics[k] for k in ("accuracy_matrix", "continual", "tasks_completed")}, rows, state


def final_state(path: Path) -> list[str]:
    return ["--trainer.callbacks+=tests.helpers.SaveFinalState", f"--trainer.callbacks.path={path}"]


@pytest.mark.slow
def test_sigkill_at_every_kill_point_then_resume_auto_is_the_uninterrupted_run(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(CONFIG)
    dirs = {name: tmp_path / name for name in ["reference", *KILLS]}
    for d in dirs.values():
        d.mkdir()

    def victim(name: str) -> subprocess.CompletedProcess:
        if name == "reference":
            return clfw(dirs[name], *final_state(dirs[name] / "runs/tiny/version_0/final.pt"))
        every, kill = KILLS[name]
        return clfw(dirs[name], *checkpointing(every), "--trainer.callbacks+=tests.helpers.KillAt", *kill)

    def resume(name: str) -> subprocess.CompletedProcess:
        every = KILLS[name][0]  # the requeued job's command: the same, without the kill
        return clfw(
            dirs[name],
            *checkpointing(every),
            "--resume",
            "auto",
            *final_state(dirs[name] / "runs/tiny/version_0/final.pt"),
        )

    ckpts = dirs["checkpoint_write"] / "runs/tiny/version_0/checkpoints"
    with ThreadPoolExecutor(2) as pool:
        first = dict(zip(dirs, pool.map(victim, dirs), strict=True))
        assert first["reference"].returncode == 0, first["reference"].stderr[-3000:]
        for name in KILLS:
            expected = EXIT_PREEMPTED if name == "sigusr1" else -signal.SIGKILL
            assert first[name].returncode == expected, (name, first[name].stderr[-3000:])
        assert "clfw: preempted (SIGUSR1) after step 17" in first["sigusr1"].stderr
        hpc = dirs["sigusr1"] / "runs/tiny/version_0/checkpoints/hpc_ckpt_1.ckpt"
        saved = torch.load(hpc, weights_only=False)
        assert saved["global_step"] == 17 and saved["clfw"]["fingerprint"]["strategy"] == "clfw.strategies.naive.Naive"
        assert saved["callbacks"]["RunConfig"]["run_dir"] == os.path.realpath(hpc.parent.parent)
        assert not (dirs["sigusr1"] / "hpc_ckpt_1.ckpt").exists(), "nothing in default_root_dir"
        # killed while writing step 15's file: it never appeared under its name, only as a hidden temporary file
        names = sorted(p.name for p in ckpts.iterdir())
        assert [n for n in names if not n.startswith(".")] == [
            "epoch=0-step=5.ckpt",
            "epoch=1-step=10.ckpt",
            "last.ckpt",
        ]
        assert next(n for n in names if n.startswith(".")).startswith(".epoch=2-step=15.ckpt.tmp-")
        resumed = dict(zip(KILLS, pool.map(resume, KILLS), strict=True))

    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")], "orphan removed"
    ref_metrics, ref_rows, ref_state = outcome(dirs["reference"] / "runs/tiny/version_0")
    assert ref_metrics["tasks_completed"] == 2
    for name in KILLS:
        assert resumed[name].returncode == 0, (name, resumed[name].stderr[-3000:])
        assert sorted(os.listdir(dirs[name] / "runs/tiny")) == ["version_0"], f"{name}: resumed in its own directory"
        metrics, rows, state = outcome(dirs[name] / "runs/tiny/version_0")
        assert metrics == ref_metrics, name
        assert rows == ref_rows, f"{name}: the CSV history continues without gaps or duplicate steps"
        assert state["rows"] == ref_state["rows"]
        for k, v in ref_state["state_dict"].items():
            assert torch.equal(v, state["state_dict"][k]), (name, k)


# ----------------------------------------------------------------------------------------- the policy's refusals
@pytest.fixture
def tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished tiny run with checkpoints, in ``tmp_path/runs/tiny/version_0`` (cwd is ``tmp_path``)."""
    (tmp_path / "run.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "run.yaml", *checkpointing(12)])
    return tmp_path / "runs" / "tiny" / "version_0"


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "run.yaml", *args])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clfw: error:")]
    assert len(err) == 1
    return err[0]


def test_resume_policy(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    last = tiny_run / "checkpoints" / "last.ckpt"
    assert last.exists()
    capsys.readouterr()
    # require with nothing to resume (another save_dir): one line naming where it looked
    assert "no checkpoint to resume" in one_line_error(capsys, "--resume", "require", "--trainer.logger.save_dir=other")
    # never contradicts an explicit checkpoint
    assert "contradicts" in one_line_error(capsys, "--resume", "never", f"--ckpt_path={last}")
    # another run's settings: refused naming the key and both values
    line = one_line_error(capsys, "--resume", "auto", "--data.init_args.epochs_per_task=1")
    assert "data.init_args.epochs_per_task: 2 (checkpoint) != 1 (this run)" in line
    line = one_line_error(capsys, "--resume", "auto", "--model.init_args.optimizer.init_args.lr=0.5")
    assert "lr: 0.1 (checkpoint) != 0.5 (this run)" in line
    line = one_line_error(capsys, "--resume", "auto", "--data.init_args.batch_size=16")
    assert "global_batch_size: 8 (checkpoint) != 16 (this run)" in line
    # a corrupt checkpoint: one line naming it
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(last.read_bytes()[:1000])
    assert f"corrupt or incomplete checkpoint: {broken}" in one_line_error(capsys, f"--ckpt_path={broken}")
    # a new run with the logger off into a directory holding a run's metrics.json: refused
    line = one_line_error(capsys, "--trainer.logger=false", f"--trainer.default_root_dir={tiny_run}")
    assert "already holds another run's metrics.json" in line
    # auto with nothing to resume starts a new run in a new directory; --ckpt_path last resumes this run's own
    main(["fit", "--config", "run.yaml", "--resume", "auto", "--trainer.logger.save_dir=fresh"])
    assert (tmp_path / "fresh" / "tiny" / "version_0" / "metrics.json").exists()
    main(["fit", "--config", "run.yaml", "--ckpt_path", "last", *checkpointing(12)])
    assert sorted(os.listdir(tmp_path / "runs" / "tiny")) == ["version_0"], "resumed into the run's own directory"


def test_a_wandb_run_is_resumed_by_its_id() -> None:
    class FakeWandb:  # the attributes of pytorch_lightning.loggers.WandbLogger that resuming sets
        def __init__(self) -> None:
            self._id = None
            self._wandb_init = {"id": None, "resume": None}

    logger = FakeWandb()
    _set_version(logger, "abc123")  # type: ignore[arg-type]
    assert logger._id == "abc123" and logger._wandb_init == {"id": "abc123", "resume": "allow"}

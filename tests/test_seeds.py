"""clfw-seeds: runs a config over seeds and tabulates mean and std from the runs' metrics.json."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clfw.checkpoint import ABSENT
from clfw.seeds import PER_RUN_KEYS, SEED_KEYS, config_differences, load_runs, main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
trainer:
  accelerator: cpu
  enable_model_summary: false
  callbacks:
    - class_path: clfw.ContinualEvaluation
      init_args: {plot: false}
data:
  class_path: tests.helpers.TinyStream
  init_args: {n_tasks: 2, batch_size: 8}
model:
  class_path: clfw.strategies.Naive
  init_args:
    backbone: {class_path: clfw.backbones.MLP, init_args: {in_features: 16, hidden: [8]}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}
"""


@pytest.mark.slow
def test_runs_seeds_and_tabulates_from_their_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    (tmp_path / "run.yaml").write_text(CONFIG)
    out = tmp_path / "naive"
    assert main(["--seeds", "0", "1", "--out", str(out), "--", "--config", str(tmp_path / "run.yaml")]) == 0
    runs = [json.loads((out / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert runs[0]["run"]["seed"] == 0 and runs[1]["run"]["seed"] == 1
    accs = [100 * r["summary"]["average_accuracy"] for r in runs]
    assert runs[0]["initial_accuracy"] != runs[1]["initial_accuracy"], "seeds must give different initialisations"
    stats = json.loads((out / "summary.json").read_text())["stats"]
    assert stats["ACC"]["mean"] == pytest.approx(statistics.mean(accs))
    assert stats["ACC"]["std"] == pytest.approx(statistics.stdev(accs))
    assert stats["min-ACC"]["n"] == 2 and stats["FWT"]["mean"] is None  # class-IL: FWT not applicable
    table = (out / "summary.md").read_text()
    assert f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs):.1f}" in table

    # aggregate existing directories into one table
    assert main(["--aggregate", str(out), "--table", str(tmp_path / "table.md")]) == 0
    assert "| naive | 2 |" in (tmp_path / "table.md").read_text()


def test_failed_seed_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model:\n  class_path: nowhere.Nothing\n")
    assert main(["--seeds", "0", "--out", str(tmp_path / "o"), "--", "--config", str(tmp_path / "bad.yaml")]) == 1
    assert "nowhere.Nothing" in open(os.path.join(tmp_path, "o", "seed_0.log")).read()


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
    with pytest.raises(SystemExit):
        main(["--aggregate", str(tmp_path)])


# ---------------------------------------------------------------------------------- which runs are averaged (no fit)
def _config(seed: int, lr: float = 0.1, run_dir: str = "out") -> dict[str, Any]:
    """A resolved CLI config as LightningCLI saves it, reduced to the keys that matter here."""
    return {
        "seed_everything": seed,
        "trainer": {
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"version": f"seed_{seed}"}},
            "default_root_dir": run_dir,
            "callbacks": [
                {"class_path": "clfw.ContinualEvaluation", "init_args": {"every_n_steps": 1}},
                {"class_path": "ModelCheckpoint", "init_args": {"dirpath": f"{run_dir}/ckpt", "save_last": True}},
            ],
        },
        "model": {"class_path": "clfw.strategies.Naive", "init_args": {"optimizer": {"init_args": {"lr": lr}}}},
        "data": {"class_path": "clfw.benchmarks.SplitMNIST", "init_args": {"n_tasks": 5, "seed": seed}},
        "ckpt_path": None if seed else f"{run_dir}/last.ckpt",
    }


def _write_metrics(
    out: Path, seed: int, acc: float | None, done: int = 5, n_tasks: int = 5, config: dict[str, Any] | None = None
) -> None:
    """A ``seed_S/metrics.json`` as AccuracyMatrix and ContinualEvaluation write it (summary part only)."""
    metrics = {
        "n_tasks": n_tasks,
        "tasks_completed": done,
        "summary": {"average_accuracy": acc, "forgetting": 0.1, "backward_transfer": -0.1, "forward_transfer": None},
        "continual": {"last": {"min_acc": 0.2, "wc_acc": 0.3}},
        "run": {"seed": seed, "config": config if config is not None else _config(seed)},
    }
    (out / f"seed_{seed}").mkdir(parents=True, exist_ok=True)
    (out / f"seed_{seed}" / "metrics.json").write_text(json.dumps(metrics))


def test_aggregate_averages_only_finished_runs_and_names_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "naive"
    _write_metrics(out, 0, 0.5)
    _write_metrics(out, 1, 0.7)
    _write_metrics(out, 2, 0.9, done=2)  # crashed after task 1: its ACC is over 2 tasks only
    _write_metrics(out, 3, None)  # ACC NaN (written as null)
    (out / "seed_4").mkdir()  # died before the first task end
    assert main(["--aggregate", str(out), "--table", str(tmp_path / "table.md")]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "table.md").read_text()
    assert f"| naive | 2 | 60.0 ± {statistics.stdev([50, 70]):.1f} |" in table
    for seed, why in ((2, "finished 2 of 5 tasks"), (3, "ACC is NaN or missing"), (4, "no metrics.json")):
        assert f"seed_{seed} ({why})" in table
        assert f"excluded seed_{seed}: {why}" in printed
    assert [r["run"]["seed"] for r in load_runs(str(out))] == [0, 1]  # what scripts/results_split_mnist.py tabulates


def test_runs_that_differ_other_than_by_seed_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "naive"
    _write_metrics(out, 0, 0.5, config=_config(0, run_dir="a"))
    _write_metrics(out, 1, 0.7, config=_config(1, run_dir="b"))  # seeds, logger, paths differ: fine
    assert main(["--aggregate", str(out)]) == 0
    _write_metrics(out, 2, 0.6, config=_config(2, lr=0.01))
    assert main(["--aggregate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "seed_0 and seed_2 differ in model.init_args.optimizer.init_args.lr: 0.1 vs 0.01" in err
    with pytest.raises(ValueError, match=r"differ in model\.init_args\.optimizer\.init_args\.lr"):
        load_runs(str(out))
    # a run without a saved configuration cannot be compared: averaged, and said to be unchecked
    metrics = json.loads((out / "seed_2" / "metrics.json").read_text())
    metrics["run"]["config"] = None
    (out / "seed_2" / "metrics.json").write_text(json.dumps(metrics))
    assert main(["--aggregate", str(out)]) == 0
    assert "no saved configuration (run.config) in seed_2" in capsys.readouterr().out


def test_a_call_averages_its_own_finished_seeds_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "naive"
    _write_metrics(out, 9, 0.1)  # an earlier call's seed
    _write_metrics(out, 1, 0.1)  # an earlier call's run of seed 1, which fails this time

    def fake_fit(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        seed = int(next(a for a in cmd if a.startswith("--seed_everything=")).split("=")[1])
        if seed == 1:
            return subprocess.CompletedProcess(cmd, 1)  # dies before writing metrics.json
        _write_metrics(out, seed, 0.5 if seed == 0 else 0.9, done=5 if seed == 0 else 3)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr("clfw.seeds.subprocess.run", fake_fit)
    assert main(["--seeds", "0", "1", "2", "--out", str(out), "--", "--config", "x.yaml"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["ACC"] == {"mean": 50.0, "std": None, "n": 1}
    assert summary["averaged"] == ["seed_0"] and summary["ignored"] == ["seed_9"]
    assert summary["excluded"] == {
        "seed_1": "run failed (exit 1), see seed_1.log",
        "seed_2": "finished 3 of 5 tasks",
    }
    table = (out / "summary.md").read_text()
    assert "| naive | 1 | 50.0 |" in table and "seed_2 (finished 3 of 5 tasks)" in table
    assert "ignored seed_9 (not among the seeds of this call)" in capsys.readouterr().out
    assert not (out / "seed_1" / "metrics.json").exists()


def test_config_differences_on_a_saved_config() -> None:
    a, b = _config(0, run_dir="a"), _config(3, lr=0.01, run_dir="b")
    b["trainer"]["callbacks"].append({"class_path": "Extra"})
    assert config_differences(a, b, (*SEED_KEYS, *PER_RUN_KEYS)) == [
        ("model.init_args.optimizer.init_args.lr", 0.1, 0.01),
        ("trainer.callbacks.2.class_path", ABSENT, "Extra"),
    ]
    assert [k for k, *_ in config_differences(a, b, ["trainer.callbacks.*"])] == [
        "ckpt_path",
        "data.init_args.seed",
        "model.init_args.optimizer.init_args.lr",
        "seed_everything",
        "trainer.default_root_dir",
        "trainer.logger.init_args.version",
    ]

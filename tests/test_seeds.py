"""clfw-seeds: runs a config over seeds and tabulates mean and std from the runs' metrics.json."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from clfw.seeds import main

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
  class_path: strategies.Naive
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

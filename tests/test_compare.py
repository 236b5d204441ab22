"""The stability-gap comparison of ``clfw-seeds --aggregate``: depth, recovery and never-recovered seeds on scripted
curves with hand-computed values, the mean curves and the figure, and the refusals."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from clfw.compare import gap_summary, mean_curve
from clfw.continual_eval import ContinualEvaluation
from clfw.seeds import main


def _metrics(during: list[float], end: float = 0.9, steps_offset: int = 0) -> dict:
    """A finished 2-task run's metrics.json: task 0 trained over steps 0-2 (0.3, 0.6, then ``end`` at its end), task 1
    over steps 3.. with task 0 at ``during`` and task 1 at 0.8 (``steps_offset`` shifts task 1's steps)."""
    ce = ContinualEvaluation()
    for step, acc in enumerate([0.3, 0.6, end]):
        ce.tracker.update(step, 0, [acc, None])
    ce.tracker.end_task(0)
    for k, acc in enumerate(during):
        ce.tracker.update(3 + k + steps_offset, 1, [acc, 0.8])
    ce.tracker.end_task(1)
    ce.last = {"min_acc": min(during), "wc_acc": 0.5 * 0.8 + 0.5 * min(during)}
    report = ce.report(trainer=None)  # type: ignore[arg-type]
    return {"n_tasks": 2, "tasks_completed": 2, "summary": {"average_accuracy": (during[-1] + 0.8) / 2}, **report}


def _write(directory: Path, runs: list[dict]) -> None:
    for seed, metrics in enumerate(runs):
        (directory / f"seed_{seed}").mkdir(parents=True)
        (directory / f"seed_{seed}" / "metrics.json").write_text(json.dumps(metrics))


# row A: seed 0 dips 0.9 -> 0.5 and is back within 1 point (0.89) at step 5, 3 steps after task 1 started at step 3;
# seed 1 dips to 0.6 and is still at 0.8 when task 1 ends: never recovered. Row B: a 5-point dip, back at step 4.
ROW_A = [[0.5, 0.7, 0.89, 0.9], [0.6, 0.6, 0.7, 0.8]]
ROW_B = [[0.85, 0.9, 0.9, 0.9]]


def test_gap_summary_by_hand() -> None:
    s = gap_summary([_metrics(d) for d in ROW_A])
    assert [round(v, 9) for v in s["tasks"][0]["depth"]] == [40.0, 30.0]
    assert s["tasks"][0]["recovery"] == [3] and s["tasks"][0]["never"] == 1 and (s["never"], s["gaps"]) == (1, 2)
    # recounted with a 15-point tolerance: seed 0 is back at 0.89 (step 5), seed 1 at 0.8 >= 0.75 (step 6)
    s = gap_summary([_metrics(d) for d in ROW_A], tolerance=0.15)
    assert s["tasks"][0]["recovery"] == [3, 4] and s["never"] == 0 and s["tolerance"] == 0.15


def test_table_counts_never_recovered_seeds_apart_and_figure_is_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "A", [_metrics(d) for d in ROW_A])
    _write(tmp_path / "B", [_metrics(d) for d in ROW_B])
    figure, table = tmp_path / "fig" / "gap.png", tmp_path / "t.md"
    argv = ["--aggregate", str(tmp_path / "A"), str(tmp_path / "B"), "--figure", str(figure), "--table", str(table)]
    assert main(argv) == 0
    text = table.read_text()
    depth_std = statistics.stdev([40.0, 30.0])
    # ACC of A: (0.9 + 0.8) / 2 and (0.8 + 0.8) / 2; min-ACC 0.5 and 0.6; WC-ACC 0.65 and 0.7
    assert f"| A | 2 | 82.5 ± 3.5 | 55.0 ± 7.1 | 67.5 ± 3.5 | 35.0 ± {depth_std:.1f} | 3 | 1 of 2 |" in text
    assert "| B | 1 | 85.0 | 85.0 | 82.5 | 5.0 | 2 | 0 of 1 |" in text
    assert "| A | 35.0 ± 7.1 | 3 (+1 never) |" in text and "| B | 5.0 | 2 |" in text
    assert "back within 1 points" in text
    assert figure.exists() and figure.stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


def test_mean_curve_averages_seeds_point_by_point() -> None:
    c = mean_curve([_metrics(d) for d in ROW_A], task=0)
    assert c["steps"] == list(range(7)) and c["end"] == 2 and c["next_end"] == 6
    assert [round(m, 9) for m in c["mean"][3:]] == [55.0, 65.0, 79.5, 85.0]
    assert round(c["std"][3], 9) == round(statistics.stdev([50.0, 60.0]), 9)


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "shifted", [_metrics(ROW_A[0]), _metrics(ROW_A[1], steps_offset=1)])
    assert main(["--aggregate", str(tmp_path / "shifted"), "--figure", str(tmp_path / "f.png")]) == 2
    assert "evaluated at other steps" in capsys.readouterr().err
    flat = _metrics(ROW_B[0])
    flat["continual"] = {"last": flat["continual"]["last"]}  # a run without per-iteration curves
    _write(tmp_path / "flat", [flat])
    assert main(["--aggregate", str(tmp_path / "flat"), "--figure", str(tmp_path / "f.png")]) == 2
    assert "needs per-iteration curves" in capsys.readouterr().err
    assert main(["--aggregate", str(tmp_path / "flat")]) == 0, "without --figure the plain table is still made"
    _write(tmp_path / "B", [_metrics(ROW_B[0])])
    assert main(["--aggregate", str(tmp_path / "B"), "--figure", str(tmp_path / "f.png"), "--gap-tasks", "1"]) == 2
    assert "no stability gap measured for task(s) [1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--aggregate", str(tmp_path / "B"), "--tolerance", "5"])
    assert "--tolerance must be an accuracy in [0, 1)" in capsys.readouterr().err

"""Continual-evaluation metrics on scripted accuracy sequences, computed by hand."""

from __future__ import annotations

import pytest

from clfw.stability import StabilityTracker

# (step, current task, accuracies on tasks 0..2); None = not evaluated. Task 0 ends at step 3, task 1 at step 6.
SCRIPT = [
    (1, 0, [0.50, None, None]),
    (2, 0, [0.80, None, None]),
    (3, 0, [0.90, None, None]),  # end of task 0
    (4, 1, [0.40, 0.30, None]),  # stability gap: task 0 drops at once
    (5, 1, [0.60, 0.70, None]),
    (6, 1, [0.89, 0.80, None]),  # end of task 1; task 0 back within 1 point of 0.90
    (7, 2, [0.70, 0.20, 0.60]),
    (8, 2, [0.75, 0.50, 0.90]),
]


def run(windows=(2, 3), tolerance=0.01):
    tr = StabilityTracker(windows=windows, tolerance=tolerance)
    out = []
    for step, c, accs in SCRIPT:
        out.append(tr.update(step, c, accs))
        if step in (3, 6):
            tr.end_task(c)
    return tr, out


def test_min_acc_and_wc_acc() -> None:
    _, m = run()
    assert m[2]["min_acc"] is None and m[2]["wc_acc"] == pytest.approx(0.9)  # one task: WC-ACC = its accuracy
    assert m[3]["min_acc"] == pytest.approx(0.40)
    assert m[3]["wc_acc"] == pytest.approx(0.30 / 2 + 0.40 / 2)
    # at step 8: task 0's minimum after step 3 is 0.40; task 1's after step 6 is 0.20
    assert m[7]["min_acc"] == pytest.approx((0.40 + 0.20) / 2)
    assert m[7]["wc_acc"] == pytest.approx(0.90 / 3 + (2 / 3) * 0.30)
    assert m[7]["acc"] == pytest.approx((0.75 + 0.50 + 0.90) / 3)


def test_every_metric_is_reported_even_when_undefined() -> None:
    tr = StabilityTracker(windows=(2,))
    m = tr.update(1, 0, [None])  # the current task not evaluated: WC-ACC undefined, still reported as None
    assert m == dict.fromkeys(["acc", "min_acc", "wc_acc", "forgetting", "bwt", "wf_2", "wp_2"])


def test_per_iteration_forgetting_and_bwt() -> None:
    _, m = run()
    assert m[1]["forgetting"] is None and m[1]["bwt"] is None
    assert m[3]["forgetting"] == pytest.approx(0.90 - 0.40) and m[3]["bwt"] == pytest.approx(0.40 - 0.90)
    # step 8: task 0 best 0.90 (now 0.75), task 1 best 0.80 (now 0.50); ends: 0.90 and 0.80
    assert m[7]["forgetting"] == pytest.approx(((0.90 - 0.75) + (0.80 - 0.50)) / 2)
    assert m[7]["bwt"] == pytest.approx(((0.75 - 0.90) + (0.50 - 0.80)) / 2)


def test_windowed_forgetting_and_plasticity_include_the_current_task() -> None:
    _, m = run(windows=(2, 3))
    # w=2 (consecutive pairs). Task 0 largest drop 0.90 -> 0.40 = 0.5, rise 0.40 -> 0.60... max 0.89 - 0.60 = 0.29 vs
    # 0.80 - 0.50 = 0.30: rises 0.30, 0.10, 0.20, 0.29, 0.05 -> 0.30. Task 1 drop 0.80 -> 0.20 = 0.6, rise 0.40.
    # Task 2 (current): rise 0.30, drop 0.
    assert m[7]["wf_2"] == pytest.approx((0.5 + 0.6 + 0.0) / 3)
    assert m[7]["wp_2"] == pytest.approx((0.30 + 0.40 + 0.30) / 3)
    # w=3 (pairs up to 2 steps apart): task 0 drop max(0.90 - 0.40, 0.80 - 0.40) = 0.5, rise 0.89 - 0.40 = 0.49;
    # task 1 drop 0.80 - 0.20 = 0.6, rise 0.80 - 0.30 = 0.5; task 2 rise 0.30
    assert m[7]["wf_3"] == pytest.approx((0.5 + 0.6 + 0.0) / 3)
    assert m[7]["wp_3"] == pytest.approx((0.49 + 0.5 + 0.30) / 3)
    # while only task 0 exists, the current task is what is averaged
    assert m[1]["wf_2"] == 0.0 and m[1]["wp_2"] == pytest.approx(0.30)


def test_stability_gap_drop_and_recovery() -> None:
    tr, _ = run(tolerance=0.01)
    gap0, gap1 = tr.stability_gaps()
    assert gap0 == {
        "task": 0,
        "before": 0.90,
        "min": 0.40,
        "min_step": 4,
        "drop": pytest.approx(0.50),
        "recovery_steps": 3,
    }  # steps 4, 5, 6: back to 0.89 >= 0.90 - 0.01 at the third step
    assert gap1["task"] == 1 and gap1["min"] == 0.20 and gap1["recovery_steps"] is None  # never back to 0.79
    tr_strict, _ = run(tolerance=0.0)
    assert tr_strict.stability_gaps()[0]["recovery_steps"] is None  # 0.89 < 0.90


def test_no_drop_means_zero_recovery_steps() -> None:
    tr = StabilityTracker(windows=(2,))
    tr.update(1, 0, [0.9, None])
    tr.end_task(0)
    tr.update(2, 1, [0.95, 0.5])
    assert tr.stability_gaps()[0]["recovery_steps"] == 0


def test_state_round_trip_rebuilds_everything() -> None:
    tr, _ = run()
    copy = StabilityTracker(windows=(2, 3))
    copy.load_state_dict(tr.state_dict())
    assert copy.stability_gaps() == tr.stability_gaps()
    assert copy.update(9, 2, [0.1, 0.1, 0.1]) == tr.update(9, 2, [0.1, 0.1, 0.1])


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        StabilityTracker(windows=(1,))
    tr = StabilityTracker()
    tr.update(1, 0, [None])
    with pytest.raises(ValueError, match="must be evaluated at its end"):
        tr.end_task(0)


def test_stability_gap_lines_printed_at_the_end() -> None:
    """ContinualEvaluation prints each gap as: accuracy at its end -> minimum -> when the next task ended -> at the last
    step (recovery). Task 2 is still training here, so task 1 has no 'when task 2 ended'."""
    from clfw import ContinualEvaluation

    ce = ContinualEvaluation()
    ce.tracker, _ = run()
    task0, task1 = (ce.gap_line(gap) for gap in ce.tracker.stability_gaps())
    assert task0 == (
        "  task 0: 90.0% at its end -> min 40.0% at step 4 -> 89.0% when task 1 ended -> 75.0% at the last step "
        "(back within 1 point after 3 steps of task 1)"
    )
    assert task1 == (
        "  task 1: 80.0% at its end -> min 20.0% at step 7 -> 50.0% at the last step (not back within 1 point during "
        "task 2)"
    )
    ce.tracker, _ = run(tolerance=0.5)  # task 0 never falls below 0.90 - 0.50
    assert ce.gap_line(ce.tracker.stability_gaps()[0]).endswith("(never more than 50 points below)")

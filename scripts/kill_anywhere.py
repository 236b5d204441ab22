"""Kill anywhere with a real SIGKILL, resume, compare with the uninterrupted run: every strategy x five kill points.

    python scripts/kill_anywhere.py [--strategies NAME ...] [--points POINT ...] [--jobs N] [--out DIR]

The SIGKILL counterpart of ``tests/test_kill_anywhere.py`` (which stops runs with exceptions, in-process, for one
strategy per family). For each strategy of ``clfw.strategies.__all__`` (built by ``tests.test_contract.make``, on
``TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)``: 6 batches per epoch, task 0 ends at step 12, the run at
step 24), every run is a fresh interpreter (this file, re-run with ``--child``):

- a reference child: the uninterrupted run;
- per kill point, a victim child that kills itself with ``SIGKILL`` at the point, then a resume child that resumes
  from ``last.ckpt`` in the same run directory (same ``CSVLogger`` version, same checkpoint callback).

Kill points: ``mid_task`` (step 22, checkpoints every 5), ``last_step`` (step 13, checkpoints every 12: one exactly
on task 0's last step), ``epoch_end`` (step 15, a checkpoint at every epoch's end), ``task_end`` (inside task 0's
task-end work: Fisher, herding, GDumb's retraining ..., checkpoints every 5), ``evaluation`` (inside the
continual-evaluation pass of step 17, checkpoints every 5) and ``checkpoint_write`` (while the checkpoint of step 15
is written: the fifth ``torch.save`` writes a few bytes, then the process dies; checkpoints every 5).

The reference and the victims seed the global RNG with 0 before building the model; the resume children with 123 (a
resume must not depend on it). Each child saves its final ``state_dict``, accuracy-matrix rows, continual-evaluation
curves (``metrics.json``'s ``"continual"`` section) and ``metrics.csv`` rows; the parent compares them and prints a
markdown table (cells: ``equal``, or what differs) and the total wall time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: kill point -> (checkpoint every n steps, global step of the last.ckpt the resume is expected to start from)
POINTS: dict[str, tuple[int, int]] = {
    "mid_task": (5, 20),
    "last_step": (12, 12),
    "epoch_end": (0, 12),  # 0: ModelCheckpoint's default, a checkpoint at every epoch's end
    "task_end": (5, 10),
    "evaluation": (5, 15),
    "checkpoint_write": (5, 10),
}
#: the files the checkpoint directory may hold after the kill while writing step 15's checkpoint
CHECKPOINT_WRITE_FILES = ["epoch=0-step=5.ckpt", "epoch=1-step=10.ckpt", "last.ckpt"]
CHILD_TIMEOUT_S = 900
#: the packages the children import from this repository
SOURCES = ("clfw", "strategies", "tests")


# ------------------------------------------------------------------------------------------------------ children
def _die() -> None:
    """Kills this process at once: no ``finally``, no ``atexit``, no flushing of Python's buffers."""
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(point: str) -> list[Any]:
    """Arms the kill of ``point``; returns the extra Trainer callbacks it needs."""
    import torch

    import clfw.checkpoint
    from clfw import ContinualEvaluation, ContinualModule
    from tests.helpers import KillAtStep

    if point == "mid_task":  # step 22, in task 1's second epoch: the last checkpoint is step 20's
        return [KillAtStep(22)]
    if point == "last_step":  # the checkpoint of task 0's last step is written, the run dies one step later
        return [KillAtStep(13)]
    if point == "epoch_end":  # epoch-end checkpoints (steps 6, 12); the run dies in task 1's first epoch
        return [KillAtStep(15)]
    if point == "task_end":

        def end_task_then_die(self: ContinualModule, task: int) -> None:  # the work done, no callback heard of it
            self.on_task_end(task)
            for p in self.plugins:
                p.on_task_end(self, task)
            _die()

        ContinualModule._end_task = end_task_then_die  # type: ignore[method-assign]
        return []
    if point == "evaluation":
        original = ContinualEvaluation.evaluate

        def evaluate_then_die(self: ContinualEvaluation, module: ContinualModule, task: int) -> Any:
            out = original(self, module, task)
            if module.trainer.global_step == 17:  # the pass is done, its result never recorded
                _die()
            return out

        ContinualEvaluation.evaluate = evaluate_then_die  # type: ignore[method-assign]
        return []
    if point == "checkpoint_write":
        calls = {"n": 0}
        save = torch.save

        def save_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 5:  # steps 5 and 10 wrote a step file and last.ckpt each: this is step 15's step file
                f.write(b"PK\x03\x04 half a checkpoint")
                f.flush()
                _die()
            save(obj, f, *args, **kwargs)

        clfw.checkpoint.torch.save = save_then_die  # type: ignore[assignment]
        return []
    raise ValueError(f"unknown kill point {point!r}")


def child(role: str, name: str, point: str | None, root: Path) -> None:
    """One run of strategy ``name`` in ``root``: ``ref`` (uninterrupted), ``victim`` (dies at ``point``) or
    ``resume`` (resumes ``root/ckpt/last.ckpt``); ``ref`` and ``resume`` save their outputs to ``root/result.pt``."""
    import pytorch_lightning as pl
    import torch

    import clfw.checkpoint
    from clfw import ContinualEvaluation
    from tests.helpers import TinyStream, fit, snapshot
    from tests.test_contract import make

    torch.set_num_threads(1)
    every = POINTS[point][0] if point else None  # None: no checkpoints; 0: at every epoch's end
    extra: list[pl.Callback] = []
    info: dict[str, Any] = {}
    ckpt_path = None
    if role == "victim":
        assert point is not None
        extra = _install_kill(point)
        torch.manual_seed(0)
    elif role == "resume":
        ckpt_path = root / "ckpt" / "last.ckpt"
        last = clfw.checkpoint.read_checkpoint(ckpt_path)
        info = {"ckpt_step": last["global_step"]}
        torch.manual_seed(123)  # the restart must not depend on the global RNG state
    else:
        torch.manual_seed(0)

    module = make(name)
    evaluation = ContinualEvaluation(samples_per_task=10, windows=[3], plot=False)
    callbacks: list[pl.Callback] = [evaluation, *extra]
    if every is not None:
        ckpt_dir = root / "ckpt"
        when = {"every_n_train_steps": every} if every else {"every_n_epochs": 1}
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=-1, **when))
    logger = pl.loggers.CSVLogger(root, name="", version="run")
    stream = TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)
    trainer, matrix = fit(
        module,
        stream,
        callbacks,
        logger=logger,
        enable_checkpointing=every is not None,
        root=str(root),
        ckpt_path=None if ckpt_path is None else str(ckpt_path),
    )
    if role == "victim":
        raise SystemExit(f"the victim was never killed (finished at step {trainer.global_step})")
    with open(root / "run" / "metrics.csv", newline="") as f:
        history = list(csv.DictReader(f))
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    torch.save(
        {
            "state": snapshot(module),
            "rows": matrix.rows,
            "curves": metrics.get("continual"),
            "report": evaluation.report(trainer)["continual"],
            "csv": history,
            "step": trainer.global_step,
            "files_after": sorted(p.name for p in (root / "ckpt").iterdir()) if every else [],
            **info,
        },
        root / "result.pt",
    )


# -------------------------------------------------------------------------------------------------------- parent
def launch(*args: str, log: Path) -> subprocess.CompletedProcess[str]:
    """Runs this file as a child with ``args``; its output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=CHILD_TIMEOUT_S,
        )  # fmt: skip
    return proc


def last_line(log: Path) -> str:
    """The last meaningful line of a child's log (the error of a traceback)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:160] if lines else "(no output)"


def differences(ref: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What differs between a reference result and a resumed one (empty: equal)."""
    import torch

    out = []
    if got["rows"] != ref["rows"]:
        out.append("rows differ")
    a, b = ref["state"], got["state"]
    if a.keys() != b.keys():
        out.append(f"state keys differ: {sorted(set(a) ^ set(b))[:3]}")
    bad = []
    for k in a.keys() & b.keys():
        if isinstance(a[k], torch.Tensor) and isinstance(b[k], torch.Tensor):
            same = a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
        else:
            try:
                same = bool(a[k] == b[k])
            except Exception:  # e.g. extra state holding tensors
                same = repr(a[k]) == repr(b[k])
        if not same:
            bad.append(k)
    if bad:
        bad = [k for k in a if k in bad]  # in state_dict order
        more = f" (+{len(bad) - 2} more)" if len(bad) > 2 else ""
        out.append(f"state differs: {', '.join(bad[:2])}{more}")
    if got["curves"] != ref["curves"] or got["report"] != ref["report"]:
        out.append("curves differ")
    if got["csv"] != ref["csv"]:
        out.append("csv differs")
    return out


def run_strategy(name: str, points: list[str], out: Path) -> dict[str, Any]:
    """The reference run of ``name`` and, per kill point, a victim and its resume; returns the cells and notes."""
    import torch

    start = time.perf_counter()
    base = out / name
    base.mkdir(parents=True, exist_ok=True)
    cells: dict[str, str] = {}
    notes: list[str] = []
    ref_dir = base / "ref"
    ref_dir.mkdir(exist_ok=True)
    proc = launch("ref", name, "-", str(ref_dir), log=base / "ref.log")
    if proc.returncode != 0:
        msg = f"reference failed: {last_line(base / 'ref.log')}"
        return {"name": name, "cells": dict.fromkeys(points, msg), "notes": [], "time": time.perf_counter() - start}
    ref = torch.load(ref_dir / "result.pt", weights_only=False)
    for point in points:
        root = base / point
        root.mkdir(exist_ok=True)
        victim = launch("victim", name, point, str(root), log=root / "victim.log")
        if victim.returncode != -signal.SIGKILL:
            cells[point] = f"victim not killed (rc={victim.returncode}): {last_line(root / 'victim.log')}"
            continue
        left = sorted(p.name for p in (root / "ckpt").iterdir()) if (root / "ckpt").is_dir() else []
        resumed = launch("resume", name, point, str(root), log=root / "resume.log")
        if resumed.returncode != 0:
            cells[point] = f"resume failed: {last_line(root / 'resume.log')}"
            continue
        got = torch.load(root / "result.pt", weights_only=False)
        diff = differences(ref, got)
        expected = POINTS[point][1]
        if got["ckpt_step"] != expected:
            notes.append(f"{name} / {point}: resumed from step {got['ckpt_step']} (expected {expected})")
            diff.append(f"resumed from step {got['ckpt_step']}")
        temp: list[str] = []
        if point == "checkpoint_write":
            temp = [f for f in left if f.startswith(".") and ".tmp-" in f]
            other = [f for f in left if f not in CHECKPOINT_WRITE_FILES and f not in temp]
            if other:
                diff.append(f"left: {', '.join(other)}")
            if temp:
                notes.append(f"{name} / {point}: temporary file(s) left by the SIGKILL: {', '.join(temp)}")
                stale = [f for f in got["files_after"] if f in temp]
                if stale:
                    notes.append(f"{name} / {point}: still there after the resumed run: {', '.join(stale)}")
        cells[point] = "; ".join(diff) if diff else "equal"
        if point == "checkpoint_write" and temp:
            cells[point] += " (temp file left)"
    return {"name": name, "cells": cells, "notes": notes, "time": time.perf_counter() - start}


def source_times() -> dict[str, float]:
    """Modification time of every Python file the children import from this repository (a run is only meaningful
    if they do not change under it)."""
    return {str(p.relative_to(ROOT)): p.stat().st_mtime for d in SOURCES for p in (ROOT / d).rglob("*.py")}


def main() -> None:
    """Parses the options; runs a child, or the whole matrix and prints the table."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--child", nargs=4, metavar=("ROLE", "NAME", "POINT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--strategies", nargs="+", metavar="NAME", help="strategies to run (default: all)")
    parser.add_argument("--points", nargs="+", choices=list(POINTS), default=list(POINTS), help="kill points")
    parser.add_argument("--jobs", type=int, default=2, help="strategies run in parallel (default: 2)")
    parser.add_argument("--out", type=Path, help="work directory (default: a new temporary directory)")
    args = parser.parse_args()
    if args.child:
        role, name, point, root = args.child
        child(role, name, None if point == "-" else point, Path(root))
        return

    sys.path.insert(0, str(ROOT))
    from tests.test_contract import NAMES

    names = args.strategies or NAMES
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {NAMES}")
    out = args.out or Path(tempfile.mkdtemp(prefix="kill-anywhere-"))
    out.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    print(
        f"{len(names)} strategies x {len(args.points)} kill points, {args.jobs} in parallel, in {out} "
        f"(tree {head.stdout.strip() or 'unknown'})",
        flush=True,
    )
    before = source_times()
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    # children do the work: threads that wait on them are the pool of processes
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_strategy, n, args.points, out) for n in names]
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            results[r["name"]] = r
            bad = {p: c for p, c in r["cells"].items() if c != "equal"}
            summary = "all equal" if not bad else "; ".join(f"{p}: {c}" for p, c in bad.items())
            print(f"[{len(results)}/{len(names)}] {r['name']} ({r['time']:.0f} s): {summary}", flush=True)
    total = time.perf_counter() - start

    print()
    print("| strategy | " + " | ".join(args.points) + " | time |")
    print("|---" * (len(args.points) + 2) + "|")
    for n in names:
        r = results[n]
        print(f"| {n} | " + " | ".join(r["cells"][p] for p in args.points) + f" | {r['time']:.0f} s |")
    notes = [note for n in names for note in results[n]["notes"]]
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    after = source_times()
    changed = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    if changed:
        print(f"\nWARNING: source files changed during the run (results may mix versions): {', '.join(changed)}")
    print(f"\nTotal wall time: {total:.0f} s ({total / 60:.1f} min), {args.jobs} jobs; runs kept in {out}")


if __name__ == "__main__":
    main()

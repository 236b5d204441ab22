"""Cost per training step of each stability-gap mitigation over ER alone (prints a table; not a test).

    python scripts/bench_mitigations.py                     # 3 rounds, every variant of scripts/stability_gap_lab.py
    python scripts/bench_mitigations.py --rounds 5 --out results/bench_mitigations.json

Each variant is the lab's Split MNIST run (``configs/stability_gap/split_mnist.yaml``: MLP 2x400, SGD, batch 32 plus 32
replayed, memory 120; 2 epochs per task instead of 10, which changes the number of steps, not their cost) with the
setting the lab chose on validation data (``results/stability_gap``; the first candidate of ``GRIDS`` where the lab has
not run), without the per-iteration evaluation and without a logger. Every run is a fresh interpreter on one torch
thread; rounds are interleaved (each round runs every variant once, in an order shuffled per round, seeded). A run's
figure is the median time of its training steps of tasks 1-4 (the memory is full and every mitigation active), from
``on_train_batch_start`` to ``on_train_batch_end``: forward, backward, the mitigation's work inside the step, the
optimizer step, memory insertion. Work outside the steps (LPR's preconditioner refresh happens inside the step that
triggers it, so it is in; Refresh's and the others' task-end work, the nearest-mean head's class means, computed when
the model is evaluated) is not. Reported: per variant the median over rounds of (its step time / ER's in the same
round), with the min-max over rounds, and the median step time in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytorch_lightning as pl
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stability_gap_lab import GRIDS, select


class StepTimer(pl.Callback):
    """Records the duration of each training step of tasks >= 1 and writes them to ``path`` at the end."""

    def __init__(self, path: str) -> None:
        self.path, self.times, self.start = path, [], 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        if module.current_task >= 1:
            self.times.append(time.perf_counter() - self.start)

    def on_train_end(self, *args: Any) -> None:
        with open(self.path, "w") as f:
            json.dump(self.times, f)


def settings(results: str) -> dict[str, dict[str, Any]]:
    """variant -> config override: the lab's choice on Split MNIST where it has run, else the first candidate."""
    try:
        chosen = {v: name for v, (name, _) in select(results, "split_mnist").items()}
    except (RuntimeError, ValueError, OSError):
        chosen = {}
    return {v: grid[chosen.get(v, next(iter(grid)))] for v, grid in GRIDS.items()}


def child(variant: str, results: str, out: str) -> None:
    from clfw.cli import main

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        override, timer = os.path.join(tmp, "override.yaml"), os.path.join(tmp, "timer.yaml")
        with open(override, "w") as f:
            yaml.safe_dump(settings(results)[variant] or {"seed_everything": 0}, f)
        with open(timer, "w") as f:
            yaml.safe_dump({"trainer": {"callbacks": [{"class_path": "bench_mitigations.StepTimer",
                                                       "init_args": {"path": out}}]}}, f)  # fmt: skip
        main(["fit", "--config", "configs/stability_gap/split_mnist.yaml", "--config", override, "--config", timer,
              "--data.init_args.epochs_per_task=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false",
              f"--trainer.default_root_dir={tmp}"])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", default="results/stability_gap", help="the lab's output (for its chosen settings)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.results, args.child_out)
        return 0
    if os.getloadavg()[0] > 0.5:
        print(f"[bench] warning: load average {os.getloadavg()[0]:.1f}; the figures will be noisy", flush=True)
    variants, rng = list(GRIDS), random.Random(0)
    times: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = rng.sample(variants, len(variants))
            this: dict[str, float] = {}
            for v in order:
                out = os.path.join(tmp, f"{r}_{v}.json")
                cmd = [sys.executable, __file__, "--child", v, "--child-out", out, "--results", args.results]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"[bench] {v} failed (exit {done.returncode})")
                with open(out) as f:
                    this[v] = statistics.median(json.load(f))
                print(f"[bench] round {r + 1}/{args.rounds} {v}: {1000 * this[v]:.2f} ms/step", flush=True)
            for v in variants:
                times[v].append(this[v])
                ratios[v].append(this[v] / this["ER"])
    lines = ["| variant | step time (ms), median over rounds | / ER, median (min-max) |", "|---|---|---|"]
    for v in variants:
        rs = ratios[v]
        lines.append(f"| {v} | {1000 * statistics.median(times[v]):.2f} | "
                     f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f}) |")  # fmt: skip
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"times": times, "ratios": ratios, "rounds": args.rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

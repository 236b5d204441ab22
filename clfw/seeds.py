"""``clfw-seeds``: run one configuration over several seeds and tabulate mean and std from the runs' ``metrics.json``.

    clfw-seeds --seeds 0 1 2 --out results/naive -- --config configs/quickstart.yaml --model Naive
    clfw-seeds --aggregate results/naive results/joint --table results/table.md

Each seed runs ``clfw fit <args> --seed_everything S --data.seed S`` in a subprocess, with a CSV logger writing to
``OUT/seed_S/`` (so ``metrics.json`` lands there) and the output in ``OUT/seed_S.log``. The table is generated from
those files, never typed: ``OUT/summary.md`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

# (label, path into metrics.json), in table order
COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("ACC", ("summary", "average_accuracy")),
    ("forgetting", ("summary", "forgetting")),
    ("BWT", ("summary", "backward_transfer")),
    ("FWT", ("summary", "forward_transfer")),
    ("min-ACC", ("continual", "last", "min_acc")),
    ("WC-ACC", ("continual", "last", "wc_acc")),
]


def _get(data: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return float(data)  # type: ignore[arg-type]


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean, sample std (n - 1) and count of each column over runs, in percent; columns missing everywhere are None.

    >>> runs = [{"summary": {"average_accuracy": 0.2}}, {"summary": {"average_accuracy": 0.4}}]
    >>> out = aggregate(runs)["ACC"]
    >>> round(out["mean"], 6), round(out["std"], 6), out["n"]
    (30.0, 14.142136, 2)
    """
    out: dict[str, dict[str, float | int | None]] = {}
    for label, path in COLUMNS:
        values = [100 * v for v in (_get(r, path) for r in runs) if v is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 and mean is not None else None
        out[label] = {"mean": mean, "std": std, "n": n}
    return out


def markdown_table(rows: dict[str, dict[str, dict[str, float | int | None]]]) -> str:
    """One row per label; cells ``mean ± std`` in percent (``n/a`` when not measured).

    >>> print(markdown_table({"Naive": aggregate([{"summary": {"average_accuracy": 0.2}}])}))
    | run | seeds | ACC | forgetting | BWT | FWT | min-ACC | WC-ACC |
    |---|---|---|---|---|---|---|---|
    | Naive | 1 | 20.0 | n/a | n/a | n/a | n/a | n/a |
    """
    head = ["run", "seeds", *(label for label, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, stats in rows.items():
        cells = []
        for label, _ in COLUMNS:
            s = stats[label]
            if s["mean"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["std"] is not None else ""))
        n = max((int(s["n"] or 0) for s in stats.values()), default=0)
        lines.append("| " + " | ".join([name, str(n), *cells]) + " |")
    return "\n".join(lines)


def load_runs(directory: str) -> list[dict[str, Any]]:
    """The ``metrics.json`` of every seed under ``directory`` (``seed_*/metrics.json``)."""
    runs = []
    for path in sorted(glob.glob(os.path.join(directory, "seed_*", "metrics.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def run_seeds(seeds: Sequence[int], out: str, fit_args: Sequence[str]) -> list[int]:
    """Runs ``clfw fit`` once per seed; returns the seeds that failed."""
    os.makedirs(out, exist_ok=True)
    failed = []
    for seed in seeds:
        cmd = [
            sys.executable, "-m", "clfw", "fit", *fit_args,
            f"--seed_everything={seed}", f"--data.seed={seed}",
            "--trainer.logger=pytorch_lightning.loggers.CSVLogger", f"--trainer.logger.save_dir={out}",
            "--trainer.logger.name=", f"--trainer.logger.version=seed_{seed}", "--trainer.enable_progress_bar=false",
        ]  # fmt: skip
        print(f"[clfw-seeds] seed {seed}: {' '.join(cmd[3:])}", flush=True)
        with open(os.path.join(out, f"seed_{seed}.log"), "w") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            print(f"[clfw-seeds] seed {seed} failed (exit {code}); see {out}/seed_{seed}.log", flush=True)
            failed.append(seed)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clfw-seeds``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, fit_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="clfw-seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (each sets seed_everything and data.seed)")
    parser.add_argument("--out", help="output directory of the runs (OUT/seed_S/metrics.json)")
    parser.add_argument("--aggregate", nargs="+", metavar="DIR", help="tabulate existing result directories")
    parser.add_argument("--table", help="also write the aggregated table (markdown) to this file")
    args = parser.parse_args(argv)
    if args.aggregate:
        rows = {os.path.basename(os.path.normpath(d)): aggregate(load_runs(d)) for d in args.aggregate}
        empty = [name for name, stats in rows.items() if stats["ACC"]["n"] == 0]
        if empty:
            parser.error(f"no seed_*/metrics.json under {empty}")
    else:
        if not args.seeds or not args.out or not fit_args:
            parser.error("give --seeds, --out and the clfw fit arguments after --, or --aggregate DIR ...")
        failed = run_seeds(args.seeds, args.out, fit_args)
        stats = aggregate(load_runs(args.out))
        rows = {os.path.basename(os.path.normpath(args.out)): stats}
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump({"seeds": args.seeds, "failed": failed, "fit_args": fit_args, "stats": stats}, f, indent=1)
        with open(os.path.join(args.out, "summary.md"), "w") as f:
            f.write(markdown_table(rows) + "\n")
        if failed:
            print(markdown_table(rows))
            return 1
    table = markdown_table(rows)
    print(table)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

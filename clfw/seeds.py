"""``clfw-seeds``: run one configuration over several seeds and tabulate mean and std from the runs' ``metrics.json``.

    clfw-seeds --seeds 0 1 2 --out results/naive -- --config configs/quickstart.yaml --model Naive
    clfw-seeds --aggregate results/naive results/joint --table results/table.md
    clfw-seeds --aggregate results/er results/er_lpr --figure gap.png --gap-tasks 1 --table gap.md

With per-iteration curves (``clfw.ContinualEvaluation`` in the runs), the stability gap is compared too (see
``clfw.compare``): a table of ACC, min-ACC, WC-ACC, gap depth, recovery steps and gaps not recovered, a table per task,
and with ``--figure`` one panel per task (``--gap-tasks``, default every task with a successor) of each row's mean
curve with a one-std band over seeds.

Each seed runs ``clfw fit <args> --seed_everything S --data.seed S`` in a subprocess, with a CSV logger writing to
``OUT/seed_S/`` (so ``metrics.json`` lands there) and the output in ``OUT/seed_S.log``. The table is generated from
those files, never typed: ``OUT/summary.md`` and ``OUT/summary.json``.

Only finished runs are averaged: a seed whose run failed, whose ``metrics.json`` is missing, measured fewer than
``n_tasks`` tasks, or has no ACC is excluded and named (printed, under the table, and in ``summary.json``). Running
seeds averages the seeds of that call only; other ``seed_*`` directories under ``OUT`` are ignored (and said to be).
Runs whose saved configurations differ other than by seed and per-run paths are refused.
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
from dataclasses import dataclass, field
from typing import Any

from clfw.checkpoint import config_differences
from clfw.compare import gap_summary, gap_tables, mean_curve

# (label, path into metrics.json), in table order
COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("ACC", ("summary", "average_accuracy")),
    ("forgetting", ("summary", "forgetting")),
    ("BWT", ("summary", "backward_transfer")),
    ("FWT", ("summary", "forward_transfer")),
    ("min-ACC", ("continual", "last", "min_acc")),
    ("WC-ACC", ("continual", "last", "wc_acc")),
]

# Config keys (glob patterns over dotted keys, see config_differences) allowed to differ between the seeds of one row:
# the seeds themselves, and paths that are per run by construction (logger, run and checkpoint directories).
SEED_KEYS: tuple[str, ...] = ("seed_everything", "data.init_args.seed", "data.seed")
PER_RUN_KEYS: tuple[str, ...] = (
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.callbacks.*.init_args.*path",
    "ckpt_path",
)


def _get(data: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return float(data)  # type: ignore[arg-type]


def run_problem(metrics: dict[str, Any] | None) -> str | None:
    """Why a run's ``metrics.json`` content cannot be averaged, or ``None`` if it can.

    >>> run_problem({"n_tasks": 5, "tasks_completed": 2, "summary": {"average_accuracy": 0.4}})
    'finished 2 of 5 tasks'
    >>> run_problem({"n_tasks": 1, "tasks_completed": 1, "summary": {"average_accuracy": float("nan")}})
    'ACC is NaN or missing'
    >>> run_problem({"n_tasks": 1, "tasks_completed": 1, "summary": {"average_accuracy": 0.9}}) is None
    True
    """
    if metrics is None:
        return "no metrics.json"
    if not isinstance(metrics, dict):
        return f"metrics.json holds a {type(metrics).__name__}, not an object"
    n_tasks, done = metrics.get("n_tasks"), metrics.get("tasks_completed")
    if not isinstance(n_tasks, int) or not isinstance(done, int):
        return "metrics.json has no accuracy matrix (n_tasks, tasks_completed)"
    if done < n_tasks:
        return f"finished {done} of {n_tasks} tasks"
    acc = _get(metrics, ("summary", "average_accuracy"))
    if acc is None or math.isnan(acc):
        return "ACC is NaN or missing"
    return None


@dataclass
class SeedRuns:
    """The seed directories of one result directory, sorted into those averaged and those not.

    Attributes:
        directory: The result directory.
        runs: ``metrics.json`` of each averaged seed, by directory name (``seed_S``).
        excluded: Why each excluded seed is not averaged, by directory name.
        ignored: ``seed_*`` directories left out because they are not among the requested seeds (an earlier call's).
        unchecked: Averaged seeds whose ``metrics.json`` holds no configuration (``run.config``), so not compared.
    """

    directory: str
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per excluded seed, one for the ignored directories and one for the seeds not compared."""
        lines = [f"{self.directory}: excluded {name}: {why}" for name, why in self.excluded.items()]
        if self.ignored:
            lines.append(f"{self.directory}: ignored {', '.join(self.ignored)} (not among the seeds of this call)")
        if self.unchecked:
            lines.append(
                f"{self.directory}: no saved configuration (run.config) in {', '.join(self.unchecked)}: "
                "not checked against the other seeds"
            )
        return lines


def _seed_key(name: str) -> tuple[int, int | str]:
    tail = name.removeprefix("seed_")
    return (0, int(tail)) if tail.lstrip("-").isdigit() else (1, tail)


def collect_runs(directory: str, seeds: Sequence[int] | None = None, failed: dict[int, str] | None = None) -> SeedRuns:
    """Reads ``directory/seed_*/metrics.json``, excludes the runs that cannot be averaged (:func:`run_problem`) and
    checks that the averaged ones share one configuration.

    Args:
        directory: The result directory (``OUT`` of ``clfw-seeds``).
        seeds: Only these seeds (``seed_S``); other ``seed_*`` directories are listed as ignored. ``None``: all.
        failed: Seeds known to have failed, with the reason; they are excluded whatever their ``metrics.json`` says.

    Raises:
        ValueError: Two averaged runs' ``run.config`` differ in a key other than the seeds and per-run paths
            (``SEED_KEYS``, ``PER_RUN_KEYS``). Runs without a saved config are not compared.
    """
    found = {os.path.basename(p) for p in glob.glob(os.path.join(directory, "seed_*")) if os.path.isdir(p)}
    result = SeedRuns(directory)
    if seeds is not None:
        wanted = [f"seed_{s}" for s in dict.fromkeys(seeds)]
        result.ignored = sorted(found - set(wanted), key=_seed_key)
    else:
        wanted = sorted(found, key=_seed_key)
    failed = failed or {}
    for name in wanted:
        seed = _seed_key(name)[1]
        if isinstance(seed, int) and seed in failed:
            result.excluded[name] = failed[seed]
            continue
        path = os.path.join(directory, name, "metrics.json")
        metrics = None
        if os.path.exists(path):
            try:
                with open(path) as f:
                    metrics = json.load(f)
            except (OSError, ValueError) as err:
                result.excluded[name] = f"unreadable metrics.json ({err})"
                continue
        problem = run_problem(metrics)
        if problem is None and metrics is not None:
            result.runs[name] = metrics
        else:
            result.excluded[name] = problem or "no metrics.json"
    configs = [(name, (m.get("run") or {}).get("config")) for name, m in result.runs.items()]
    result.unchecked = [name for name, c in configs if not isinstance(c, dict)]
    configs = [(name, c) for name, c in configs if isinstance(c, dict)]
    for name, config in configs[1:]:
        diffs = config_differences(configs[0][1], config, (*SEED_KEYS, *PER_RUN_KEYS))
        if diffs:
            key, a, b = diffs[0]
            more = f" (and {len(diffs) - 1} more keys)" if len(diffs) > 1 else ""
            raise ValueError(
                f"{directory}: {configs[0][0]} and {name} differ in {key}: {a!r} vs {b!r}{more}; "
                "the runs of one row must differ only by seed"
            )
    return result


def load_runs(directory: str, seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The ``metrics.json`` of every seed under ``directory`` that can be averaged (see :func:`collect_runs`, which
    also raises ``ValueError`` on differing configurations); excluded and ignored seeds are printed."""
    runs = collect_runs(directory, seeds)
    for line in runs.notes():
        print(f"[clfw-seeds] {line}", flush=True)
    return list(runs.runs.values())


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


def markdown_table(
    rows: dict[str, dict[str, dict[str, float | int | None]]], excluded: dict[str, dict[str, str]] | None = None
) -> str:
    """One row per label; cells ``mean ± std`` in percent (``n/a`` when not measured). ``seeds`` is the number of runs
    averaged (those with an ACC); the seeds in ``excluded`` (row label -> seed -> reason) are listed under the table.

    >>> print(markdown_table({"Naive": aggregate([{"summary": {"average_accuracy": 0.2}}])},
    ...                      {"Naive": {"seed_3": "finished 2 of 5 tasks"}}))
    | run | seeds | ACC | forgetting | BWT | FWT | min-ACC | WC-ACC |
    |---|---|---|---|---|---|---|---|
    | Naive | 1 | 20.0 | n/a | n/a | n/a | n/a | n/a |
    <BLANKLINE>
    Not averaged: Naive: seed_3 (finished 2 of 5 tasks).
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
        lines.append("| " + " | ".join([name, str(stats["ACC"]["n"]), *cells]) + " |")
    notes = [
        f"{name}: " + ", ".join(f"{seed} ({why})" for seed, why in seeds.items())
        for name, seeds in (excluded or {}).items()
        if seeds
    ]
    if notes:
        lines += ["", "Not averaged: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def run_seeds(seeds: Sequence[int], out: str, fit_args: Sequence[str]) -> dict[int, str]:
    """Runs ``clfw fit`` once per seed; returns the seeds that failed, with the reason.

    A seed's earlier ``metrics.json`` is removed first, so a run that dies before writing its own leaves none behind.
    """
    os.makedirs(out, exist_ok=True)
    failed = {}
    for seed in seeds:
        for stale in ("metrics.json", "metrics.json.tmp"):
            if os.path.exists(path := os.path.join(out, f"seed_{seed}", stale)):
                os.remove(path)
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
            failed[seed] = f"run failed (exit {code}), see seed_{seed}.log"
    return failed


def _name(directory: str) -> str:
    return os.path.basename(os.path.normpath(directory))


def gap_section(
    collected: dict[str, SeedRuns],
    stats: dict[str, dict[str, dict[str, float | int | None]]],
    figure: str | None,
    tasks: Sequence[int] | None,
    title: str,
    tolerance: float | None = None,
) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """The stability-gap tables (and the figure, if asked) of rows whose runs all hold per-iteration curves; ``None``
    if a row's do not (then asking for a figure is refused with ``ValueError``)."""
    runs = {name: list(c.runs.values()) for name, c in collected.items()}
    without = [name for name, rs in runs.items() if not all((m.get("continual") or {}).get("steps") for m in rs)]
    if without:
        if figure:
            raise ValueError(f"--figure needs per-iteration curves (clfw.ContinualEvaluation), missing in {without}")
        return None
    summaries = {name: gap_summary(rs, name, tolerance) for name, rs in runs.items()}
    tolerances = {s["tolerance"] for s in summaries.values()}
    if len(tolerances) > 1:
        raise ValueError(f"the rows counted recovery with different tolerances {sorted(map(str, tolerances))}")
    tol = next(iter(tolerances))
    text = gap_tables(summaries, stats) + (
        "\n\nGap depth: a task's accuracy at the end of its training minus its minimum while the next task "
        "trains (points; per seed the mean over tasks, then mean ± std over seeds). Recovery steps: steps from the "
        f"next task's start until the task is back within {100 * (tol or 0):g} points of its end-of-training "
        "accuracy, averaged over the (seed, task) gaps that recovered; gaps still below when the next task ended are "
        "counted as not recovered."
    )
    if figure:
        from clfw.plots import gap_comparison_figure

        first = next(iter(summaries.values()))
        chosen = list(tasks) if tasks else list(first["tasks"])
        missing = [t for t in chosen if any(t not in s["tasks"] for s in summaries.values())]
        if not chosen or missing:
            raise ValueError(f"--gap-tasks: no stability gap measured for task(s) {missing or chosen} in every row "
                             f"(measured: {list(first['tasks'])})")  # fmt: skip
        curves = {name: {t: mean_curve(rs, t, name) for t in chosen} for name, rs in runs.items()}
        os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
        gap_comparison_figure(curves, chosen, title).savefig(figure, dpi=110)
        print(f"[clfw-seeds] wrote {figure}", flush=True)
    return text, summaries


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clfw-seeds``. Returns 0, 1 when a seed of this call is not averaged, 2 on refusal."""
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
    parser.add_argument("--figure", help="draw the rows' stability-gap curves (mean, std band over seeds) to this PNG")
    parser.add_argument("--gap-tasks", type=int, nargs="+", help="tasks of the figure (default: all with a successor)")
    parser.add_argument("--title", default="", help="title of the figure")
    parser.add_argument("--tolerance", type=float, help="recount recovery from the curves within this accuracy (0.05 = "
                        "5 points) instead of the runs' own ContinualEvaluation.tolerance")  # fmt: skip
    args = parser.parse_args(argv)
    if args.tolerance is not None and not 0 <= args.tolerance < 1:
        parser.error(f"--tolerance must be an accuracy in [0, 1) (0.05 = 5 points), got {args.tolerance}")
    if args.figure and not args.figure.endswith(".png"):
        parser.error(f"--figure must name a .png file, got {args.figure!r}")
    code = 0
    try:
        if args.aggregate:
            collected = {_name(d): collect_runs(d) for d in args.aggregate}
            empty = [c.directory for c in collected.values() if not c.runs]
            for c in collected.values():
                for line in c.notes():
                    print(f"[clfw-seeds] {line}", flush=True)
            if empty:
                parser.error(f"no seed with a finished run (seed_*/metrics.json) under {empty}")
        else:
            if not args.seeds or not args.out or not fit_args:
                parser.error("give --seeds, --out and the clfw fit arguments after --, or --aggregate DIR ...")
            for stale in ("summary.md", "summary.json"):
                if os.path.exists(path := os.path.join(args.out, stale)):
                    os.remove(path)
            failed = run_seeds(args.seeds, args.out, fit_args)
            runs = collect_runs(args.out, args.seeds, {s: why for s, why in failed.items()})
            for line in runs.notes():
                print(f"[clfw-seeds] {line}", flush=True)
            collected = {_name(args.out): runs}
            code = 1 if runs.excluded else 0
        rows = {name: aggregate(list(c.runs.values())) for name, c in collected.items()}
        table = markdown_table(rows, {name: c.excluded for name, c in collected.items()})
        gaps = gap_section(collected, rows, args.figure, args.gap_tasks, args.title, args.tolerance)
    except ValueError as err:
        print(f"clfw-seeds: error: {err}", file=sys.stderr, flush=True)
        return 2
    if gaps is not None:
        table += "\n\n" + gaps[0]
    if not args.aggregate:
        (runs,) = collected.values()
        summary = {
            "seeds": args.seeds,
            "averaged": list(runs.runs),
            "excluded": runs.excluded,
            "ignored": runs.ignored,
            "failed": sorted(failed),
            "fit_args": fit_args,
            "stats": rows[_name(args.out)],
            "stability_gap": gaps[1][_name(args.out)] if gaps is not None else None,
        }
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(args.out, "summary.md"), "w") as f:
            f.write(table + "\n")
    print(table)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())

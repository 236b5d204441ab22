"""The stability-gap lab: ER and each mitigation on the stability gap's two streams, hyperparameters chosen on
validation data, then 5 seeds on test; writes the figures and tables into ``docs/stability_gap.md``. Not a test.

    python scripts/stability_gap_lab.py                       # everything (about 45 min on 2 cores with --jobs 2)
    python scripts/stability_gap_lab.py --streams split_mnist --jobs 2 --out results/stability_gap
    python scripts/stability_gap_lab.py --report-only         # redraw and retabulate from the finished runs

**Streams** (``configs/stability_gap/``): ER on class-incremental Split MNIST and on domain-incremental Rotated MNIST
(0, 80, 160 degrees), offline digits, MLP 2x400, plain SGD lr 0.01, batch 32 plus 32 replayed, memory 120 (the paper's
2000 scaled to the same fraction of the data; see the configs), 10% of each task's training data held out for
validation, evaluation after every optimizer step.

**Variants**: ER alone; ER with each plugin (``GradientProjection``, ``LRWarmup``, ``NearestMeanHead``,
``LayerwiseProximalReplay``, ``Refresh``); ``CLSER`` (ER's memory and settings, its consistency loss and EMA models).

**Protocol.** 1. Selection: every candidate setting of a variant (``GRIDS``) runs with the selection seeds (100, 101)
and ``ContinualEvaluation(split="val")`` (``configs/stability_gap/eval_on_val.yaml``): per-iteration evaluation on the
validation split, never on test. The setting with the highest mean validation WC-ACC at the last step wins (WC-ACC
weighs the worst dip of the old tasks against the last task's accuracy, the trade-off a mitigation must win); ties go to
the first listed. 2. Evaluation: the chosen setting of each variant runs with seeds 0-4 on test. 3. Report: for each
stream, ``clfw-seeds --aggregate`` over the variants' directories draws the comparison figure and writes the table
(see ``clfw.seeds``), and the block between the result markers of ``docs/stability_gap.md`` is regenerated with the
chosen settings. A run that finished (its ``metrics.json`` measured every task) is not run again, so the script resumes
where it stopped; each run's output is in its ``seed_S.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml

from clfw.seeds import collect_runs, run_problem, run_seeds
from clfw.seeds import main as seeds_main

STREAMS = {"split_mnist": "Split MNIST (class-IL)", "rotated_mnist": "Rotated MNIST (domain-IL)"}
SELECT_SEEDS, FINAL_SEEDS = (100, 101), (0, 1, 2, 3, 4)
TOLERANCE = 0.05  # recovery within 5 points: about two standard errors of one evaluation (docs/stability_gap.md)
BEGIN, END = "<!-- stability-gap-lab:begin -->", "<!-- stability-gap-lab:end -->"


def plugin(class_name: str, **init_args: Any) -> dict[str, Any]:
    """A config override adding one plugin to the strategy's list."""
    entry = {"class_path": f"clfw.strategies.{class_name}", "init_args": init_args}
    return {"model": {"init_args": {"plugins+": [entry]}}}


def clser(**init_args: Any) -> dict[str, Any]:
    return {"model": {"class_path": "clfw.strategies.CLSER", "init_args": init_args}}


# variant -> candidate settings (name -> config override); one candidate means nothing to choose
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "ER": {"-": {}},
    "ER+GradientProjection": {"sample_size=32": plugin("GradientProjection", sample_size=32, eps=1e-7)},
    "ER+LRWarmup": {f"warmup_steps={n}": plugin("LRWarmup", warmup_steps=n) for n in (20, 50, 100)},
    "ER+NearestMeanHead": {f"source={s}": plugin("NearestMeanHead", source=s) for s in ("memory", "running")},
    "CLS-ER": {
        "lambda=0.1,rS=0.7,rP=0.9,a=0.999": clser(consistency_weight=0.1),
        "lambda=1,rS=0.7,rP=0.9,a=0.999": clser(consistency_weight=1.0),
        "lambda=2,rS=0.9,rP=1,a=0.99": clser(
            consistency_weight=2.0,
            stable_update_freq=0.9,
            plastic_update_freq=1.0,
            stable_alpha=0.99,
            plastic_alpha=0.99,
        ),
    },
    "ER+LPR": {
        f"omega0={w},every={n}": plugin("LayerwiseProximalReplay", omega_0=w, beta=1.0, every_n_steps=n)
        for w in (1.0, 4.0)
        for n in (1, 30)
    },
    "ER+Refresh": {
        f"unlearn_lr={lr}": plugin("Refresh", unlearn_lr=lr, delta=1e-5, gamma=1e-3, sigma=1e-3, tau=1e-5)
        for lr in (0.01, 0.001)
    },
}


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).replace("=", "-")


def finished(directory: str, seed: int) -> bool:
    path = os.path.join(directory, f"seed_{seed}", "metrics.json")
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            return run_problem(json.load(f)) is None
    except (OSError, ValueError):
        return False


def fit_args(out: str, stream: str, override: dict[str, Any], select: bool) -> list[str]:
    args = ["--config", f"configs/stability_gap/{stream}.yaml"]
    if select:
        args += ["--config", "configs/stability_gap/eval_on_val.yaml"]
    if override:
        os.makedirs(os.path.join(out, "overrides"), exist_ok=True)
        path = os.path.join(out, "overrides", f"{slug(json.dumps(override, sort_keys=True))[:120]}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(override, f, sort_keys=False)
        args += ["--config", path]
    return args


def run_all(jobs: list[tuple[str, int, list[str]]], workers: int) -> None:
    """Runs (directory, seed, fit args) jobs not yet finished, ``workers`` at a time, with progress."""
    todo = [j for j in jobs if not finished(j[0], j[1])]
    print(f"[lab] {len(jobs) - len(todo)} of {len(jobs)} runs already finished; running {len(todo)}", flush=True)
    start, done = time.time(), 0

    def one(job: tuple[str, int, list[str]]) -> None:
        nonlocal done
        directory, seed, args = job
        run_seeds([seed], directory, args)
        done += 1
        elapsed = time.time() - start
        print(f"[lab] {done}/{len(todo)} done ({elapsed / 60:.1f} min, ~{elapsed / done * (len(todo) - done) / 60:.0f} "
              f"min left): {directory} seed {seed}", flush=True)  # fmt: skip

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, todo))


def val_score(directory: str, seeds: tuple[int, ...]) -> tuple[float | None, list[float]]:
    """Mean validation WC-ACC at the last step over the seeds' finished runs."""
    runs = collect_runs(directory, seeds)
    values = []
    for metrics in runs.runs.values():
        cont = metrics.get("continual") or {}
        if cont.get("split") != "val":
            raise ValueError(f"{directory}: a selection run was not evaluated on the validation split")
        if (wc := (cont.get("last") or {}).get("wc_acc")) is not None:
            values.append(100 * wc)
    return (statistics.mean(values) if len(values) == len(seeds) else None), values


def select(out: str, stream: str) -> dict[str, tuple[str, list[tuple[str, float | None]]]]:
    """variant -> (chosen setting, [(setting, mean validation WC-ACC)])."""
    chosen = {}
    for variant, grid in GRIDS.items():
        scores = [(name, val_score(os.path.join(out, stream, "select", variant, slug(name)), SELECT_SEEDS)[0])
                  for name in grid]  # fmt: skip
        valid = [(n, s) for n, s in scores if s is not None]
        if not valid:
            raise RuntimeError(f"{stream} {variant}: no candidate finished its selection runs")
        chosen[variant] = (max(valid, key=lambda p: p[1])[0], scores)
    return chosen


def report(out: str, streams: list[str], docs: str) -> None:
    blocks = []
    for stream in streams:
        chosen = select(out, stream)
        dirs = [os.path.join(out, stream, "final", v) for v in GRIDS]
        table = os.path.join(out, stream, "table.md")
        figure = os.path.join("docs", "figures", f"stability_gap_{stream}.png")
        command = ["--aggregate", *dirs, "--table", table, "--figure", figure, "--title", STREAMS[stream],
                   "--tolerance", str(TOLERANCE)]  # fmt: skip
        print(f"[lab] clfw-seeds {' '.join(command)}", flush=True)
        if seeds_main(command) not in (0, 1):
            raise RuntimeError(f"clfw-seeds --aggregate failed for {stream}")
        with open(table) as f:
            text = f.read().strip()
        selection = ["| variant | candidates: mean validation WC-ACC (%) of seeds 100, 101 | chosen |", "|---|---|---|"]
        for variant, (name, scores) in chosen.items():
            cells = ", ".join(f"{n}: {'failed' if s is None else f'{s:.1f}'}" for n, s in scores)
            selection.append(f"| {variant} | {cells} | {name} |")
        blocks.append(
            f"### {STREAMS[stream]}\n\n![{STREAMS[stream]}](figures/stability_gap_{stream}.png)\n\n{text}\n\n"
            f"Hyperparameters chosen on validation data:\n\n" + "\n".join(selection)
        )
    with open(docs) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        raise RuntimeError(f"{docs} has no {BEGIN} ... {END} block to regenerate")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    body = "\n\n".join(blocks)
    with open(docs, "w") as f:
        note = "<!-- generated by scripts/stability_gap_lab.py; do not edit -->"
        f.write(f"{head}{BEGIN}\n{note}\n\n{body}\n\n{END}{tail}")
    print(f"[lab] wrote {docs}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/stability_gap")
    parser.add_argument("--streams", nargs="+", choices=list(STREAMS), default=list(STREAMS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each on one torch thread)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--docs", default="docs/stability_gap.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per run: the runs share the cores
    if not args.report_only:
        jobs = []
        for stream in args.streams:
            for variant, grid in GRIDS.items():
                for name, override in grid.items():
                    directory = os.path.join(args.out, stream, "select", variant, slug(name))
                    jobs += [(directory, s, fit_args(args.out, stream, override, True)) for s in SELECT_SEEDS]
        print("[lab] selection on the validation split", flush=True)
        run_all(jobs, args.jobs)
        jobs = []
        for stream in args.streams:
            chosen = select(args.out, stream)
            for variant, (name, _) in chosen.items():
                directory = os.path.join(args.out, stream, "final", variant)
                jobs += [(directory, s, fit_args(args.out, stream, GRIDS[variant][name], False)) for s in FINAL_SEEDS]
        print("[lab] the chosen settings on test, seeds 0-4", flush=True)
        run_all(jobs, args.jobs)
    report(args.out, args.streams, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

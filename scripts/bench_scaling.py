"""The overhead of clfw's DDP path on this machine: 1 against 2 CPU processes (gloo, 1 torch thread each).

    python scripts/bench_scaling.py                  # 3 interleaved rounds: Naive, ER, DER++ on the MLP and ResNet-18
    python scripts/bench_scaling.py --quick          # 1 round, few steps: a smoke run
    python scripts/bench_scaling.py --out results/bench_scaling.json

Each variant (strategy x backbone x world size) trains in a fresh interpreter on random images, 2 tasks of 2 classes
(MNIST-shaped 1x28x28 for the MLP 784-400-400, CIFAR-shaped 3x32x32 for the reduced ResNet-18 with nf=20), with
batch 32 *per rank* (weak scaling: 2 processes train on 64 samples a step), memory 500, replay 32 per rank. Naive
shows what DDP's gradient all-reduce and Lightning's wrapper cost; ER and DER++ add the gathered memory inserts.
The figure is the median interval between optimizer steps of task 1 (replay active), measured on rank 0. With one
thread per process on 2 cores, 2 processes ideally take as long per step as 1 and train twice the samples per second:
the ratios show what the all-reduce of the gradients, the gathered inserts into the memory and Lightning's DDP
wrapper cost. It is an overhead check, not a scaling curve (this machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PER_RANK_BATCH, MEMORY = 32, 500
STRATEGIES = ("Naive", "ER", "DERPP")  # Naive: DDP's gradient all-reduce only; ER, DER++: plus the gathered inserts
VARIANTS = [(s, b, w) for s in STRATEGIES for b in ("mlp", "resnet") for w in (1, 2)]


def worker(strategy: str, backbone: str, world: int, out: str, steps_per_task: int) -> None:
    import pytorch_lightning as pl
    import torch
    from typing_extensions import override

    import clfw.strategies
    from clfw.backbones import MLP, ResNet18
    from clfw.data import Normalize, Stream, class_incremental_tasks
    from clfw.datamodule import ContinualDataModule

    torch.set_num_threads(1)
    shape = (1, 28, 28) if backbone == "mlp" else (3, 32, 32)

    class RandomImages(ContinualDataModule):
        num_classes, n_tasks = 4, 2

        def eval_transform(self) -> Normalize:
            return Normalize((0.5,) * shape[0], (0.25,) * shape[0])

        def build_stream(self) -> Stream:
            per_class = steps_per_task * PER_RANK_BATCH * 2 // 2  # enough for the 1-process run's steps
            y = torch.arange(4).repeat_interleave(per_class)
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (len(y), *shape), dtype=torch.uint8, generator=g)
            tasks = class_incremental_tasks((x, y), (x[::16], y[::16]), [0, 1, 2, 3], [2, 2])
            return Stream(tasks, "class", 4, shape)

    class Steps(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        @override
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
            if module.current_task == 1:
                self.times.append(time.perf_counter())

    pl.seed_everything(0, verbose=False)
    net = MLP(in_features=784, hidden=(400, 400)) if backbone == "mlp" else ResNet18(nf=20)
    cls = getattr(clfw.strategies, strategy)
    replay = {} if strategy == "Naive" else {"buffer_size": MEMORY, "replay_batch_size": PER_RANK_BATCH}
    module = cls(backbone=net, **replay)
    steps = Steps()
    trainer = pl.Trainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[steps],
    )  # fmt: skip
    if os.environ.get("BENCH_PROFILE"):  # cProfile of the fit, per rank: BENCH_PROFILE=<prefix> -> <prefix>.<rank>
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
        trainer.fit(module, RandomImages(batch_size=PER_RANK_BATCH, epochs_per_task=1))
        profile.disable()
        profile.dump_stats(f"{os.environ['BENCH_PROFILE']}.{trainer.global_rank}")
    else:
        trainer.fit(module, RandomImages(batch_size=PER_RANK_BATCH, epochs_per_task=1))
    if trainer.global_rank == 0:
        intervals = [b - a for a, b in zip(steps.times, steps.times[1:], strict=False)][2:]  # skip warm-up steps
        Path(out).write_text(json.dumps({"step_s": statistics.median(intervals), "steps": len(steps.times)}))


def run_variant(strategy: str, backbone: str, world: int, steps_per_task: int) -> float:
    out = ROOT / "results" / f".scaling-{strategy}-{backbone}-{world}.json"
    out.parent.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--worker", strategy, backbone, str(world), str(out), str(steps_per_task)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{strategy} {backbone} world {world} failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return float(result["step_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-task", type=int, default=24, help="steps of task 1 in the 1-process run")
    parser.add_argument("--quick", action="store_true", help="1 round, 6 steps per task")
    parser.add_argument("--out", default="results/bench_scaling.json")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--backbones", nargs="+", default=["mlp", "resnet"], choices=["mlp", "resnet"])
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        s, b, w, out, n = args.worker
        worker(s, b, int(w), out, int(n))
        return
    rounds, steps = (1, 6) if args.quick else (args.rounds, args.steps_per_task)
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.1f}: run on an idle machine for stable figures")
    variants = [v for v in VARIANTS if v[0] in args.strategies and v[1] in args.backbones]
    times: dict[tuple[str, str, int], list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            times[v].append(run_variant(*v, steps))
            print(f"round {r + 1}/{rounds} {v[0]:<6}{v[1]:<7} {v[2]} process(es): {times[v][-1] * 1e3:8.1f} ms/step")
    rows = []
    print(f"\nper-rank batch {PER_RANK_BATCH}, 1 thread per process, median of {rounds} round(s) [min-max]")
    head = ["strategy", "backbone", "ms/step 1p [min-max]", "ms/step 2p [min-max]", "samples/s 1p", "2p", "2p/1p"]
    print(" | ".join(head) + "   (2p/1p: samples per second, ideal 2.00)")
    for strategy in args.strategies:
        for backbone in args.backbones:
            one, two = times[(strategy, backbone, 1)], times[(strategy, backbone, 2)]
            m1, m2 = statistics.median(one), statistics.median(two)
            sps1, sps2 = PER_RANK_BATCH / m1, 2 * PER_RANK_BATCH / m2
            rows.append({"strategy": strategy, "backbone": backbone, "step_s_1": one, "step_s_2": two,
                         "samples_per_s_1": sps1, "samples_per_s_2": sps2, "ratio": sps2 / sps1})  # fmt: skip
            cells = [
                strategy, backbone, f"{m1 * 1e3:.1f} [{min(one) * 1e3:.1f}-{max(one) * 1e3:.1f}]",
                f"{m2 * 1e3:.1f} [{min(two) * 1e3:.1f}-{max(two) * 1e3:.1f}]", f"{sps1:.0f}", f"{sps2:.0f}",
                f"{sps2 / sps1:.2f}",
            ]  # fmt: skip
            print(" | ".join(cells))
    out = ROOT / args.out
    out.parent.mkdir(exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    out.write_text(json.dumps({"commit": commit.strip(), "rounds": rounds, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

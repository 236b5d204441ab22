"""Replay on one GPU: clfw's ER and DER++ against a plain PyTorch loop doing the same replay, in images per second.

    python scripts/gpu_replay_throughput.py                 # on a GPU: under 5 minutes
    python scripts/gpu_replay_throughput.py --tiny          # a smoke run on the CPU (small network, few steps)

The stream is Split CIFAR-100's shape on synthetic data (10 tasks of 10 classes, random uint8 3x32x32 images,
``--per-class`` training images per class, no augmentation), the network the reduced ResNet-18 (nf=20), SGD 0.03,
batch and replay batch ``--batch``, memory 2000. Each measurement trains tasks 0 and 1 and times task 1's steps after
the first 10 (replay active), data path included (uint8 batches moved to the device, normalised there):

- **clfw**: ``clfw.strategies.ER`` / ``DERPP`` (alpha 0.1, beta 0.5) through ``pl.Trainer``;
- **plain**: the same algorithm written as a loop over the same tensors, with the memory on the device: reservoir
  insertion of each batch (vectorised: one uniform draw per incoming sample), uniform replay draws without
  replacement, one forward over current + replayed samples for ER; for DER++ the current forward plus two
  independent memory draws, logits MSE and CE, as clfw's default;
- the same two with **continual evaluation every 10 steps**: clfw's ``ContinualEvaluation(every_n_steps=10,
  samples_per_task=200, tasks="seen")``; the plain loop evaluates the same number of test images of the seen tasks at
  the same steps.

It prints images/s of each, clfw / plain (target: at least 0.90), and writes ``results/gpu_replay_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from gpu_first_task import SyntheticCIFAR100  # scripts/: random images of CIFAR-100's shape
from typing_extensions import override

import clfw.strategies
from clfw import ContinualEvaluation
from clfw.backbones import ResNet18

ROOT = Path(__file__).resolve().parents[1]
MEMORY, WARMUP, EVAL_EVERY, EVAL_PER_TASK = 2000, 10, 10, 200


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Task1Rate(pl.Callback):
    """Images per second over task 1's steps after the first ``WARMUP``; stops the fit when task 1 ends."""

    def __init__(self) -> None:
        self.images, self.start, self.seconds, self.seen = 0, 0.0, 0.0, 0

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if module.current_task != 1:
            return
        self.seen += 1
        if self.seen == WARMUP + 1:
            _sync(module.device)
            self.start = time.perf_counter()
        if self.seen > WARMUP:
            self.images += len(batch[1])

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if module.current_task == 1 and trainer.datamodule.is_last_epoch_of_task(trainer.current_epoch):
            _sync(module.device)
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


def clfw_rate(strategy: str, args: argparse.Namespace, evaluate: bool) -> float:
    pl.seed_everything(0, verbose=False)
    kwargs: dict[str, Any] = {"buffer_size": MEMORY, "replay_batch_size": args.batch}
    if strategy == "DERPP":
        kwargs.update(alpha=0.1, beta=0.5)
    module = getattr(clfw.strategies, strategy)(
        backbone=ResNet18(nf=args.nf), optimizer=lambda p: torch.optim.SGD(p, lr=0.03), **kwargs
    )
    rate = Task1Rate()
    callbacks: list[pl.Callback] = [rate]
    if evaluate:
        callbacks.append(ContinualEvaluation(every_n_steps=EVAL_EVERY, samples_per_task=EVAL_PER_TASK, plot=False))
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=tempfile.mkdtemp(prefix="clfw-gpu-bench-"),
    )  # fmt: skip
    dm = SyntheticCIFAR100(per_class=args.per_class, augment=False, batch_size=args.batch, epochs_per_task=1)
    trainer.fit(module, dm)
    return rate.images / rate.seconds


def plain_rate(strategy: str, args: argparse.Namespace, evaluate: bool) -> float:
    """The same training as a plain loop; see the module docstring."""
    torch.manual_seed(0)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    dm = SyntheticCIFAR100(per_class=args.per_class, augment=False, batch_size=args.batch, epochs_per_task=1)
    tasks = dm.stream.tasks
    mean = torch.tensor((0.5071, 0.4865, 0.4409), device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor((0.2673, 0.2564, 0.2762), device=device).view(1, 3, 1, 1) * 255
    backbone = ResNet18(nf=args.nf).to(device)
    head = torch.nn.Linear(backbone.num_features, 100).to(device)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.03)
    mem_x = torch.zeros(MEMORY, 3, 32, 32, dtype=torch.uint8, device=device)
    mem_y = torch.zeros(MEMORY, dtype=torch.long, device=device)
    mem_z = torch.zeros(MEMORY, 100, device=device)
    seen_n, step, images, start = 0, 0, 0, 0.0
    seen = torch.zeros(100, dtype=torch.bool, device=device)

    def net(x: torch.Tensor) -> torch.Tensor:
        logits = head(backbone((x.float() - mean) / std))
        return logits.masked_fill(~seen, float("-inf"))

    def draw(n: int) -> torch.Tensor:
        size = min(seen_n, MEMORY)
        return torch.randperm(size, device=device)[:n]

    test = [(t.test.x[:EVAL_PER_TASK].to(device), t.test.y[:EVAL_PER_TASK].to(device)) for t in tasks]
    for t, task in enumerate(tasks[:2]):
        seen[list(task.classes)] = True
        order = torch.randperm(len(task.train))
        for i, idx in enumerate(order.split(args.batch)):
            if t == 1 and i == WARMUP:
                _sync(device)
                start = time.perf_counter()
            x, y = task.train.x[idx].to(device, non_blocking=True), task.train.y[idx].to(device, non_blocking=True)
            if t == 1 and i >= WARMUP:
                images += len(y)
            backbone.train()
            logits = net(x)
            if seen_n and strategy == "ER":
                j = draw(args.batch)
                joint = net(torch.cat([x, mem_x[j]]))
                loss = F.cross_entropy(joint, torch.cat([y, mem_y[j]]))
            else:
                loss = F.cross_entropy(logits, y)
                if seen_n:  # DER++: two independent draws
                    j, k = draw(args.batch), draw(args.batch)
                    loss = (
                        loss
                        + 0.1 * F.mse_loss(net(mem_x[j]), mem_z[j])
                        + 0.5 * F.cross_entropy(net(mem_x[k]), mem_y[k])
                    )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # reservoir insertion, vectorised: sample seen_n + r goes to slot u < seen_n + r + 1 if u < MEMORY
            n = len(y)
            pos = torch.arange(seen_n, seen_n + n, device=device)
            slot = torch.where(pos < MEMORY, pos, (torch.rand(n, device=device) * (pos + 1)).long())
            keep = slot < MEMORY
            mem_x[slot[keep]], mem_y[slot[keep]] = x[keep], y[keep]
            mem_z[slot[keep]] = logits.detach()[keep].masked_fill(~seen, 0.0)
            seen_n += n
            step += 1
            if evaluate and step % EVAL_EVERY == 0:
                backbone.eval()
                with torch.no_grad():
                    for tx, ty in test[: t + 1]:
                        (net(tx).argmax(1) == ty).float().mean()
    _sync(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--nf", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: nf 4, 30 images per class, 1 round")
    parser.add_argument("--out", default="results/gpu_replay_throughput.json")
    args = parser.parse_args()
    args.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.nf, args.per_class, args.rounds, args.batch = 4, 30, 1, 16
    name = torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"
    print(
        f"device: {name}, torch {torch.__version__}, batch {args.batch}, {args.per_class} images per class", flush=True
    )
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # interleaved
        for strategy in ("ER", "DERPP"):
            for evaluate in (False, True):
                for who, fn in (("clfw", clfw_rate), ("plain", plain_rate)):
                    key = f"{strategy}{' + eval every 10' if evaluate else ''} / {who}"
                    results.setdefault(key, []).append(fn(strategy, args, evaluate))
                    print(f"{key}: {results[key][-1]:.0f} images/s", flush=True)
    summary = {}
    for strategy in ("ER", "DERPP"):
        for evaluate in (False, True):
            base = f"{strategy}{' + eval every 10' if evaluate else ''}"
            ours, plain = statistics.median(results[f"{base} / clfw"]), statistics.median(results[f"{base} / plain"])
            summary[base] = {"clfw": ours, "plain": plain, "ratio": ours / plain}
            verdict = "met" if ours / plain >= 0.9 else "NOT met"
            print(
                f"{base}: clfw {ours:.0f}, plain {plain:.0f} images/s, clfw/plain {ours / plain:.2f} (>=0.9 {verdict})"
            )
    out = ROOT / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": name, "args": vars(args), "runs": results, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    main()

"""clfw's cost per training step beside a plain PyTorch loop, bare Lightning and Avalanche (issue 14): prints the table
and every target's ratio, marked met or not met, and writes JSON to compare across commits. Not a test.

    python scripts/bench.py                                   # 3 rounds, batch 32 and 128: long (~40 processes a round)
    python scripts/bench.py --quick                           # smoke run: 1 round, 3 steps per task (seconds)
    python scripts/bench.py --only 'clfw-*,plain-*' --rounds 5 --batch-sizes 32 --out results/bench.json
    python scripts/bench.py --list                            # the variants

**Protocol.** Every variant runs in a fresh interpreter (a subprocess of this script), with 2 torch threads, on the same
tensors: the offline Split MNIST digits (``clfw.benchmarks.mnist.load_mnist("offline", seed=0)``: 400 training and 100
test images per digit; 5 tasks of 2 digits in the order 0..9; class-incremental), which this script writes once to a
temporary file that the plain, Lightning and Avalanche runs load (the clfw runs build ``clfw.benchmarks.SplitMNIST``
with the offline source and check that its tasks hold the same digits). Network: the MLP 784-400-400-10 (clfw's
``MLP`` plus a linear head, or the same layers as an ``nn.Sequential``); SGD, lr 0.01, momentum 0.9; ``--epochs``
epochs per task (default 2, the quickstart's). Measured over the training epoch loops of tasks 1-4 (task 0 warms up
and fills the memories): every step interval, from one batch's end (the optimizer step done, or for clfw the callbacks'
``on_train_batch_end``) to the next's, so data loading (batch indexing and normalisation, or each framework's loader),
every per-step hook, logging, memory insertion and sampling and per-step evaluation are inside. The first table gives
the median step interval, the second the mean (wall time of those epoch loops divided by their steps, the definition of
issue 14: it adds each epoch's start-up, and every stall of a shared CPU). The targets use the median: on this noisy
2-core machine the means of one variant varied by up to 2x between rounds, its medians by a few percent. The work done
at a task's end (EWC's Fisher, LwF's teacher copy, Avalanche's memory update, the task-end evaluation) is outside
(clfw runs it inside the last epoch, after the last interval; it is timed and subtracted from the mean). Rounds are
interleaved: each round runs every variant once, in an order shuffled per round (seeded); the tables give the median
over rounds. Run it
on an otherwise idle machine: with 2 torch threads on 2 cores, a core busy elsewhere stalls the OpenMP threads of every
operation (a 1.4 ms step measured at 10-150 ms here); the script warns when the load average exceeds 0.5, and
``--threads 1`` makes smoke runs on a shared machine usable.

**Variants** (``--only`` takes their names, or shell patterns such as ``'avalanche-*'``):

- ``plain-*``: hand-written PyTorch loops, no framework (below).
- ``lightning``, ``lightning-log``: a bare ``LightningModule`` running the plain Naive step (masked cross-entropy) in
  one ``trainer.fit`` over the 5 tasks (``reload_dataloaders_every_n_epochs=1``, the loader serves the task of the
  epoch), without and with one ``self.log("train/loss", loss)`` per step; no logger, checkpointing, progress bar or
  model summary (the same Trainer settings as the clfw runs).
- ``clfw-naive``, ``clfw-er``, ``clfw-derpp``, ``clfw-ewc``, ``clfw-lwf``: ``clfw.strategies`` ``Naive``, ``ER``
  (memory 500, replaying as many samples as the batch), ``DERPP`` (the same memory and replay size, alpha 0.1, beta
  0.5: the paper's formulation, two independent memory draws and separate forwards), ``Naive`` with the ``EWC`` plugin
  (lambda 1, one term per past task) and with the ``LwF`` plugin (alpha 1, T 2), on ``SplitMNIST``. ``clfw-derpp1``:
  ``DERPP(single_draw=True)``, the option that runs Avalanche's formulation (one draw, one joint forward), compared
  with Avalanche's ``DER``.
- ``clfw-naive-ce``: ``Naive`` plus ``ContinualEvaluation(every_n_steps=1, tasks="all")`` over the whole test sets
  (200 digits per task): per-iteration continual evaluation. Run at the first batch size only.
- ``clfw-quickstart``: the quickstart's size (ER, memory 500, per-step evaluation of all tasks, batch 32, 2 epochs),
  for its peak RSS. First batch size only.
- ``avalanche-naive``, ``avalanche-replay``, ``avalanche-der``, ``avalanche-ewc``, ``avalanche-lwf`` (needs
  ``pip install "clfw[avalanche]"``; skipped without it): ``avalanche.training`` ``Naive``, ``Replay`` (mem_size 500;
  its default experience-balanced memory, replay batch = batch), ``DER`` (mem_size 500, alpha 0.1, beta 0.5: DER++
  with one memory draw and one forward over current + memory, Avalanche's formulation), ``EWC`` (ewc_lambda 0.5,
  separate: the same penalty as clfw's lambda 1, which halves it) and ``LwF`` (alpha 1, temperature 2), on the
  ``nc_benchmark`` of ``scripts/avalanche_side_by_side.py`` (``digits_benchmark``) over the same tensors, given
  already normalised (``per_sample_transform=False``: Avalanche's cheapest data path, no per-sample transform), with
  an ``EvaluationPlugin`` without metrics or loggers (its default one logs every iteration). No class masking on this
  side (cheaper for Avalanche). These processes never import clfw or Lightning, so their peak RSS is Avalanche's own.
- ``avalanche-naive-ce``: ``Naive`` with ``eval_every=1, peval_mode="iteration"`` over the whole test stream
  (``eval_mb_size`` 1000, experience accuracy only); ``avalanche-quickstart``: ``Replay`` (500) with the same
  per-iteration evaluation, for the peak RSS. First batch size only.
- ``eval-call``: one ``ContinualEvaluation.evaluate`` call (``tasks="all"``, 5 tasks) against the bare forward passes
  it needs (``model(x)`` over the same samples, eval mode, no gradients), at 200 and 1000 samples per task (the test
  split: all 1,000 offline digits of each task's two classes), median of 100 alternated repeats each.

**The plain loops** (``plain-*``; the floor each strategy's extra cost is compared with). The same network, optimizer,
tasks, epochs and batch size; each epoch draws a seeded permutation of the task's 800 training digits and serves
``(x.float() / 255 - mean) / std`` of each batch of indices (inside the timing, as a loader would); the loss is the
cross-entropy over the classes seen so far (logits of unseen classes set to ``-inf``, as clfw's class-IL masking does);
``zero_grad``, ``backward``, ``step``. On top of that:

- ``plain-naive``: nothing.
- ``plain-er``: a tensor reservoir of 500 raw ``uint8`` digits, labels (and logits, for DER++): a batch is inserted with
  one vectorised draw (the n-th offered sample goes to slot n while the memory fills, then to a uniform slot in
  ``[0, n)`` if that is below 500; with two samples of a batch on one slot the write order decides); sampling is one
  ``randperm`` of the stored count cut to the replay size (without replacement, as clfw's Floyd draw); one generator for
  the whole run. ER: a replayed batch as large as the current one, normalised, concatenated with it, one forward, one
  masked cross-entropy; then the current batch is inserted.
- ``plain-derpp``: the same memory, also storing the current batch's raw logits; two independent draws with separate
  forwards: ``CE(current) + 0.1 MSE(f(x'), z') + 0.5 CE(f(x''), y'')``, then insertion.
- ``plain-ewc``: after each task (untimed) the empirical diagonal Fisher from squared batch gradients and the anchor are
  stored per parameter tensor; each step adds ``0.5 * 1.0 * sum_tasks sum_params (F * (p - anchor)^2).sum()`` (no
  flattening).
- ``plain-lwf``: after each task (untimed) a frozen deep copy of the network; each step adds the distillation
  ``-(softmax(teacher(x)[:, old] / 2) * log_softmax(logits[:, old] / 2)).sum(1).mean()`` over the classes of earlier
  tasks, the teacher run without gradients.

**Targets** (issue 14), each printed with its ratio at every batch size and marked met or not met: clfw Naive within
1.1x of bare Lightning without ``self.log``; Avalanche / clfw >= 1.2 for Naive, ER, EWC and LwF (DER++ printed for
information: clfw runs the paper's formulation, Avalanche a cheaper one); each strategy's extra cost over its
framework's Naive, clfw's within 1.2x of the plain loop's; per-iteration evaluation at least 4x cheaper per step than
Avalanche's, and one evaluation call within 1.2x of its bare forwards at 200 and 1000 samples per task. Also printed:
the peak RSS of a quickstart-sized run beside Avalanche's, and the bytes per sample of the replay memories.

**JSON** (``--out``, default ``results/bench.json``): ``meta`` (commit, whether the tree was dirty, versions, machine,
load average before and after, arguments), ``runs`` (every subprocess's result), ``median`` (per variant and batch) and
``targets`` (name, batch, value, goal, met).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import functools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEMORY, LR, MOMENTUM, THREADS = 500, 0.01, 0.9, 2
DERPP_ALPHA, DERPP_BETA, EWC_LAMBDA, LWF_ALPHA, LWF_T = 0.1, 0.5, 1.0, 1.0, 2.0
QUICK_STEPS = 3  # --quick: optimizer steps per epoch (one epoch per task)

VARIANTS = {  # name: what it runs (the docstring says how)
    "plain-naive": "plain PyTorch loop, Naive",
    "plain-er": "plain PyTorch loop, ER (vectorised reservoir)",
    "plain-derpp": "plain PyTorch loop, DER++ (two draws, separate forwards)",
    "plain-ewc": "plain PyTorch loop, EWC",
    "plain-lwf": "plain PyTorch loop, LwF",
    "lightning": "bare Lightning, Naive, no self.log",
    "lightning-log": "bare Lightning, Naive, one self.log per step",
    "clfw-naive": "clfw.strategies.Naive",
    "clfw-er": "clfw.strategies.ER",
    "clfw-derpp": "clfw.strategies.DERPP",
    "clfw-derpp1": "clfw.strategies.DERPP(single_draw=True): Avalanche's formulation, one draw, one joint forward",
    "clfw-ewc": "clfw.strategies.Naive + EWC",
    "clfw-lwf": "clfw.strategies.Naive + LwF",
    "clfw-naive-ce": "clfw Naive + ContinualEvaluation every step, tasks all",
    "clfw-quickstart": "clfw ER + ContinualEvaluation every step (peak RSS)",
    "avalanche-naive": "avalanche.training.Naive",
    "avalanche-replay": "avalanche.training.Replay",
    "avalanche-der": "avalanche.training.DER (DER++)",
    "avalanche-ewc": "avalanche.training.EWC",
    "avalanche-lwf": "avalanche.training.LwF",
    "avalanche-naive-ce": "Avalanche Naive, eval_every=1 per iteration over the test stream",
    "avalanche-quickstart": "Avalanche Replay, eval_every=1 per iteration (peak RSS)",
    "eval-call": "one ContinualEvaluation call vs its bare forwards, 200 and 1000 samples per task",
}
FIRST_BATCH_ONLY = {"clfw-naive-ce", "clfw-quickstart", "avalanche-naive-ce", "avalanche-quickstart"}
NO_BATCH = {"eval-call"}
STRATEGIES = [  # table row: (label, plain, clfw, avalanche)
    ("Naive", "plain-naive", "clfw-naive", "avalanche-naive"),
    (f"ER / Replay, memory {MEMORY}", "plain-er", "clfw-er", "avalanche-replay"),
    (f"DER++ (alpha {DERPP_ALPHA}, beta {DERPP_BETA})", "plain-derpp", "clfw-derpp", "avalanche-der"),
    ("DER++, single_draw=True (one draw, one joint forward)", None, "clfw-derpp1", "avalanche-der"),
    ("EWC", "plain-ewc", "clfw-ewc", "avalanche-ewc"),
    ("LwF", "plain-lwf", "clfw-lwf", "avalanche-lwf"),
]


# ------------------------------------------------------------------------------------------ in the child process
def log_quietly() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_data(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    return torch.load(spec["data"], weights_only=True)


def task_split(data: dict[str, Any], split: str = "train") -> list[tuple[Any, Any]]:
    """The 5 tasks of 2 digits (0-1, 2-3, ...) of ``split``: ``(uint8 x, y)`` each."""
    x, y = data[split]
    out = []
    for t in range(5):
        idx = ((y == 2 * t) | (y == 2 * t + 1)).nonzero().flatten()
        out.append((x[idx], y[idx]))
    return out


def make_net() -> Any:
    """The MLP 784-400-400-10 as one ``nn.Sequential`` (the layers of clfw's ``MLP`` and head, in that order)."""
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
    )


class EpochBatches:
    """One epoch of a task's training batches: a seeded permutation, each batch of indices gathered and normalised when
    served. Yields ``(x, y, idx)``."""

    def __init__(self, x: Any, y: Any, batch: int, seed: int, mean: float, std: float, limit: int = 0) -> None:
        import torch

        self.x, self.y, self.mean, self.std = x, y, mean, std
        self.order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).split(batch)
        if limit:
            self.order = self.order[:limit]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Any:
        for idx in self.order:
            yield (self.x[idx].float() / 255 - self.mean) / self.std, self.y[idx], idx


def run_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain PyTorch loops (the module docstring describes each)."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    strategy = spec["variant"].split("-", 1)[1]
    data = load_data(spec)
    mean, std, batch, epochs, limit = data["mean"], data["std"], spec["batch"], spec["epochs"], spec["limit"]
    tasks = task_split(data)
    torch.manual_seed(0)
    net = make_net()
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(0)
    mem_x = torch.zeros(MEMORY, 1, 28, 28, dtype=torch.uint8)
    mem_y, mem_z = torch.zeros(MEMORY, dtype=torch.long), torch.zeros(MEMORY, 10)
    seen = 0  # samples offered to the reservoir
    anchors: list[tuple[list[Any], list[Any]]] = []  # EWC: (Fisher, anchor) per past task, per parameter tensor
    teacher = None
    seen_classes = torch.zeros(10, dtype=torch.bool)

    def norm(raw: Any) -> Any:
        return (raw.float() / 255 - mean) / std

    def draw(k: int) -> Any:
        return torch.randperm(min(seen, MEMORY), generator=gen)[:k]

    def insert(raw: Any, y: Any, z: Any | None = None) -> None:
        nonlocal seen
        n = len(y)
        counts = torch.arange(seen + 1, seen + n + 1)  # n-th offered sample
        j = (torch.rand(n, generator=gen) * counts).long()
        slots = torch.where(counts <= MEMORY, counts - 1, j)
        keep = slots < MEMORY
        s = slots[keep]
        mem_x[s], mem_y[s] = raw[keep], y[keep]
        if z is not None:
            mem_z[s] = z[keep]
        seen += n

    seconds, steps, intervals = 0.0, 0, []
    for t, (x_t, y_t) in enumerate(tasks):
        old = seen_classes.clone()
        seen_classes[2 * t : 2 * t + 2] = True
        unseen = ~seen_classes
        for e in range(epochs):
            start, n_steps, epoch_intervals = time.perf_counter(), 0, []
            last = start
            for x, y, idx in EpochBatches(x_t, y_t, batch, t * epochs + e, mean, std, limit):
                if strategy == "er" and seen:
                    j = draw(batch)
                    joint = net(torch.cat([x, norm(mem_x[j])]))
                    loss = F.cross_entropy(joint.masked_fill(unseen, -math.inf), torch.cat([y, mem_y[j]]))
                    logits = joint[: len(y)]
                else:
                    logits = net(x)
                    loss = F.cross_entropy(logits.masked_fill(unseen, -math.inf), y)
                if strategy == "derpp" and seen:
                    j = draw(batch)
                    loss = loss + DERPP_ALPHA * F.mse_loss(net(norm(mem_x[j])), mem_z[j])
                    k = draw(batch)
                    replayed = net(norm(mem_x[k])).masked_fill(unseen, -math.inf)
                    loss = loss + DERPP_BETA * F.cross_entropy(replayed, mem_y[k])
                if strategy == "ewc" and anchors:
                    penalty = sum(
                        (f * (p - a).pow(2)).sum()
                        for fisher, anchor in anchors
                        for f, a, p in zip(fisher, anchor, params, strict=True)
                    )
                    loss = loss + 0.5 * EWC_LAMBDA * penalty
                if strategy == "lwf" and teacher is not None:
                    with torch.no_grad():
                        target = torch.softmax(teacher(x)[:, old] / LWF_T, 1)
                    log_p = torch.log_softmax(logits[:, old] / LWF_T, 1)
                    loss = loss + LWF_ALPHA * -(target * log_p).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if strategy == "er":
                    insert(x_t[idx], y)
                elif strategy == "derpp":
                    insert(x_t[idx], y, logits.detach())
                n_steps += 1
                now = time.perf_counter()
                epoch_intervals.append(now - last)
                last = now
            if t >= 1:
                seconds += time.perf_counter() - start
                steps += n_steps
                intervals += epoch_intervals
        # task end, untimed
        if strategy == "ewc":
            fisher = [torch.zeros_like(p) for p in params]
            batches = list(EpochBatches(x_t, y_t, 32, 0, mean, std))
            for x, y, _ in batches:
                grads = torch.autograd.grad(F.cross_entropy(net(x).masked_fill(unseen, -math.inf), y), params)
                for f, g in zip(fisher, grads, strict=True):
                    f += g.pow(2) / len(batches)
            anchors.append((fisher, [p.detach().clone() for p in params]))
        if strategy == "lwf":
            teacher = copy.deepcopy(net).requires_grad_(False).eval()
    out: dict[str, Any] = {"seconds": seconds, "steps": steps, "intervals": intervals}
    if strategy in ("er", "derpp"):
        sizes = {"x": mem_x[0].nbytes, "y": mem_y[0].element_size()}
        if strategy == "derpp":
            sizes["logits"] = mem_z[0].nbytes
        out["bytes_per_sample"] = sizes
    return out


def lightning_timer(first_timed_epoch: int) -> Any:
    """A callback timing each training epoch from ``on_train_epoch_start`` to ``on_train_epoch_end`` (callback hooks,
    which Lightning calls before the module's), minus the ``excluded`` seconds of task-end work inside it."""
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.seconds, self.steps, self.task_end_s, self.excluded = 0.0, 0, 0.0, 0.0
            self.intervals: list[float] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.excluded, self.n, self.epoch_intervals = 0.0, 0, []
            self.start = self.last = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.n += 1
            now = time.perf_counter()
            self.epoch_intervals.append(now - self.last)
            self.last = now

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            if trainer.current_epoch >= first_timed_epoch:
                self.seconds += time.perf_counter() - self.start - self.excluded
                self.steps += self.n
                self.task_end_s += self.excluded
                self.intervals += self.epoch_intervals

    return EpochTimer()


def make_trainer(spec: dict[str, Any], callbacks: list[Any], **kwargs: Any) -> Any:
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=spec["workdir"],
        limit_train_batches=spec["limit"] or 1.0, **kwargs,
    )  # fmt: skip


def run_lightning(spec: dict[str, Any]) -> dict[str, Any]:
    """Bare Lightning: the plain Naive step in a ``LightningModule``, one fit over the 5 tasks."""
    import pytorch_lightning as pl
    import torch
    from torch.nn import functional as F  # noqa: N812

    data = load_data(spec)
    tasks, epochs, log = task_split(data), spec["epochs"], spec["variant"] == "lightning-log"

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()
            self.register_buffer("seen", torch.zeros(10, dtype=torch.bool))

        def train_dataloader(self) -> EpochBatches:  # called at every epoch start: the epoch's task
            t = self.current_epoch // epochs
            self.seen[: 2 * t + 2] = True
            x, y = tasks[t]
            return EpochBatches(x, y, spec["batch"], self.current_epoch, data["mean"], data["std"])

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y, _ = batch
            loss = F.cross_entropy(self.net(x).masked_fill(~self.seen, -math.inf), y)
            if log:
                self.log("train/loss", loss, batch_size=len(y))
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    torch.manual_seed(0)
    module, timer = Bare(), lightning_timer(epochs)
    trainer = make_trainer(spec, [timer], max_epochs=5 * epochs, reload_dataloaders_every_n_epochs=1)
    trainer.fit(module)
    return {"seconds": timer.seconds, "steps": timer.steps, "intervals": timer.intervals}


def run_clfw(spec: dict[str, Any]) -> dict[str, Any]:
    """clfw's strategies on ``clfw.benchmarks.SplitMNIST`` (offline source)."""
    import pytorch_lightning as pl
    import torch

    import clfw.strategies as S  # noqa: N812
    from clfw import ContinualEvaluation
    from clfw.backbones import MLP
    from clfw.benchmarks import SplitMNIST

    kind, batch, epochs = spec["variant"].split("-", 1)[1], spec["batch"], spec["epochs"]
    pl.seed_everything(0, verbose=False)
    dm = SplitMNIST(n_tasks=5, batch_size=batch, epochs_per_task=epochs, seed=0, source="offline")
    for task, (x, y) in zip(dm.stream.tasks, task_split(load_data(spec)), strict=True):  # the same digits
        same = len(task.train) == len(y) and int(task.train.x.long().sum()) == int(x.long().sum())
        if not same or sorted(task.classes) != sorted(set(y.tolist())):
            raise RuntimeError("clfw's SplitMNIST and the benchmark's tensors differ")
    common: dict[str, Any] = {
        "backbone": MLP(784, [400, 400]),
        "num_classes": 10,
        "optimizer": functools.partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM),
    }
    replay = {"buffer_size": MEMORY, "replay_batch_size": batch}
    callbacks: list[Any] = []
    if kind in ("naive-ce", "quickstart"):
        callbacks.append(ContinualEvaluation(every_n_steps=1, samples_per_task=1000, tasks="all", plot=False))
    if kind in ("er", "quickstart"):
        module = S.ER(**replay, **common)
    elif kind in ("derpp", "derpp1"):
        module = S.DERPP(alpha=DERPP_ALPHA, beta=DERPP_BETA, single_draw=kind == "derpp1", **replay, **common)
    elif kind == "ewc":
        module = S.Naive(plugins=[S.EWC(ewc_lambda=EWC_LAMBDA)], **common)
    elif kind == "lwf":
        module = S.Naive(plugins=[S.LwF(alpha=LWF_ALPHA, temperature=LWF_T)], **common)
    else:
        module = S.Naive(**common)
    timer = lightning_timer(epochs)
    end_task = module._end_task

    def timed_end_task(task: int) -> None:  # task-end work runs inside the last epoch: timed, then subtracted
        start = time.perf_counter()
        end_task(task)
        timer.excluded += time.perf_counter() - start

    module._end_task = timed_end_task
    trainer = make_trainer(spec, [timer, *callbacks])
    with contextlib.redirect_stdout(sys.stderr):  # ContinualEvaluation prints its summary
        trainer.fit(module, dm)
    out: dict[str, Any] = {"seconds": timer.seconds, "steps": timer.steps, "task_end_s": timer.task_end_s,
                           "intervals": timer.intervals}  # fmt: skip
    buffer = getattr(module, "buffer", None)
    if buffer is not None and buffer.fields:
        out["bytes_per_sample"] = buffer.nbytes_per_sample()
    return out


def run_avalanche(spec: dict[str, Any]) -> dict[str, Any]:
    """Avalanche's strategies on ``avalanche_side_by_side.py``'s benchmark over the same (normalised) tensors."""
    import torch
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import DER, EWC, LwF, Naive, Replay
    from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
    from avalanche_side_by_side import digits_benchmark
    from torch import nn

    kind, batch, limit = spec["variant"].split("-", 1)[1], spec["batch"], spec["limit"]
    data = load_data(spec)

    def norm(x: Any) -> Any:
        return (x.float() / 255 - data["mean"]) / data["std"]

    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    bm = digits_benchmark(((norm(train_x), train_y), (norm(test_x), test_y)), per_sample_transform=False)

    class EpochTimer(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.seconds, self.steps, self.intervals = 0.0, 0, []

        def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
            self.n, self.start, self.epoch_intervals = 0, time.perf_counter(), []
            self.last = self.start

        def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
            self.n += 1
            now = time.perf_counter()
            self.epoch_intervals.append(now - self.last)
            self.last = now
            if limit and self.n >= limit:
                strategy.stop_training()  # --quick (one epoch per task)

        def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
            if strategy.experience.current_experience >= 1:
                self.seconds += time.perf_counter() - self.start
                self.steps += self.n
                self.intervals += self.epoch_intervals

    per_step_eval = kind in ("naive-ce", "quickstart")
    torch.manual_seed(0)
    model, timer = make_net(), EpochTimer()
    common: dict[str, Any] = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch,
        train_epochs=spec["epochs"],
        eval_mb_size=1000,
        device="cpu",
        plugins=[timer],
        evaluator=EvaluationPlugin(*([accuracy_metrics(experience=True)] if per_step_eval else []), loggers=[]),
    )
    if per_step_eval:
        common.update(eval_every=1, peval_mode="iteration")
    if kind in ("replay", "quickstart"):
        learner = Replay(mem_size=MEMORY, **common)
    elif kind == "der":
        learner = DER(mem_size=MEMORY, alpha=DERPP_ALPHA, beta=DERPP_BETA, **common)
    elif kind == "ewc":
        learner = EWC(ewc_lambda=EWC_LAMBDA / 2, mode="separate", **common)
    elif kind == "lwf":
        learner = LwF(alpha=LWF_ALPHA, temperature=LWF_T, **common)
    else:
        learner = Naive(**common)
    for exp in bm.train_stream:
        learner.train(exp, eval_streams=[bm.test_stream] if per_step_eval else None, num_workers=0)
    return {"seconds": timer.seconds, "steps": timer.steps, "intervals": timer.intervals}


def run_eval_call(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``ContinualEvaluation.evaluate`` call against the bare forwards it needs, at 200 and 1000 per task."""
    from types import SimpleNamespace

    import torch

    from clfw import ContinualEvaluation, Stream
    from clfw.backbones import MLP
    from clfw.benchmarks.mnist import MNISTStream
    from clfw.data import class_incremental_tasks
    from clfw.strategies import Naive

    data = load_data(spec)
    x = torch.cat([data["train"][0], data["test"][0]])
    y = torch.cat([data["train"][1], data["test"][1]])

    class AllDigits(MNISTStream):
        """5 tasks x 2 digits whose test split is all 1,000 offline digits of the task's classes."""

        n_tasks = 5

        def build_stream(self) -> Stream:
            return Stream(class_incremental_tasks((x, y), (x, y), list(range(10)), [2] * 5), "class", 10, (1, 28, 28))

    torch.manual_seed(0)
    dm, model = AllDigits(), Naive(backbone=MLP(784, [400, 400]), num_classes=10)
    model.attach_stream(dm)
    model.current_task = 4
    model._update_seen_mask()
    model.eval()
    out: dict[str, Any] = {}
    for n in (200, 1000):
        ce = ContinualEvaluation(samples_per_task=n, tasks="all", plot=False)
        ce.setup(SimpleNamespace(datamodule=dm, global_rank=0, world_size=1), model, "fit")
        inputs = ce._data[0]

        def bare(inputs: Any = inputs) -> None:
            with torch.no_grad():
                model(inputs)

        def call(ce: Any = ce) -> None:
            ce.evaluate(model, 4)

        times: dict[str, list[float]] = {"bare": [], "call": []}
        bare(), call()
        for _ in range(spec["repeats"]):
            for name, fn in (("bare", bare), ("call", call)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        out[str(n)] = {
            "samples": len(inputs),
            "bare_ms": 1e3 * statistics.median(times["bare"]),
            "call_ms": 1e3 * statistics.median(times["call"]),
        }
        out[str(n)]["ratio"] = out[str(n)]["call_ms"] / out[str(n)]["bare_ms"]
    return out


def peak_rss_mib() -> float | None:
    """This process's peak resident memory: ``VmHWM``, kept per address space, so it starts afresh at ``exec``.
    (``getrusage``'s ``ru_maxrss`` would not do: Linux carries it over from the parent that forked the process.)"""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def child(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    log_quietly()
    family = spec["variant"].split("-")[0]
    runner = {
        "plain": run_plain,
        "lightning": run_lightning,
        "clfw": run_clfw,
        "avalanche": run_avalanche,
        "eval": run_eval_call,
    }[family]
    start = time.perf_counter()
    out = runner(spec)
    out["wall_s"] = time.perf_counter() - start
    if out.get("steps"):
        # the robust figure: the median step interval (a stall of the shared CPU lengthens a few steps, not the median)
        intervals = out.pop("intervals", None) or []
        out["ms_per_step_mean"] = 1e3 * out["seconds"] / out["steps"]
        out["ms_per_step"] = 1e3 * statistics.median(intervals) if intervals else out["ms_per_step_mean"]
    out["peak_rss_mib"] = peak_rss_mib()
    out["modules"] = sorted(m for m in ("clfw", "pytorch_lightning", "avalanche") if m in sys.modules)
    print("BENCH-RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------- in the parent process
def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_data(path: Path) -> None:
    """The offline Split MNIST tensors every variant trains on."""
    import torch

    from clfw.benchmarks.mnist import MNIST_MEAN, MNIST_STD, load_mnist

    train, test = load_mnist("offline", "data", False, seed=0)
    torch.save({"train": train, "test": test, "mean": MNIST_MEAN[0], "std": MNIST_STD[0]}, path)


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {"error": f"exit code {proc.returncode}: " + "\n".join(tail)}


def select(only: str | None, have_avalanche: bool) -> list[str]:
    names = list(VARIANTS)
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        unknown = [p for p in patterns if not fnmatch.filter(names, p)]
        if unknown:
            raise SystemExit(f"--only: no variant matches {unknown}; the variants: {', '.join(names)}")
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not have_avalanche:
        names = [n for n in names if not n.startswith("avalanche-")]
    return names


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "pytorch-lightning", "avalanche-lib", "clfw"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout

    dirty = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip() or None, "dirty": sorted(line[3:] for line in dirty)}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summarize(runs: list[dict[str, Any]], batch_sizes: list[int]) -> dict[str, Any]:
    """Medians over rounds and the targets."""
    per: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
    for run in runs:
        if "error" not in run:
            per.setdefault((run["variant"], run["batch"]), []).append(run)

    def med(variant: str, batch: int | None, key: str = "ms_per_step") -> float | None:
        values = [r[key] for r in per.get((variant, batch), []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    median = {
        f"{v}@{b}" if b is not None else v: {
            "ms_per_step": med(v, b),
            "ms_per_step_mean": med(v, b, "ms_per_step_mean"),
            "peak_rss_mib": med(v, b, "peak_rss_mib"),
            "rounds": len(rs),
        }
        for (v, b), rs in per.items()
    }
    targets: list[dict[str, Any]] = []

    def target(name: str, batch: int | None, value: float | None, goal: str, detail: str = "") -> None:
        met = None
        if value is not None and goal != "info":
            bound = float(goal.split()[1])
            met = value <= bound if goal.startswith("<=") else value >= bound
        targets.append({"name": name, "batch": batch, "value": value, "goal": goal, "met": met, "detail": detail})

    for b in batch_sizes:
        target(
            "clfw Naive / bare Lightning without self.log",
            b,
            ratio(med("clfw-naive", b), med("lightning", b)),
            "<= 1.1",
        )
    for b in batch_sizes:
        target(
            "bare Lightning with one self.log / without", b, ratio(med("lightning-log", b), med("lightning", b)), "info"
        )
    for label, _, ours, theirs in STRATEGIES:
        goal = "info" if ours == "clfw-derpp" else ">= 1.2"
        name = f"Avalanche / clfw, {label.split(' (')[0].split(',')[0]}"
        if ours == "clfw-derpp":
            name += " (paper's two draws vs Avalanche's one)"
        if ours == "clfw-derpp1":
            name += " (single_draw=True: both Avalanche's formulation)"
        for b in batch_sizes:
            target(name, b, ratio(med(theirs, b), med(ours, b)), goal)
    for label, plain, ours, _ in STRATEGIES[1:]:
        if plain is None:
            continue
        for b in batch_sizes:
            c_naive, p_naive, c, p = med("clfw-naive", b), med("plain-naive", b), med(ours, b), med(plain, b)
            extra_c = None if c is None or c_naive is None else c - c_naive
            extra_p = None if p is None or p_naive is None else p - p_naive
            value = ratio(extra_c, extra_p) if extra_p is not None and extra_p > 0 else None
            detail = f"clfw +{fmt(extra_c)} ms, plain +{fmt(extra_p)} ms"
            name = f"extra cost over Naive, clfw / plain loop, {label.split(' (')[0].split(',')[0]}"
            target(name, b, value, "<= 1.2", detail)
    b0 = batch_sizes[0]
    c_ce, a_ce = med("clfw-naive-ce", b0), med("avalanche-naive-ce", b0)
    target("per-step evaluation, Avalanche eval_every=1 / clfw ContinualEvaluation", b0, ratio(a_ce, c_ce), ">= 4",
           f"ms per step with evaluation: clfw {fmt(c_ce)}, Avalanche {fmt(a_ce)}")  # fmt: skip
    c_over = None if c_ce is None or med("clfw-naive", b0) is None else c_ce - med("clfw-naive", b0)
    a_over = None if a_ce is None or med("avalanche-naive", b0) is None else a_ce - med("avalanche-naive", b0)
    target("evaluation's own cost per step, Avalanche / clfw", b0, ratio(a_over, c_over), "info",
           f"clfw +{fmt(c_over)} ms, Avalanche +{fmt(a_over)} ms")  # fmt: skip
    calls = per.get(("eval-call", None), [])
    for n in ("200", "1000"):
        values = [r[n]["ratio"] for r in calls]
        detail = ""
        if calls:
            detail = (
                f"call {statistics.median(r[n]['call_ms'] for r in calls):.2f} ms, bare forwards "
                f"{statistics.median(r[n]['bare_ms'] for r in calls):.2f} ms, {calls[0][n]['samples']} samples in all"
            )
        value = statistics.median(values) if values else None
        target(f"one evaluation call / its bare forwards, {n} samples per task", None, value, "<= 1.2", detail)
    rss_c, rss_a = med("clfw-quickstart", b0, "peak_rss_mib"), med("avalanche-quickstart", b0, "peak_rss_mib")
    target("peak RSS of a quickstart-sized run, Avalanche / clfw", b0, ratio(rss_a, rss_c), "info",
           f"clfw {fmt(rss_c, 0)} MiB, Avalanche {fmt(rss_a, 0)} MiB")  # fmt: skip
    memory = {}
    for v in ("plain-er", "plain-derpp", "clfw-er", "clfw-derpp", "clfw-quickstart"):
        found = [
            r["bytes_per_sample"] for (name, _), rs in per.items() if name == v for r in rs if "bytes_per_sample" in r
        ]
        if found:
            memory[v] = found[0]
    return {"median": median, "targets": targets, "bytes_per_sample": memory, "_med": med}


def report(summary: dict[str, Any], batch_sizes: list[int], meta: dict[str, Any]) -> str:
    med = summary["_med"]
    lines: list[str] = []

    def cells(variant: str | None, key: str = "ms_per_step") -> str:
        if variant is None:
            return "-"
        values = [med(variant, b, key) for b in batch_sizes]
        return "-" if all(v is None for v in values) else " / ".join(fmt(v) for v in values)

    sizes = " / ".join(f"b{b}" for b in batch_sizes)
    avalanche = f"Avalanche {meta['versions'].get('avalanche-lib') or '(not installed)'}"
    lines.append(
        f"ms per training step: the median step interval (one batch's end to the next's: data, hooks, forward, "
        f"backward, update), median of {meta['args']['rounds']} interleaved rounds ({sizes}):"
    )
    lines.append("")
    header = ["plain PyTorch loop", "bare Lightning", "bare Lightning, one `self.log` per step", "clfw", avalanche]
    lines.append(f"| ms per step, {sizes} | " + " | ".join(header) + " |")
    lines.append("|---|---|---|---|---|---|")
    for label, plain, ours, theirs in STRATEGIES:
        light = ("lightning", "lightning-log") if ours == "clfw-naive" else (None, None)
        row = [label, cells(plain), cells(light[0]), cells(light[1]), cells(ours), cells(theirs)]
        if any(cell != "-" for cell in row[1:]):
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("The same as means (wall time of the timed epoch loops / steps: epoch starts included, and every "
                 "stall of the shared CPU):")  # fmt: skip
    lines.append("")
    lines.append(f"| mean ms per step, {sizes} | " + " | ".join(header) + " |")
    lines.append("|---|---|---|---|---|---|")
    for label, plain, ours, theirs in STRATEGIES:
        light = ("lightning", "lightning-log") if ours == "clfw-naive" else (None, None)
        row = [label, *(cells(v, "ms_per_step_mean") for v in (plain, *light, ours, theirs))]
        if any(cell != "-" for cell in row[1:]):
            lines.append("| " + " | ".join(row) + " |")
    b0 = batch_sizes[0]
    ce_c, ce_a = med("clfw-naive-ce", b0), med("avalanche-naive-ce", b0)
    if ce_c is not None or ce_a is not None:
        lines.append(f"| Naive + evaluation of all tasks' whole test sets every step, b{b0} | - | - | - | {fmt(ce_c)} "
                     f"| {fmt(ce_a)} |")  # fmt: skip
    q_c, q_a = med("clfw-quickstart", b0), med("avalanche-quickstart", b0)
    if q_c is not None or q_a is not None:
        lines.append(f"| quickstart-sized: ER / Replay + evaluation every step, b{b0} | - | - | - | {fmt(q_c)} "
                     f"| {fmt(q_a)} |")  # fmt: skip
    lines.append("")
    lines.append("| target | batch | ratio | goal | met | |")
    lines.append("|---|---|---|---|---|---|")
    for t in summary["targets"]:
        if t["value"] is None:  # not measured in this run (see --only)
            continue
        met = {True: "met", False: "NOT MET", None: "-" if t["goal"] != "info" else ""}[t["met"]]
        lines.append(f"| {t['name']} | {t['batch'] or ''} | {fmt(t['value'])} | {t['goal']} | {met} | {t['detail']} |")
    memory = summary["bytes_per_sample"]
    if memory:
        lines.append("")
        lines.append("bytes per memory sample (the raw input, a uint8 1x28x28 digit, is 784 bytes):")
        for v, sizes_ in memory.items():
            fields = ", ".join(f"{k} {n}" for k, n in sizes_.items())
            lines.append(f"  {v}: {sum(sizes_.values())} ({fields}); input {sizes_['x'] / 784:.3f} of the raw digit")
        if meta["versions"].get("avalanche-lib"):
            lines.append("  Avalanche: its memories index the training set, which stays whole in memory (not counted)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    parser.add_argument("--batch-sizes", nargs="+", default=["32", "128"], help="e.g. 32 128 or 32,128")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per task (default 2; --quick: 1)")
    parser.add_argument("--only", default=None, help="comma-separated variants or patterns ('clfw-*'); see --list")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_STEPS} steps per task, 1 round")
    parser.add_argument("--out", default="results/bench.json", help="JSON results (default results/bench.json)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads per run (default {THREADS})")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed to one variant's process")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.list:
        for name, what in VARIANTS.items():
            print(f"{name:<22}{what}")
        return
    import importlib.util

    batch_sizes = [int(b) for item in args.batch_sizes for b in item.split(",") if b]
    rounds = args.rounds or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 2)
    have_avalanche = importlib.util.find_spec("avalanche") is not None
    names = select(args.only, have_avalanche)
    load = os.getloadavg()[0]
    if load > 0.5:
        progress(
            f"warning: load average {load:.2f} before the start: other processes share the CPU, and with "
            f"{args.threads} torch threads on {os.cpu_count()} cores a busy core stalls each step's OpenMP threads "
            "(seen: a 1.4 ms step taking 10-150 ms); the figures are noise unless the machine is otherwise idle"
        )
    if not have_avalanche:
        progress("avalanche-lib is not installed (pip install 'clfw[avalanche]'): the Avalanche variants are skipped")
    jobs = [
        (v, None if v in NO_BATCH else b)
        for v in names
        for b in ([None] if v in NO_BATCH else batch_sizes[:1] if v in FIRST_BATCH_ONLY else batch_sizes)
    ]
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **git_state(),
        "versions": versions(),
        "machine": machine(),
        "threads": args.threads,
        "loadavg_before": os.getloadavg(),
        "args": {
            "rounds": rounds,
            "batch_sizes": batch_sizes,
            "epochs": epochs,
            "quick": args.quick,
            "only": args.only,
            "variants": names,
        },
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clfw-bench-") as tmp:
        data = Path(tmp) / "split_mnist_offline.pt"
        write_data(data)
        total, done = rounds * len(jobs), 0
        for r in range(rounds):
            order = jobs[:]
            random.Random(r).shuffle(order)
            for variant, batch in order:
                spec = {
                    "variant": variant, "batch": batch, "epochs": epochs, "limit": QUICK_STEPS if args.quick else 0,
                    "data": str(data), "workdir": tempfile.mkdtemp(dir=tmp), "threads": args.threads,
                    "repeats": 5 if args.quick else 100,
                }  # fmt: skip
                start = time.perf_counter()
                result = {"variant": variant, "batch": batch, "round": r, **run_child(spec, args.timeout)}
                runs.append(result)
                done += 1
                what = f"{variant}" + (f" b{batch}" if batch else "")
                if "error" in result:
                    shown = f"FAILED: {result['error']}"
                elif "ms_per_step" in result:
                    shown = f"{result['ms_per_step']:.2f} ms/step over {result['steps']} steps"
                else:
                    shown = ", ".join(f"{n} per task: x{result[n]['ratio']:.2f}" for n in ("200", "1000"))
                progress(f"[{done}/{total}] round {r + 1}/{rounds} {what}: {shown} "
                         f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    meta["loadavg_after"] = os.getloadavg()
    summary = summarize(runs, batch_sizes)
    print(report(summary, batch_sizes, meta))
    failed = [r for r in runs if "error" in r]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "median": summary["median"], "targets": summary["targets"],
               "bytes_per_sample": summary["bytes_per_sample"], "runs": runs}  # fmt: skip
    out.write_text(json.dumps(payload, indent=1) + "\n")
    progress(f"wrote {out}" + (f"; {len(failed)} run(s) failed" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

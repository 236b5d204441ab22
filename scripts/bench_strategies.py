"""Benchmark of the replay and regularization strategies (prints figures; not a test).

    python scripts/bench_strategies.py

On the quickstart's stream (offline Split MNIST, class-IL, MLP 2x400, Adam 1e-3, batch 32, 2 epochs per task):

1. Time per training step of every strategy (median over the steps of tasks 1-4, where the memories and penalties are
   active; timed from ``on_train_batch_start`` to ``on_train_batch_end``, so forward, backward, optimizer step and
   memory insertion, not data loading), relative to Naive, and, for Naive and the replay strategies, relative to a
   hand-written PyTorch loop doing the same replay (same network, memory sizes, insertion rules and losses, timed the
   same way; memories written sample by sample in Python, as such loops usually are; A-GEM's, iCaRL's and GDumb's
   task-end work - episodic memory, herding, retraining - is outside the steps and left out of both; the hand loop
   picks A-GEM's episodes and iCaRL's exemplars at random). Task-end work (Fisher, herding, GDumb's retraining) is
   not a step: the whole fit time is printed beside.
2. Bytes per stored sample of each replay memory: the input field against the raw input (a uint8 28x28 digit, 784
   bytes; target: within 5%), and the other fields' exact sizes.
3. Refresh learning's cost: time per step of Naive, ER and DER++ with the ``Refresh`` plugin over the same strategy
   alone (target: at most one more forward and backward pass of the batch), on the MLP above and on the reduced
   ResNet-18 (nf 20) with random CIFAR-shaped images (2 tasks x 2 classes x 256 images), where the forward and
   backward passes, not the per-parameter noise, dominate.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.nn import functional as F  # noqa: N812

import clfw.strategies
from clfw import ContinualDataModule, Normalize, Plugin, Stream
from clfw.backbones import MLP, ResNet18
from clfw.benchmarks import SplitMNIST
from clfw.data import class_incremental_tasks
from clfw.prompt import PromptModule

KWARGS: dict[str, dict[str, Any]] = {"GDumb": {"epochs": 16}}  # the paper's 256 epochs only lengthen the fit time
HAND = ("Naive", "ER", "ERACE", "DER", "DERPP", "AGEM", "ICaRL", "GDumb")
MEMORY, REPLAY = 500, 32


class StepTimer(pl.Callback):
    """Times each training step of tasks >= 1."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        if module.current_task >= 1:
            self.times.append(time.perf_counter() - self.start)


def data() -> SplitMNIST:
    return SplitMNIST(n_tasks=5, batch_size=32, epochs_per_task=2)


def make(name: str, refresh: bool = False) -> Any:
    cls = getattr(clfw.strategies, name)
    common = {"backbone": MLP(), "optimizer": lambda p: torch.optim.Adam(p, lr=1e-3)}
    extra = [clfw.strategies.Refresh()] if refresh else []
    if issubclass(cls, Plugin):
        return clfw.strategies.Naive(plugins=[cls(), *extra], **common)
    return cls(plugins=extra, **common, **KWARGS.get(name, {}))


def timed_fit(module: Any, dm: ContinualDataModule) -> tuple[float, float]:
    """Fits ``module`` quietly on the CPU: the median step time of tasks >= 1 and the whole fit's seconds."""
    timer = StepTimer()
    trainer = pl.Trainer(
        max_epochs=dm.total_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, dm)
    return statistics.median(timer.times), time.perf_counter() - start


def lightning_run(name: str, refresh: bool = False) -> tuple[float, float, Any]:
    pl.seed_everything(0, verbose=False)
    module = make(name, refresh)
    return (*timed_fit(module, data()), module)


def hand_loop(name: str) -> float:
    """The same training written as a plain PyTorch loop; median step time over tasks 1-4."""
    torch.manual_seed(0)
    dm = data()
    norm = dm.train_transform()
    backbone, head = MLP(), torch.nn.Linear(400, 10)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    mem_x = torch.zeros(MEMORY, 1, 28, 28, dtype=torch.uint8)
    mem_y, mem_z = torch.zeros(MEMORY, dtype=torch.long), torch.zeros(MEMORY, 10)
    seen, times, counts, teacher = 0, [], {}, None
    seen_classes = torch.zeros(10, dtype=torch.bool)
    for t, task in enumerate(dm.stream.tasks):
        old_classes = seen_classes.clone()
        seen_classes[list(task.classes)] = True
        for _ in range(dm.epochs_per_task):
            for idx in torch.randperm(len(task.train)).split(32):
                x_raw, y = task.train.x[idx], task.train.y[idx]
                x = norm(x_raw)
                start = time.perf_counter()
                if name == "GDumb":  # the stream only fills the class-balanced memory, greedily
                    for i in range(len(y)):
                        c = int(y[i])
                        counts.setdefault(c, [])
                        if seen < MEMORY:
                            slot, seen = seen, seen + 1
                        elif len(counts[c]) < MEMORY / len(counts):
                            largest = max(counts, key=lambda k: len(counts[k]))
                            slot = counts[largest].pop(int(torch.randint(len(counts[largest]), ())))
                        else:
                            continue
                        counts[c].append(slot)
                        mem_x[slot], mem_y[slot] = x_raw[i], y[i]
                    if t >= 1:
                        times.append(time.perf_counter() - start)
                    continue
                if name == "ICaRL":
                    if seen:
                        j = torch.randint(seen, (REPLAY,))
                        x, y = torch.cat([x, norm(mem_x[j])]), torch.cat([y, mem_y[j]])
                    logits = head(backbone(x))
                    targets = F.one_hot(y, 10).float()
                    if teacher is not None:
                        with torch.no_grad():
                            targets[:, old_classes] = torch.sigmoid(teacher(x))[:, old_classes]
                    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
                    loss = (bce * seen_classes).sum(1).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if t >= 1:
                        times.append(time.perf_counter() - start)
                    continue
                if name == "ER" and seen:  # one forward over the current batch and the replayed one
                    j = torch.randint(min(seen, MEMORY), (REPLAY,))
                    joint = head(backbone(torch.cat([x, norm(mem_x[j])])))
                    logits = joint[: len(y)]
                    loss = F.cross_entropy(joint.masked_fill(~seen_classes, float("-inf")), torch.cat([y, mem_y[j]]))
                elif name == "ERACE":
                    logits = head(backbone(x))
                    present = torch.zeros(10, dtype=torch.bool)
                    present[y] = True
                    loss = F.cross_entropy(logits.masked_fill(~present, float("-inf")), y)
                else:
                    logits = head(backbone(x))
                    loss = F.cross_entropy(logits.masked_fill(~seen_classes, float("-inf")), y)
                if name in ("ERACE", "DER", "DERPP") and seen:
                    j = torch.randint(min(seen, MEMORY), (REPLAY,))
                    out = head(backbone(norm(mem_x[j])))
                    if name == "ERACE":
                        loss = loss + F.cross_entropy(out.masked_fill(~seen_classes, float("-inf")), mem_y[j])
                    else:
                        loss = loss + 0.3 * F.mse_loss(out, mem_z[j])
                    if name == "DERPP":
                        k = torch.randint(min(seen, MEMORY), (REPLAY,))
                        out2 = head(backbone(norm(mem_x[k]))).masked_fill(~seen_classes, float("-inf"))
                        loss = loss + 0.5 * F.cross_entropy(out2, mem_y[k])
                opt.zero_grad()
                loss.backward()
                if name == "AGEM" and seen:
                    j = torch.randint(seen, (256,))
                    ref_loss = F.cross_entropy(
                        head(backbone(norm(mem_x[j]))).masked_fill(~seen_classes, float("-inf")), mem_y[j]
                    )
                    g_ref = torch.cat([r.flatten() for r in torch.autograd.grad(ref_loss, params)])
                    g = torch.cat([p.grad.flatten() for p in params])
                    if torch.dot(g, g_ref) < 0:
                        g = g - torch.dot(g, g_ref) / torch.dot(g_ref, g_ref) * g_ref
                        torch.nn.utils.vector_to_parameters(g, [p.grad for p in params])
                opt.step()
                if name not in ("Naive", "AGEM"):  # reservoir insertion, one sample at a time
                    for i in range(len(y)):
                        seen += 1
                        slot = seen - 1 if seen <= MEMORY else int(torch.randint(seen, ()))
                        if slot < MEMORY:
                            mem_x[slot], mem_y[slot], mem_z[slot] = x_raw[i], y[i], logits[i].detach()
                if t >= 1:
                    times.append(time.perf_counter() - start)
        if name in ("AGEM", "ICaRL"):  # task end, untimed: A-GEM's per-task episode; iCaRL's exemplars and teacher
            per_task = MEMORY // dm.n_tasks if name == "AGEM" else MEMORY // int(seen_classes.sum())
            pick = torch.randperm(len(task.train))[: per_task * (1 if name == "AGEM" else len(task.classes))]
            n = len(pick) if name == "AGEM" else min(MEMORY, len(pick))
            start_slot = seen if name == "AGEM" else 0
            mem_x[start_slot : start_slot + n], mem_y[start_slot : start_slot + n] = (
                task.train.x[pick[:n]],
                task.train.y[pick[:n]],
            )
            seen = start_slot + n if name == "AGEM" else n
            if name == "ICaRL":
                teacher = torch.nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(head)).requires_grad_(False)
    return statistics.median(times)


class RandomImages(ContinualDataModule):
    """2 tasks x 2 classes of random uint8 images of ``shape``, ``per_class`` each (every 8th is also a test image)."""

    num_classes, n_tasks = 4, 2

    def __init__(self, shape: tuple[int, ...] = (3, 32, 32), per_class: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shape, self.per_class = shape, per_class

    def eval_transform(self) -> Normalize:
        return Normalize((0.5,) * 3, (0.25,) * 3)

    def build_stream(self) -> Stream:
        y = torch.arange(4).repeat_interleave(self.per_class)
        x = torch.randint(0, 256, (len(y), *self.shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        tasks = class_incremental_tasks((x, y), (x[::8], y[::8]), [0, 1, 2, 3], [2, 2])
        return Stream(tasks, "class", 4, self.shape)


def resnet_refresh_ratio() -> tuple[float, float]:
    """Naive's step time on the reduced ResNet-18 without and with Refresh (task 1)."""
    out = []
    for refresh in (False, True):
        pl.seed_everything(0, verbose=False)
        module = clfw.strategies.Naive(backbone=ResNet18(nf=20), plugins=[clfw.strategies.Refresh()] if refresh else [])
        out.append(timed_fit(module, RandomImages(batch_size=32))[0])
    return out[0], out[1]


def main() -> None:
    data().stream  # noqa: B018  (load the digits once, outside the timings)
    prompts = [
        n for n in clfw.strategies.__all__ if issubclass(getattr(clfw.strategies, n), PromptModule)
    ]  # bench_prompts.py
    names = ["Naive", *sorted(n for n in clfw.strategies.__all__ if n not in ("Naive", "Refresh", *prompts))]
    results = {name: lightning_run(name) for name in names}
    naive = results["Naive"][0]
    print(f"1. time per training step, tasks 1-4, {torch.get_num_threads()} threads (median)")
    print(f"   {'strategy':<11}{'step ms':>9}{'x Naive':>9}{'x hand loop':>13}{'fit s':>8}")
    for name, (step, fit, _) in results.items():
        hand = f"{step / hand_loop(name):.2f}" if name in HAND else "n/a"
        print(f"   {name:<11}{1e3 * step:>9.2f}{step / naive:>9.2f}{hand:>13}{fit:>8.1f}")
    print("2. bytes per stored sample (raw input: a uint8 1x28x28 digit, 784 bytes)")
    for name, (_, _, module) in results.items():
        buffer = getattr(module, "buffer", None)
        if buffer is None or not buffer.fields:
            continue
        sizes = buffer.nbytes_per_sample()
        others = ", ".join(f"{k} {v}" for k, v in sizes.items() if k != "x")
        print(f"   {name:<11} x {sizes['x']} bytes ({sizes['x'] / 784:.3f} of raw); {others}")
    print("3. refresh learning: time per step with the Refresh plugin / without (tasks 1-4, median)")
    for name in ("Naive", "ER", "DERPP"):
        on, off = lightning_run(name, refresh=True)[0], results[name][0]
        print(f"   {name:<11}{1e3 * on:>9.2f} ms / {1e3 * off:.2f} ms = {on / off:.2f}x")
    off, on = resnet_refresh_ratio()
    print(
        f"   Naive, reduced ResNet-18 (nf 20), 3x32x32, batch 32: {1e3 * on:.1f} ms / {1e3 * off:.1f} ms"
        f" = {on / off:.2f}x"
    )


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    main()

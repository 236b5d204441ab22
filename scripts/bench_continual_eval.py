"""Benchmark of per-iteration continual evaluation (prints figures; not a test).

    python scripts/bench_continual_eval.py

1. One evaluation of ``ContinualEvaluation`` (5 tasks x 1000 samples, synthetic MNIST-shaped data, the quickstart's MLP)
   against the bare forward passes it needs (``model(x)`` over the same samples, eval mode, no gradients). Target: at
   most 1.2x.
2. Training time of the quickstart (offline Split MNIST, Naive, MLP 2x400, batch 32, 2 epochs per task) without
   per-iteration evaluation, with ``ContinualEvaluation`` at every step, and with Lightning's own validation loop at
   every step over the same per-task samples (one DataLoader per seen task, as periodic evaluation is usually written),
   as ratios measured in one run.
3. With ``--strategies``: every strategy's time per step against Naive and against a hand-written loop, the replay
   memories' bytes per sample and refresh learning's step-time ratio (``scripts/bench_strategies.py``, also runnable
   alone).
"""

from __future__ import annotations

import statistics
import sys
import time
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from clfw import AccuracyMatrix, Batch, ContinualEvaluation, Normalize, Stream
from clfw.backbones import MLP
from clfw.benchmarks import SplitMNIST
from clfw.data import class_incremental_tasks
from clfw.datamodule import ContinualDataModule
from clfw.strategies import Naive


class Synthetic(ContinualDataModule):
    """5 tasks x 2 classes of random 28x28 uint8 images, 1000 test images per task."""

    num_classes, n_tasks = 10, 5

    def eval_transform(self) -> Normalize:
        return Normalize((0.1307,), (0.3081,))

    def build_stream(self) -> Stream:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (5000, 1, 28, 28), dtype=torch.uint8, generator=g)
        y = torch.arange(10).repeat_interleave(500)
        tasks = class_incremental_tasks((x, y), (x, y), list(range(10)), [2] * 5)
        return Stream(tasks, "class", 10, (1, 28, 28))


def median_time(fn, repeats: int = 50) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluation_overhead() -> None:
    dm = Synthetic()
    model = Naive(backbone=MLP())
    model.attach_stream(dm)
    model.current_task = 4
    model._update_seen_mask()
    ce = ContinualEvaluation(samples_per_task=1000)
    ce.setup(SimpleNamespace(datamodule=dm, global_rank=0, world_size=1), model, "fit")
    x = ce._data[0]
    model.eval()

    def bare() -> None:
        with torch.no_grad():
            model(x)

    t_bare = median_time(bare)
    t_eval = median_time(lambda: ce.evaluate(model, 4))
    print(f"1. one evaluation, 5 tasks x 1000 samples ({len(x)} samples), MLP 2x400, {torch.get_num_threads()} threads")
    print(
        f"   bare forward {1e3 * t_bare:.2f} ms, ContinualEvaluation {1e3 * t_eval:.2f} ms: "
        f"ratio {t_eval / t_bare:.2f} (target <= 1.2)"
    )


class WithValidation(Naive):
    """Naive plus a Lightning ``validation_step`` (accuracy per task, as users write periodic evaluation)."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y, t = batch
        acc = (self.predict(x, t).argmax(1) == y).float().mean()
        self.log("val_acc", acc, batch_size=len(y))


class SplitMNISTWithVal(SplitMNIST):
    """Serves, as Lightning validation data, the same per-task test samples ContinualEvaluation uses."""

    def val_dataloader(self):
        task = self.task_of_epoch(self.trainer.current_epoch)
        loaders = []
        for t in self.stream.tasks[: task + 1]:
            b: Batch = t.test.batch(torch.arange(len(t.test)), self.eval_transform())
            loaders.append(DataLoader(TensorDataset(b.x, b.y, b.task), batch_size=1000))
        return loaders


def fit_time(module, dm, callbacks, **kwargs) -> float:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=dm.total_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **kwargs,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, dm)
    return time.perf_counter() - start


def training_ratios() -> None:
    def data(cls=SplitMNIST):
        return cls(n_tasks=5, batch_size=32, epochs_per_task=2)

    def model(cls=Naive):
        return cls(backbone=MLP(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))

    data().stream  # noqa: B018  (load the digits once, outside the timings)
    t_plain = fit_time(model(), data(), [AccuracyMatrix(plot=False)])
    t_ce = fit_time(model(), data(), [AccuracyMatrix(plot=False), ContinualEvaluation(plot=False)])
    t_val = fit_time(
        model(WithValidation),
        data(SplitMNISTWithVal),
        [AccuracyMatrix(plot=False)],
        val_check_interval=1,
        num_sanity_val_steps=0,
    )
    print("2. quickstart training (250 steps, test subsample = the whole offline test split, 200 per task)")
    print(f"   no per-iteration evaluation {t_plain:.1f} s (1.00)")
    print(f"   ContinualEvaluation every step {t_ce:.1f} s ({t_ce / t_plain:.2f}x)")
    print(
        f"   Lightning validation loop every step {t_val:.1f} s ({t_val / t_plain:.2f}x); "
        f"ContinualEvaluation is {t_val / t_ce:.1f}x faster"
    )


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    evaluation_overhead()
    training_ratios()
    if "--strategies" in sys.argv:
        import bench_strategies

        bench_strategies.main()

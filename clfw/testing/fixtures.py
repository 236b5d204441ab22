"""What the contract checks run on: a tiny synthetic stream, a quiet ``fit``, exact state comparison, a stop at a
given step, and a replay memory as a plugin (the companion the composition checks attach)."""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.buffers import ReservoirBuffer
from clfw.data import (
    Batch,
    Normalize,
    ScenarioName,
    Stream,
    class_incremental_tasks,
    classes_per_task_split,
    domain_incremental_tasks,
)
from clfw.datamodule import ContinualDataModule
from clfw.evaluation import AccuracyMatrix
from clfw.module import ContinualModule
from clfw.plugins import Plugin


class TinyStream(ContinualDataModule):
    """Synthetic stream: ``num_classes`` Gaussian blobs as ``uint8 [1, 4, 4]`` images, split into tasks.

    Args:
        n_tasks: Number of tasks.
        num_classes_total: Number of classes.
        train_per_class: Training samples per class.
        test_per_class: Test samples per class.
        scenario: class, task or domain (domain: every task holds all classes, shifted inputs per task).
        **kwargs: Stream arguments of ContinualDataModule.
    """

    def __init__(
        self,
        n_tasks: int = 2,
        num_classes_total: int = 4,
        train_per_class: int = 24,
        test_per_class: int = 10,
        scenario: ScenarioName = "class",
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario=scenario, **kwargs)
        self._n_tasks, self._num_classes = n_tasks, num_classes_total
        self.train_per_class, self.test_per_class = train_per_class, test_per_class
        if scenario != "domain":
            self.sizes = classes_per_task_split(num_classes_total, n_tasks, None)

    @property
    @override
    def num_classes(self) -> int:
        return self._num_classes

    @property
    @override
    def n_tasks(self) -> int:
        return self._n_tasks

    @override
    def eval_transform(self) -> Normalize:
        return Normalize((0.5,), (0.25,))

    def _blobs(self, per_class: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        centers = torch.rand(self._num_classes, 1, 4, 4, generator=torch.Generator().manual_seed(123)) * 200 + 20
        y = torch.arange(self._num_classes).repeat_interleave(per_class)
        x = centers[y] + torch.randn(len(y), 1, 4, 4, generator=g) * 25
        return x.clamp(0, 255).to(torch.uint8), y

    @override
    def build_stream(self) -> Stream:
        g = torch.Generator().manual_seed(self.seed)
        train, test = self._blobs(self.train_per_class, g), self._blobs(self.test_per_class, g)
        if self.scenario == "domain":
            warps = [lambda x, t=t: (x.int() + 30 * t).clamp(0, 255).to(torch.uint8) for t in range(self._n_tasks)]
            tasks = domain_incremental_tasks(train, test, warps, self._num_classes, self.val_fraction, self.seed)
        else:
            order = list(range(self._num_classes))
            tasks = class_incremental_tasks(train, test, order, self.sizes, self.val_fraction, self.seed)
        return Stream(tasks, self.scenario, self._num_classes, (1, 4, 4), self.task_boundaries_visible)


class Interrupt(pl.Callback):
    """Stops the run with an exception once ``step`` optimizer steps are done. Lightning runs checkpoint callbacks
    after all others, so a checkpoint of that very step is not written (stop one step later to resume from it).

    Args:
        step: Optimizer step after which to stop.
    """

    resume_neutral = True

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"interrupted after step {self.step}")


def fit(
    module: ContinualModule,
    dm: ContinualDataModule,
    callbacks: list[pl.Callback] | None = None,
    *,
    plot: bool = True,
    **trainer_kwargs: Any,
) -> tuple[pl.Trainer, AccuracyMatrix]:
    """Fits ``module`` on ``dm`` quietly on CPU with an AccuracyMatrix; returns the trainer and the matrix callback.

    ``root`` is the run directory (a fresh temporary one by default, so tests never write into the working tree);
    ``ckpt_path`` is passed to ``trainer.fit``; ``plot`` is the AccuracyMatrix's; other keywords go to the Trainer.
    """
    matrix = AccuracyMatrix(plot=plot)
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    kwargs: dict[str, Any] = dict(
        max_epochs=dm.total_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=trainer_kwargs.pop("root", None) or tempfile.mkdtemp(prefix="clfw-test-"),
    )
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=[matrix, *(callbacks or [])], **kwargs)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, matrix


def snapshot(module: torch.nn.Module) -> dict[str, Any]:
    """A detached copy of ``module.state_dict()`` (tensors cloned; extra state such as plugin counters copied)."""
    return {
        k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in module.state_dict().items()
    }


def assert_same_state(a: dict[str, Any], b: dict[str, Any], label: str = "") -> None:
    """Every entry equal: tensors bit for bit, other values (extra state) by ``==``; raises ``AssertionError`` naming
    the first entry that differs (or the keys only one side has)."""
    if a.keys() != b.keys():
        raise AssertionError(f"{label} keys differ: only in the first {sorted(a.keys() - b.keys())}, only in the "
                             f"second {sorted(b.keys() - a.keys())}")  # fmt: skip
    for k in a:
        if not _same(a[k], b[k]):
            raise AssertionError(f"{label} {k}")


def _same(a: Any, b: Any) -> bool:
    """Equal values: tensors bit for bit (also inside dicts, lists and tuples of extra state), others by ``==``."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class ReplayPlugin(Plugin):
    """A replay memory as a plugin: adds ``weight`` times the cross-entropy of a minibatch replayed from a
    :class:`~clfw.buffers.ReservoirBuffer`, then offers the current batch's raw inputs to it.

    It is the replay companion of the composition checks of :mod:`clfw.testing` (a strategy with a second memory
    beside its own, and a plugin whose state must ride in checkpoints and stay identical across DDP ranks). It also
    counts the hooks it hears in ``calls`` and the tasks in ``tasks_started``/``tasks_ended`` (diagnostics, not
    checkpointed), so a check can tell whether the strategy let the base class run the plugins. Logged as
    ``train/replay_plugin``.

    Args:
        capacity: Memory capacity (samples).
        batch_size: Samples replayed per step.
        weight: Weight of the replayed cross-entropy.
        seed: Seed of the memory's draws.
    """

    needs_task_boundaries = False  # it only records the boundaries it hears

    def __init__(self, capacity: int = 20, batch_size: int = 4, weight: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or weight < 0:
            raise ValueError(f"batch_size must be >= 1 and weight >= 0, got {batch_size}, {weight}")
        self.batch_size, self.weight = batch_size, weight
        self.memory = ReservoirBuffer(capacity, seed, "capacity")
        self.calls: Counter[str] = Counter()
        self.tasks_started: list[int] = []
        self.tasks_ended: list[int] = []

    @override
    def on_task_start(self, module: ContinualModule, task: int) -> None:
        self.tasks_started.append(task)

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        self.tasks_ended.append(task)

    @override
    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        self.calls["before_training_step"] += 1

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.calls["loss_terms"] += 1
        terms = {}
        if len(self.memory):
            drawn = self.memory.sample(self.batch_size)
            logits = module.masked(module(module.replay_inputs(drawn["x"])), drawn["task"])
            terms["replay_plugin"] = self.weight * F.cross_entropy(logits, drawn["y"])
        self.memory.add(x=module.raw_inputs(batch), y=batch.y, task=batch.task)
        return terms

    @override
    def before_optimizer_step(self, module: ContinualModule, optimizer: torch.optim.Optimizer) -> None:
        self.calls["before_optimizer_step"] += 1

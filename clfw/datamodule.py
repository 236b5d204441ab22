"""``ContinualDataModule``: a whole task stream served to one ``trainer.fit``, tasks mapped to epochs."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw.data import SCENARIOS, Batch, BatchTransform, ScenarioName, Stream, TaskData, blurry_tasks
from clfw.lazy import is_lazy
from clfw.loaders import EvalLoader, TaskLoader, WorkerPool, epoch_generator

TrainingData = Literal["current", "seen", "all"]


class ContinualDataModule(pl.LightningDataModule):
    """Serves a task stream to a single ``trainer.fit``: task ``t`` occupies epochs ``[t*E, (t+1)*E)``.

    Subclasses implement :meth:`build_stream` (and :attr:`num_classes`, known before any data is loaded, so the CLI
    can size the model's head). At ``setup`` the module checks the Trainer against the stream: ``max_epochs`` is
    set to ``n_tasks * epochs_per_task`` (an explicit different value is an error) and the training loader is rebuilt
    every epoch, so it follows the task boundaries, also after a resume.

    What the training loader serves depends on the strategy's ``training_data``: ``"current"`` (the current task),
    ``"seen"`` (all tasks so far, for Cumulative) or ``"all"`` (every task, for Joint; each epoch serves the next
    ``1/n_tasks`` of a shuffled pass over all data, so Joint makes ``epochs_per_task`` passes over the whole stream,
    the same number of optimizer steps as a sequential strategy).

    Args:
        scenario: ``"class"``, ``"task"`` or ``"domain"`` incremental.
        seed: Seed of the data order, the splits and a random class order (``class_order: random`` of the
            class-incremental streams), independent of the model's seed.
        batch_size: Training batch size per process.
        eval_batch_size: Batch size of evaluation passes.
        num_workers: Worker processes of the training loader. For data in memory 0 is usually fastest; a stream read
            from disk (``in_memory: false`` of the folder streams) decodes its images in them, keeps them across the
            epochs of a task, and decodes evaluation data in as many. Batches are the same with any number.
        pin_memory: Serve batches in page-locked memory, for faster copies to an accelerator (ignored without one).
        epochs_per_task: Epochs spent on each task.
        val_fraction: Fraction of each task's training data held out (stratified) as a validation split. It is
            evaluated after each task's end hooks by :class:`~clfw.AccuracyMatrix` (logged as ``val/acc``), not by
            Lightning's validation loop, which would run before them.
        task_boundaries_visible: Whether strategies are told about task boundaries. ``False`` makes the stream
            task-free for the strategy: training batches carry task id 0 and a stream-wide ``index``, its
            ``current_task`` stays 0, its and its plugins' task hooks are not called (a strategy or plugin that needs
            them is refused, as is ``reset_optimizer_per_task``), and in class-IL the seen classes are the labels met
            in training batches so far. The evaluation callbacks still get the true task boundaries. Not with the
            ``"task"`` scenario, which needs each sample's task id.
        blurry_m: Blurry-M boundaries: the percentage (0-100) of each task's training samples of its blurry classes
            mixed into other tasks, drawn from ``seed`` (class-IL only; see :func:`~clfw.data.blurry_tasks`). 0 keeps
            the stream's own tasks. Blurry streams are usually task-free: set ``task_boundaries_visible: false``.
        iblurry_n: With ``blurry_m``, i-Blurry-N-M (Koh et al., ICLR 2022): the percentage (0-100) of classes kept
            disjoint (each in its task alone); the others are blurry. 0 is Blurry-M.
    """

    class_order: list[int] | None = None
    """The order in which the stream deals its classes to tasks, resolved (a class-incremental stream sets it; it is
    recorded in ``metrics.json``). ``None`` for streams without one (domain-incremental)."""

    def __init__(
        self,
        scenario: ScenarioName = "class",
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        pin_memory: bool = False,
        epochs_per_task: int = 1,
        val_fraction: float = 0.0,
        task_boundaries_visible: bool = True,
        blurry_m: float = 0.0,
        iblurry_n: float = 0.0,
    ) -> None:
        super().__init__()
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if epochs_per_task <= 0:
            raise ValueError(f"epochs_per_task must be positive, got {epochs_per_task}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        for name, value in (("blurry_m", blurry_m), ("iblurry_n", iblurry_n)):
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must be a percentage in [0, 100], got {value}")
        if blurry_m > 0 and scenario != "class":
            raise ValueError(f"blurry_m={blurry_m}: blurry task boundaries are class-incremental, got {scenario=}")
        if not task_boundaries_visible and scenario == "task":
            raise ValueError(
                "task_boundaries_visible=False hides task ids from training, which the 'task' scenario needs (logits "
                "are masked to each sample's task); use scenario 'class' or 'domain' for a task-free stream"
            )
        self.scenario: ScenarioName = scenario
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.epochs_per_task = epochs_per_task
        self.val_fraction = val_fraction
        self.task_boundaries_visible = task_boundaries_visible
        self.blurry_m, self.iblurry_n = blurry_m, iblurry_n
        self._stream: Stream | None = None
        self._device_transform: BatchTransform | None = None
        self._train_loader: TaskLoader | None = None  # the current epoch's (lazy data: recent raw inputs)
        self._replay_transform: tuple[BatchTransform | None] | None = None  # replay_inputs's, built once per epoch
        self._pool: tuple[tuple, WorkerPool] | None = None  # lazy data: the task's persistent workers, by key

    # ----------------------------------------------------------------------------------------------- to implement
    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Total number of classes in the stream (the head size), known without loading data."""

    @property
    @abstractmethod
    def n_tasks(self) -> int:
        """Number of tasks, known without loading data."""

    @abstractmethod
    def build_stream(self) -> Stream:
        """Loads the data and cuts it into tasks. Called once, lazily."""

    def train_transform(self) -> BatchTransform | None:
        """Batch transform for training inputs (augmentation goes here). Defaults to :meth:`eval_transform`."""
        return self.eval_transform()

    def eval_transform(self) -> BatchTransform | None:
        """Batch transform for evaluation inputs."""
        return None

    # ------------------------------------------------------------------------------------------------- the stream
    @property
    def stream(self) -> Stream:
        """The task stream, built on first use."""
        if self._stream is None:
            stream = self.build_stream()
            if stream.n_tasks != self.n_tasks or stream.num_classes != self.num_classes:
                raise ValueError(
                    f"{type(self).__name__}.build_stream gave {stream.n_tasks} tasks / {stream.num_classes} classes, "
                    f"but declares n_tasks={self.n_tasks}, num_classes={self.num_classes}"
                )
            if self.blurry_m > 0:
                if stream.scenario != "class":
                    raise ValueError(f"blurry_m={self.blurry_m}: {type(self).__name__} is not class-incremental")
                tasks = blurry_tasks(stream.tasks, self.blurry_m, self.iblurry_n, self.seed)
                stream = dataclasses.replace(stream, tasks=tasks, _class_masks=None)
            self._stream = stream
        return self._stream

    @property
    def total_epochs(self) -> int:
        """The Trainer's ``max_epochs`` for this stream."""
        return self.n_tasks * self.epochs_per_task

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_task, self.n_tasks - 1)

    def is_last_epoch_of_task(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs_per_task == 0

    def train_data(self, task: int, mode: TrainingData = "current") -> TaskData:
        """Training samples of ``task`` alone, of tasks ``0..task``, or of every task."""
        tasks = self.stream.tasks
        chosen = {"current": tasks[task : task + 1], "seen": tasks[: task + 1], "all": tasks}[mode]
        return chosen[0].train if len(chosen) == 1 else TaskData.cat([t.train for t in chosen])

    def raw_train_inputs(self, task: Tensor, index: Tensor) -> Tensor:
        """The stored (untransformed) training inputs of the samples ``(task[k], index[k])``, as in a :class:`Batch`.

        Replay buffers keep these compact inputs and apply :meth:`train_transform` when they replay them. On a stream
        that hides its boundaries, training batches carry task 0 and the stream-wide index (:meth:`task_free_view`),
        and that is what this takes.
        """
        tasks = self.stream.tasks
        task_cpu, index_cpu = task.cpu(), index.cpu()
        loader = self._train_loader
        if loader is not None and loader.lazy:  # a batch just served: the inputs its worker decoded, not a new read
            raw = loader.raw_inputs(task_cpu, index_cpu)
            if raw is not None:
                return raw.to(task.device)
        if not self.stream.boundaries_visible:
            offsets = self.train_offsets()
            task_cpu = torch.searchsorted(offsets, index_cpu, right=True) - 1
            index_cpu = index_cpu - offsets[task_cpu]
        t0 = int(task_cpu[0])
        first = tasks[t0].train.x
        if bool((task_cpu == t0).all()):  # the usual batch, from one task: one gather
            return first[index_cpu].to(task.device)
        out = torch.empty((len(task_cpu), *first.shape[1:]), dtype=first.dtype)
        for t in torch.unique(task_cpu).tolist():
            sel = task_cpu == t
            out[sel] = tasks[t].train.x[index_cpu[sel]]
        return out.to(task.device)

    def memory_inputs(self, raw: Tensor) -> Tensor:
        """What replay memories store of raw training inputs (:meth:`raw_train_inputs`): the inputs themselves, exact,
        by default. A stream may store a compact copy instead (a downscaled image: ``replay_image_size`` of the folder
        streams), which changes results; :meth:`replay_inputs` turns it back into model inputs."""
        return raw

    def stored_eval_inputs(self, stored: Tensor) -> Tensor:
        """Model inputs from what a replay memory stored, without augmentation or random draws: :meth:`eval_transform`
        applied to it (for statistics of the memory under the current model: class means, layer inputs)."""
        transform = self.eval_transform()
        return transform(stored) if transform is not None else stored

    def replay_inputs(self, stored: Tensor) -> Tensor:
        """Model inputs from what a replay memory stored: :meth:`train_transform` applied to it."""
        if self._replay_transform is None:  # built once per epoch (train_dataloader resets it), not per replayed batch
            self._replay_transform = (self.train_transform(),)
        transform = self._replay_transform[0]
        return transform(stored) if transform is not None else stored

    def train_offsets(self) -> Tensor:
        """``[0, n_0, n_0 + n_1, ...]``: where each task's training samples start in the stream-wide numbering."""
        sizes = torch.tensor([len(t.train) for t in self.stream.tasks], dtype=torch.long)
        return torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])

    def task_free_view(self, data: TaskData) -> TaskData:
        """``data`` as a strategy sees it on a stream that hides its boundaries: every sample's task id 0, its index
        the stream-wide position ``train_offsets()[task] + index`` (still a unique key for caches and buffers)."""
        index = self.train_offsets()[data.task] + data.index
        return dataclasses.replace(data, task=torch.zeros_like(data.task), index=index)

    def task_loader(self, task: int, split: Literal["train", "val", "test"] = "train") -> EvalLoader:
        """Unshuffled loader over one task's split (not augmented), sharded across ranks.

        This is how strategies reach a whole task's data at task end (Fisher, herding) without importing a benchmark.
        """
        data = getattr(self.stream.tasks[task], split)
        if data is None:
            raise ValueError(f"task {task} has no {split} split (set val_fraction > 0 for validation data)")
        rank, world = self._rank_world()
        return EvalLoader(
            data, self.eval_batch_size, self.eval_transform(), rank, world, self.num_workers, self._pinned_memory()
        )

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # -------------------------------------------------------------------------------------------------- Lightning
    @override
    def setup(self, stage: str) -> None:
        self.stream  # noqa: B018  (build now, so bad input fails before training)
        trainer = self.trainer
        if stage != "fit" or trainer is None:
            return
        if trainer.fast_dev_run:  # Lightning's smoke test: its N batches per epoch, over every epoch of every task
            trainer.fit_loop.epoch_loop.max_steps = -1  # fast_dev_run sets max_steps=N and max_epochs=1
            trainer.fit_loop.max_epochs = self.total_epochs
        if trainer.max_steps != -1:
            raise ValueError(
                f"max_steps={trainer.max_steps} is not supported: the stream fixes the length of training; leave "
                "trainer.max_steps unset (shorten the run with data.epochs_per_task or trainer.limit_train_batches)"
            )
        # Lightning turns an unset max_epochs into 1000 before setup; any other value that differs was set by hand.
        if trainer.fit_loop.max_epochs not in (self.total_epochs, 1000):
            raise ValueError(
                f"Trainer max_epochs={trainer.fit_loop.max_epochs}, but this stream takes n_tasks * epochs_per_task = "
                f"{self.n_tasks} * {self.epochs_per_task} = {self.total_epochs} epochs; leave max_epochs unset"
            )
        trainer.fit_loop.max_epochs = self.total_epochs
        trainer.reload_dataloaders_every_n_epochs = 1

    @override
    def train_dataloader(self) -> TaskLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        task = self.task_of_epoch(epoch)
        mode: TrainingData = (
            getattr(self.trainer.lightning_module, "training_data", "current") if self.trainer else "current"
        )
        data = self.train_data(task, mode)
        if not self.stream.boundaries_visible:  # task-free: the strategy sees one task, numbered across the stream
            data = self.task_free_view(data)
        order = torch.randperm(len(data), generator=epoch_generator(self.seed, epoch))
        if mode == "all":  # epoch e serves chunk e % T of pass e // T: each sample once per T epochs
            perm = torch.randperm(len(data), generator=epoch_generator(self.seed, epoch // self.n_tasks, salt=1))
            order = perm.tensor_split(self.n_tasks)[epoch % self.n_tasks]
        rank, world = self._rank_world()
        transform = self.train_transform()
        self._device_transform, self._replay_transform = None, None
        if self._transform_on_device():  # built once per epoch, moved to the device, applied in on_after_batch_transfer
            if isinstance(transform, torch.nn.Module):
                transform = transform.to(self.trainer.strategy.root_device)
            self._device_transform, transform = transform, None
        pool = None
        if is_lazy(data.x) and self.num_workers > 0:  # workers that decode, kept across the epochs of the task
            pool = self._worker_pool((task, mode, rank, world, transform is None, len(data)), data, transform)
        self._train_loader = TaskLoader(
            data,
            order,
            self.batch_size,
            transform,
            epoch,
            rank,
            world,
            num_workers=self.num_workers,
            pin_memory=self._pinned_memory(),
            pool=pool,
        )
        return self._train_loader

    def _pinned_memory(self) -> bool:
        return self.pin_memory and torch.accelerator.is_available()

    def _worker_pool(self, key: tuple, data: TaskData, transform: BatchTransform | None) -> WorkerPool:
        """The persistent workers of ``key`` (task, training data mode, rank ...), replacing those of another key."""
        if self._pool is None or self._pool[0] != key:
            self._close_pool()
            self._pool = (key, WorkerPool(data, transform, self.num_workers, self._pinned_memory()))
        return self._pool[1]

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool[1].close()
            self._pool = None

    @override
    def teardown(self, stage: str) -> None:
        self._close_pool()
        self._train_loader = None

    def _transform_on_device(self) -> bool:
        """Whether training batches are transformed after their transfer to an accelerator (any but the CPU)."""
        trainer = self.trainer
        return trainer is not None and not isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator)

    @override
    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """On an accelerator, applies :meth:`train_transform` to training batches there (augmentation and resizing run
        on the device instead of in the loader); on the CPU the loader has already applied it."""
        if self.trainer is not None and self.trainer.training and self._device_transform is not None:
            batch = Batch(*batch)
            batch = batch._replace(x=self._device_transform(batch.x))
        return batch

    @override
    def test_dataloader(self) -> list[EvalLoader]:
        return [self.task_loader(t, "test") for t in range(self.n_tasks)]

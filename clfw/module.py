"""``ContinualModule``: the base class of every strategy."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.seed import reset_seed
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.backbones import MLP
from clfw.callbacks import ContinualCallback
from clfw.checkpoint import (
    CHECKPOINT_FORMAT,
    AtomicCheckpointIO,
    CheckpointError,
    canonical_paths,
    config_differences,
    describe_differences,
    stream_fingerprint,
)
from clfw.data import SCENARIOS, Batch, Stream
from clfw.datamodule import ContinualDataModule, TrainingData
from clfw.distributed import gather_objects
from clfw.numerics import FiniteGuard
from clfw.plugins import Plugin, needs_task_boundaries
from clfw.runs import csv_history, restore_csv_history
from clfw.seeding import capture_rng_states, restore_rng_states
from clfw.train_log import TrainLog


class TaskBoundaryCallback(pl.Callback):
    """Ends a task right after its last training batch, in ``on_train_batch_end``.

    :class:`ContinualModule` adds it through ``configure_callbacks``. Lightning runs checkpoint callbacks after all
    others, so a checkpoint written on a task's last step (a step checkpoint, or one at the epoch's end) already holds
    the finished task end: resuming from it never skips the task end nor runs it twice.
    """

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if isinstance(pl_module, ContinualModule) and not pl_module.task_ended and pl_module.task_batches_done():
            pl_module._end_task(pl_module.stream_task)


class ContinualModule(pl.LightningModule):
    """Base class of strategies: a backbone, one head over all of the stream's classes, and the task lifecycle.

    The base class owns ``training_step``, the optimizer, logging and the checkpointed state, so precision, DDP and
    gradient accumulation work for every strategy. A strategy overrides a few hooks:

    - :meth:`training_loss`: the loss of a training batch (default: cross-entropy on the masked logits);
    - :meth:`on_task_start` / :meth:`on_task_end`: task boundaries; ``on_task_end`` runs before the task-end
      evaluation, with the task's data reachable through ``self.datamodule.task_loader(task)``;
    - :meth:`before_optimizer_step`: the final gradients before the optimizer step (A-GEM);
    - :meth:`after_optimizer_step`: right after each optimizer step, before any evaluation of that step (EMA models);
    - :meth:`predict`: class scores (override to classify differently, e.g. NME). Evaluators call
      :meth:`class_scores`: the strategy's ``predict``, then each plugin's ``predict`` in list order.

    Class attributes a strategy may set: ``supported_scenarios`` (others are refused before training),
    ``training_data`` (``"current"``, ``"seen"`` or ``"all"``: what the datamodule serves) and
    ``needs_task_boundaries`` (by default: whether it overrides ``on_task_start``/``on_task_end``; a strategy or plugin
    that needs boundaries is refused on a stream without visible boundaries).

    Safety: a task ends right after its last batch (before any checkpoint of that step); the total loss and the
    gradient norm are checked at every optimizer step and a non-finite value stops the run naming the task, the step
    and the loss term (:class:`~clfw.numerics.FiniteGuard`); checkpoints are written atomically
    (:class:`~clfw.checkpoint.AtomicCheckpointIO`), carry a format number and a fingerprint of the run, and a resume
    whose fingerprint differs is refused before training.

    Behaviours that compose with any strategy are :class:`~clfw.Plugin` objects in ``plugins``: each hook runs on the
    strategy first, then on each plugin.

    Args:
        backbone: Feature extractor mapping inputs to ``[B, num_features]`` (timm interface, e.g. a
            ``clfw.backbones`` model or a timm model made with ``num_classes=0``). ``None`` builds a 2x400
            :class:`~clfw.backbones.MLP` sized for the stream's inputs at setup.
        num_classes: Head size; the CLI links it from the datamodule. ``None`` takes it from the stream at setup.
        optimizer: Callable that makes the optimizer from the trainable parameters.
        lr_scheduler: Optional callable that makes a learning-rate scheduler (stepped each epoch) from the optimizer.
        reset_optimizer_per_task: Re-create the optimizer and scheduler at the start of every task after the first.
        plugins: Behaviours added to the strategy, called after its own hooks, in order.
        log_every_step: Log the ``train/*`` series (the total loss, the strategy's terms, the plugins' terms) at
            every optimizer step, each step's value (costs a host synchronisation a step). By default they are
            logged every ``trainer.log_every_n_steps`` steps, when Lightning logs step metrics, as the mean over the
            steps since the last log, summed on the device meanwhile (:class:`~clfw.train_log.TrainLog`).
            ``trainer.callback_metrics`` (what monitors read) holds each step's values either way.
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = SCENARIOS
    training_data: ClassVar[TrainingData] = "current"
    needs_task_boundaries: ClassVar[bool | None] = None

    def __init__(
        self,
        backbone: nn.Module | None = None,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        reset_optimizer_per_task: bool = False,
        plugins: list[Plugin] | None = None,
        log_every_step: bool = False,
    ) -> None:
        super().__init__()
        if num_classes is not None and num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        for p in plugins or []:
            if not isinstance(p, Plugin):
                raise ValueError(f"plugins must be clfw.Plugin instances, got {type(p).__name__}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head: nn.Linear | None = None
        if backbone is not None and num_classes is not None:
            self.head = nn.Linear(self._num_features(backbone), num_classes)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.reset_optimizer_per_task = reset_optimizer_per_task
        self.plugins = nn.ModuleList(plugins or [])
        self.log_every_step = log_every_step
        self._train_log = TrainLog()
        self._pending_train_log: dict[str, Any] | None = None
        self.current_task = -1  # -1: before training (sets stream_task)
        self.task_ended = True
        self._stream: Stream | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._pending_task_end = False
        self._pending_observed: list[int] | None = None
        self.finite_guard = FiniteGuard()

    # ------------------------------------------------------------------------------------------------ the task
    @property
    def current_task(self) -> int:
        """The task being trained, as the strategy sees it: the stream's task (-1 before training). On a stream that
        hides its boundaries (task-free) it is 0 from the first training step to the end, so the strategy cannot tell
        the tasks apart; the core and the evaluation callbacks read :attr:`stream_task`, the true position."""
        task = self.stream_task
        return min(task, 0) if self._stream is not None and not self._stream.boundaries_visible else task

    @current_task.setter
    def current_task(self, task: int) -> None:
        self.stream_task = task

    def _observes_labels(self) -> bool:
        """Whether the seen classes are the labels met in training batches (class-IL without visible boundaries)."""
        stream = self.stream
        return stream.scenario == "class" and not stream.boundaries_visible and self.training_data != "all"

    def _observe_labels(self, y: Tensor) -> None:
        """Adds the labels of a training batch, of every rank (one all-reduce of a ``num_classes`` flag vector, with no
        host synchronisation), to the seen classes, before the batch's loss is computed."""
        met = torch.zeros(self.stream.num_classes, dtype=torch.int32, device=self.observed_mask.device)
        met[y.to(met.device)] = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(met, op=torch.distributed.ReduceOp.MAX)
        self.observed_mask |= met.bool()
        self.seen_mask.copy_(self.observed_mask)

    # --------------------------------------------------------------------------------------------- the model
    @staticmethod
    def _num_features(backbone: nn.Module) -> int:
        n = getattr(backbone, "num_features", None)
        if not isinstance(n, int) or n <= 0:
            raise ValueError(
                f"backbone {type(backbone).__name__} needs an int attribute num_features (its feature size), "
                "as clfw.backbones and timm models have"
            )
        return n

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, num_features]``."""
        return self.backbone(x)

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Raw logits over all classes, ``[B, num_classes]``."""
        return self.head(self.features(x))

    def copy_model(self, frozen: bool = False, task: int | None = None) -> ContinualModule:
        """A deep copy of the network that predicts exactly as the module: ``copy(x)`` equals ``self(x)``.

        The copy is a module of the same class, with its own copies of the parameters, buffers and submodules that
        ``forward`` uses (backbone, head, prompts ...). It leaves out the Trainer reference, the plugins, replay
        memories (:class:`~clfw.buffers.Memory`) and earlier copies held as submodules (iCaRL's teacher), so no memory
        is duplicated and a teacher holds no teacher. The module's other attributes (hyperparameters, the stream,
        caches) are shared with the copy, not copied. It is not attached to a Trainer: use it for ``forward`` (and
        ``masked``), not for training hooks. The frozen teachers of LwF and iCaRL, and GDumb's model retrained from
        scratch, are such copies.

        Args:
            frozen: Turn the copy's gradients off.
            task: The copy's ``current_task`` (default: the module's), which some forwards read (CODA-Prompt's
                components); a copy rebuilt to load a checkpoint's teacher passes the task the teacher was taken at.
        """
        from clfw.buffers import Memory

        internals = set(vars(nn.Module()))  # parameters, buffers, submodules, hooks, the train flag: copied
        memo: dict[int, Any] = {
            id(value): value
            for name, value in vars(self).items()
            if name not in internals
            and not isinstance(value, Tensor | nn.Module)
            and getattr(value, "__self__", None) is not self  # e.g. Lightning's DDP leaves `forward` bound to self
        }
        memo[id(self.plugins)] = nn.ModuleList()
        left_out = (m for m in self.modules() if m is not self and isinstance(m, Memory | ContinualModule))
        memo.update({id(m): None for m in left_out})
        model = copy.deepcopy(self, memo)  # LightningModule.__getstate__ drops the Trainer
        if task is not None:
            model.current_task = task
            if model._stream is not None:
                model._update_seen_mask()
        return model.requires_grad_(False) if frozen else model

    @property
    def stream(self) -> Stream:
        """The task stream being learned (available from setup on)."""
        if self._stream is None:
            raise RuntimeError("the stream is known only after setup: fit this module with a ContinualDataModule")
        return self._stream

    @property
    def datamodule(self) -> ContinualDataModule:
        """The Trainer's datamodule, for strategies that need more than the current batch."""
        return self.trainer.datamodule  # type: ignore[return-value]

    def replay_inputs(self, raw: Tensor) -> Tensor:
        """Stored raw inputs (e.g. drawn from a replay memory) passed through the datamodule's train transform (after
        restoring a compact copy, :meth:`~clfw.ContinualDataModule.replay_inputs`)."""
        return self.datamodule.replay_inputs(raw)

    def stored_eval_inputs(self, stored: Tensor) -> Tensor:
        """Stored raw inputs as evaluation inputs: the datamodule's eval transform, no augmentation, no random draw
        (:meth:`~clfw.ContinualDataModule.stored_eval_inputs`)."""
        return self.datamodule.stored_eval_inputs(stored)

    def raw_inputs(self, batch: Batch) -> Tensor:
        """The untransformed, compact inputs of a training batch (what replay memories store): the exact sample, or
        the stream's compact copy of it if it opts into one (:meth:`~clfw.ContinualDataModule.memory_inputs`)."""
        dm = self.datamodule
        return dm.memory_inputs(dm.raw_train_inputs(batch.task, batch.index))

    # ------------------------------------------------------------------------------------------------ masking
    def class_mask(self, task_ids: Tensor) -> Tensor | None:
        """Boolean ``[B, num_classes]`` of the classes each sample may be assigned to, or ``None`` for all.

        class-IL: the classes of the tasks trained so far (all classes before training, and for ``"all"`` data);
        task-IL: the sample's own task's classes; domain-IL: all classes.
        """
        scenario = self.stream.scenario
        if scenario == "domain":
            return None
        if scenario == "task":
            return self.task_masks[task_ids]
        return self.seen_mask.expand(len(task_ids), -1)

    def masked(self, logits: Tensor, task_ids: Tensor) -> Tensor:
        """``logits`` with the classes outside :meth:`class_mask` set to ``-inf``."""
        mask = self.class_mask(task_ids)
        return logits if mask is None else logits.masked_fill(~mask, float("-inf"))

    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """The strategy's class scores ``[B, num_classes]`` (override to classify differently); evaluators call
        :meth:`class_scores`, which passes them on to the plugins."""
        return self.masked(self(x), task_ids)

    def class_scores(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """Class scores ``[B, num_classes]`` whose argmax is the prediction, as every evaluator computes them: the
        strategy's :meth:`predict`, then each plugin's :meth:`~clfw.Plugin.predict` in list order (each receives the
        scores so far, e.g. a nearest-mean head replaces them)."""
        scores = self.predict(x, task_ids)
        for p in self.plugins:
            scores = p.predict(self, x, task_ids, scores)
        return scores

    def _update_seen_mask(self) -> None:
        stream, t = self.stream, self.stream_task
        if t < 0 or self.training_data == "all":
            mask = torch.ones(stream.num_classes, dtype=torch.bool)
        elif self._observes_labels():  # task-free class-IL: the labels met in training batches so far
            mask = self.observed_mask
        else:
            mask = stream.seen_class_mask(range(t + 1))
        self.seen_mask.copy_(mask.to(self.seen_mask.device))

    # -------------------------------------------------------------------------------------- strategy hooks
    def training_loss(self, batch: Batch) -> Tensor | dict[str, Tensor] | None:
        """The loss of a training batch: a tensor, or a dict with ``"loss"`` and optionally the raw ``"logits"``.

        Other scalar entries of the dict (the loss's weighted terms, say) are logged as ``train/<name>``.

        ``None`` skips the optimizer step (for strategies that only collect data while the stream passes, e.g. GDumb).
        """
        logits = self(batch.x)
        return {"loss": F.cross_entropy(self.masked(logits, batch.task), batch.y), "logits": logits}

    def on_task_start(self, task: int) -> None:
        """Called when training on ``task`` begins."""

    def on_task_end(self, task: int) -> None:
        """Called after the last training epoch of ``task``, before the task-end evaluation."""

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called with the final gradients in ``.grad``, before clipping and the optimizer step."""

    def after_optimizer_step(self) -> None:
        """Called right after each optimizer step (not after an accumulating or skipped batch), before the plugins'
        ``after_optimizer_step`` and before any callback (evaluation, task end, checkpoint) of that step."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters handed to the optimizer (default: all that require gradients)."""
        return [p for p in self.parameters() if p.requires_grad]

    # -------------------------------------------------------------------------------------------- Lightning
    @override
    def setup(self, stage: str) -> None:
        # Lightning's DDP re-seeds every process from `seed_everything`'s seed when it sets up (before this hook),
        # one process does not: re-seed here too, so the head built below and every later draw are the same with
        # any number of processes (a no-op without seed_everything)
        reset_seed()
        self.attach_stream(self.trainer.datamodule if self._trainer is not None else None)
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: stages files in /tmp
            strategy.checkpoint_io = AtomicCheckpointIO()

    @override
    def configure_callbacks(self) -> list[pl.Callback]:
        return [TaskBoundaryCallback()]

    def attach_stream(self, dm: ContinualDataModule | None) -> None:
        """Binds the module to ``dm``'s stream: checks it, builds a missing backbone or head, prepares the masks.

        ``setup`` calls it; call it yourself to use a module outside a Trainer (e.g. to evaluate a checkpoint).
        """
        if not isinstance(dm, ContinualDataModule):
            raise ValueError(f"{type(self).__name__} needs a clfw.ContinualDataModule, got {type(dm).__name__}")
        stream = dm.stream
        if not stream.boundaries_visible:
            blind = [type(o).__name__ for o in (self, *self.plugins) if needs_task_boundaries(o)]
            if blind:
                raise ValueError(
                    f"{', '.join(blind)} needs task boundaries, but this stream hides them "
                    "(task_boundaries_visible=False): use a stream with visible boundaries or a boundary-free strategy"
                )
            if self.reset_optimizer_per_task:
                raise ValueError(
                    "reset_optimizer_per_task=True needs task boundaries, but this stream hides them "
                    "(task_boundaries_visible=False): set it to false"
                )
        if stream.scenario not in self.supported_scenarios:
            raise ValueError(
                f"{type(self).__name__} does not support the {stream.scenario!r} scenario "
                f"(supported: {list(self.supported_scenarios)})"
            )
        if self.num_classes is not None and self.num_classes != stream.num_classes:
            raise ValueError(f"num_classes={self.num_classes}, but the stream has {stream.num_classes} classes")
        if self._stream is not None:
            return
        self._stream = stream
        first = stream.tasks[0].test.batch(torch.arange(1), dm.eval_transform())
        if self.backbone is None:
            self.backbone = MLP(in_features=first.x[0].numel())
        if self.head is None:
            self.num_classes = stream.num_classes
            self.head = nn.Linear(self._num_features(self.backbone), stream.num_classes)
        self.register_buffer("task_masks", stream.task_class_masks().clone(), persistent=False)
        self.register_buffer("seen_mask", torch.ones(stream.num_classes, dtype=torch.bool), persistent=False)
        observed = torch.zeros(stream.num_classes, dtype=torch.bool)
        if self._pending_observed is not None:  # a checkpoint loaded before the stream was attached
            observed[torch.tensor(self._pending_observed, dtype=torch.long)] = True
            self._pending_observed = None
        self.register_buffer("observed_mask", observed, persistent=False)  # in checkpoint["clfw"], not state_dict
        self.build_for_stream()
        was_training = self.training
        # the parameters' device: at setup Lightning may already report the target device before moving the weights
        device = next(iter(self.parameters()), torch.empty(0)).device
        try:
            with torch.no_grad():
                out = self.eval()(first.x.to(device))
        except Exception as err:
            raise ValueError(
                f"the model cannot process this stream's inputs of shape {tuple(first.x.shape[1:])}: {err}"
            ) from err
        finally:
            self.train(was_training)
        if out.shape != (1, stream.num_classes):
            raise ValueError(f"the model gives outputs of shape {tuple(out.shape)}, expected (1, {stream.num_classes})")
        if self.stream_task >= 0:
            self._update_seen_mask()
        for p in self.plugins:
            p.on_setup(self)

    def build_for_stream(self) -> None:
        """Called once, when the stream is first attached: after the backbone and head exist, before the module is
        tried on one of the stream's inputs. Create the state that depends on the stream here (class-sized parameters
        and buffers, e.g. PODNet's proxies), so a checkpoint's state can be loaded into it."""

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer)}}

    @override
    def on_train_start(self) -> None:
        self._train_log = TrainLog()  # a resume continues the interval its checkpoint was written in
        if self._pending_train_log is not None:
            self._train_log.load_state_dict(self._pending_train_log, self.device)
            self._pending_train_log = None
        if self._pending_rng is not None:  # resumed: continue every random stream where the checkpoint left it
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        if self._pending_task_end:  # resumed from a checkpoint written after the task's last step, before its end
            self._pending_task_end = False
            self._end_task(self.stream_task)
        self._sync_task()  # a resume at an epoch boundary starts the next epoch without on_train_epoch_start

    @override
    def on_fit_end(self) -> None:
        if self._pending_task_end:
            raise CheckpointError(
                f"the checkpoint was written after the last step of task {self.stream_task} but before its task end, "
                "and Lightning resumed past the end of the stream: the task end cannot be completed"
            )

    @override
    def on_train_epoch_start(self) -> None:
        self._sync_task()

    def _sync_task(self) -> None:
        """Starts the task of the current epoch if it is not the current one (the previous must have ended)."""
        task = self.datamodule.task_of_epoch(self.current_epoch)
        if task != self.stream_task:
            if not self.task_ended:
                raise RuntimeError(
                    f"task {task} is starting at epoch {self.current_epoch}, but task {self.stream_task} never ended"
                )
            self._start_task(task)

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        batch = Batch(*batch)
        if self._observes_labels():
            self._observe_labels(batch.y)
        for p in self.plugins:
            p.before_training_step(self, batch)
        outputs = self.training_loss(batch)
        if outputs is None:  # no optimizer step, but Lightning's logging step still comes (earlier steps' terms)
            if self._trainer is not None and self._trainer.training:
                self._log_train_terms()
            return None
        if isinstance(outputs, Tensor):
            outputs = {"loss": outputs}
        loss = outputs["loss"]
        terms = {"loss": loss}
        for name, value in outputs.items():
            if name not in ("loss", "logits") and isinstance(value, Tensor) and value.ndim == 0:
                terms[name] = value
        for p in self.plugins:
            for name, term in p.loss_terms(self, batch, outputs).items():
                terms[name] = term
                loss = loss + term
        self.finite_guard.record(loss, terms)
        trainer = self._trainer
        if trainer is not None and trainer.training:
            self._add_train_terms(trainer, {**terms, "loss": loss})  # train/loss: the total, not the strategy's own
            self._log_train_terms()
        return loss

    def log_train_term(self, name: str, value: Tensor) -> None:
        """Adds a scalar to the ``train/<name>`` series during a training step (ignored outside one).

        The base class adds the loss and its terms itself; call this for other per-step values (Refresh's unlearning
        loss). It costs no host synchronisation: the value goes to ``trainer.callback_metrics`` as it is and into the
        sums of the logging interval (see ``log_every_step``).
        """
        trainer = self._trainer
        if trainer is not None and trainer.training:
            self._add_train_terms(trainer, {name: value})

    def _add_train_terms(self, trainer: pl.Trainer, terms: dict[str, Tensor]) -> None:
        callback_metrics = trainer._logger_connector._callback_metrics  # what self.log would give callbacks (monitors)
        for name, value in terms.items():
            value = value.detach()
            self._train_log.add(name, value)
            callback_metrics[f"train/{name}"] = value

    def _log_train_terms(self) -> None:
        """Logs the ``train/*`` series if this batch ends a logging interval (Lightning's condition for logging step
        metrics: not a batch whose gradients are accumulated, and the ``log_every_n_steps``-th step), or every optimizer
        step with ``log_every_step``."""
        trainer = self.trainer
        accumulates = trainer.accumulate_grad_batches > 1 and trainer.fit_loop._should_accumulate()
        if accumulates and self.automatic_optimization:
            return
        if self.log_every_step or trainer._logger_connector.should_update_logs or trainer.fast_dev_run:
            self._train_log.flush(trainer)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.finite_guard.check_step(self, self.trainer.global_step, optimizer)  # final, DDP-averaged gradients
        self.before_optimizer_step(optimizer)
        for p in self.plugins:
            p.before_optimizer_step(self, optimizer)

    @override
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()
        for p in self.plugins:
            p.after_optimizer_step(self)

    @override
    def on_train_epoch_end(self) -> None:  # normally done already by TaskBoundaryCallback after the last batch
        if not self.task_ended and self.datamodule.is_last_epoch_of_task(self.current_epoch):
            self._end_task(self.stream_task)

    def task_batches_done(self) -> bool:
        """Whether every training batch of the current task has been processed (in training, with a Trainer)."""
        if self._trainer is None or not self.trainer.training:
            return False
        trainer = self.trainer
        processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return (
            self.datamodule.is_last_epoch_of_task(trainer.current_epoch) and processed >= trainer.num_training_batches
        )

    def check_finite(self, where: str) -> None:
        """Raises :class:`~clfw.numerics.NonFiniteError` if training went non-finite (a flag kept on the device is
        read here) or a parameter is not finite: called before every evaluation, task end and checkpoint."""
        step = self.trainer.global_step if self._trainer is not None else -1
        self.finite_guard.raise_if_flagged(self, where, step)

    @override
    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        batch = Batch(*batch)
        acc = (self.class_scores(batch.x, batch.task).argmax(1) == batch.y).float().mean()
        self.log(f"test/task_{dataloader_idx}/acc", acc, batch_size=len(batch.y), add_dataloader_idx=False)

    def _callbacks(self) -> list[ContinualCallback]:
        return [cb for cb in self.trainer.callbacks if isinstance(cb, ContinualCallback)]  # type: ignore[attr-defined]

    def _start_task(self, task: int) -> None:
        self.current_task, self.task_ended = task, False
        self._update_seen_mask()
        if self.reset_optimizer_per_task and task > 0 and self.stream.boundaries_visible:
            self.trainer.strategy.setup_optimizers(self.trainer)
        if self.stream.boundaries_visible:
            self.on_task_start(task)
            for p in self.plugins:
                p.on_task_start(self, task)
        for cb in self._callbacks():
            cb.on_task_start(self.trainer, self, task)

    def _end_task(self, task: int) -> None:
        self.check_finite(f"the end of task {task}")
        if self.stream.boundaries_visible:
            self.on_task_end(task)
            for p in self.plugins:
                p.on_task_end(self, task)
        self.task_ended = True
        for cb in self._callbacks():
            cb.on_task_end(self.trainer, self, task)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite("a checkpoint")
        rng = capture_rng_states()
        checkpoint["clfw"] = {
            "format": CHECKPOINT_FORMAT,
            "version": _clfw_version(),
            "task": self.stream_task,
            "observed_classes": [] if self._stream is None else torch.nonzero(self.observed_mask).flatten().tolist(),
            "task_ended": self.task_ended,
            "task_end_pending": not self.task_ended and self.task_batches_done(),
            "rng": rng,  # this rank's (rank 0's in the file), and every rank's below
            "rng_per_rank": gather_objects(rng),
            "fingerprint": self.fingerprint(),
            "csv_history": csv_history(self.trainer) if self._trainer is not None else {},
            "train_log": self._train_log.state_dict(),
        }

    def fingerprint(self) -> dict[str, Any] | None:
        """:func:`~clfw.checkpoint.stream_fingerprint` of this run (``None`` before it is attached to a Trainer)."""
        if self._trainer is None or self._stream is None:
            return None
        return stream_fingerprint(self, self.trainer)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("clfw")
        if state is None:
            raise CheckpointError("this checkpoint has no clfw state: it was not written by a clfw ContinualModule")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint format {state.get('format')} (clfw {state.get('version', 'before 0.2')}) cannot be "
                f"resumed by this clfw (format {CHECKPOINT_FORMAT})"
            )
        now = self.fingerprint()
        if now is not None and state["fingerprint"] is not None:
            diffs = config_differences(canonical_paths(state["fingerprint"]), now)
            if diffs:
                raise CheckpointError("the checkpoint belongs to another run: " + describe_differences(diffs))
        _close_finished_epoch(checkpoint)
        self.current_task, self.task_ended = state["task"], state["task_ended"]
        self._pending_task_end = state["task_end_pending"]
        self._pending_rng = _own_rng_states(state, self._trainer)
        self._pending_train_log = state.get("train_log")  # absent from older checkpoints: a new interval
        if self._trainer is not None:
            restore_csv_history(self.trainer, state["csv_history"])
        observed = state.get("observed_classes", [])  # the seen classes of a task-free class-IL stream
        if self._stream is not None:
            self.observed_mask.zero_()
            self.observed_mask[torch.tensor(observed, dtype=torch.long)] = True
            self._update_seen_mask()
        else:
            self._pending_observed = observed


def _own_rng_states(state: dict[str, Any], trainer: pl.Trainer | None) -> dict[str, Any]:
    """This rank's random states from a checkpoint: its own when the checkpoint has them (``rng_per_rank``, one per
    rank of the run that wrote it). A run resumed on more ranks than wrote the checkpoint gives rank ``r`` the states
    of rank ``r mod W``; on fewer ranks, the extra ranks' states are dropped. Older checkpoints hold rank 0's only."""
    per_rank = state.get("rng_per_rank")
    if not per_rank:
        return state["rng"]
    rank = trainer.global_rank if trainer is not None else 0
    return per_rank[rank % len(per_rank)]


def _close_finished_epoch(checkpoint: dict[str, Any]) -> None:
    """Makes Lightning treat the checkpoint's epoch as finished when it was written after that epoch's last batch.

    Lightning (2.6) resumes such a checkpoint in the next epoch, but decides whether the saved epoch is over by
    comparing the batches done with the length of the *next* epoch's loader. When the next epoch is longer (Cumulative
    at a task boundary, or a stream whose next task is larger), it takes the next epoch as already part-done and skips
    its first batches. The saved batch counters of the finished epoch are raised beyond any loader's length, so the
    comparison always says "over"; Lightning then resets them to zero for the next epoch, as it does when the lengths
    match. Only ``current`` counters of a checkpoint written in ``on_train_batch_end`` of an epoch's last batch change.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not progress or not progress.get("is_last_batch"):
        return
    cur = progress["current"]
    if cur["ready"] == cur["started"] == cur["processed"] == cur["completed"] + 1:  # saved in on_train_batch_end
        beyond = 2**40
        cur.update(ready=beyond, started=beyond, processed=beyond, completed=beyond - 1)


def _clfw_version() -> str:
    from clfw import __version__

    return __version__


def restore_teacher(module: ContinualModule, checkpoint: dict[str, Any]) -> ContinualModule | None:
    """``module.teacher``, or, when it is still ``None`` and ``checkpoint`` holds one (``teacher.*`` keys), the frozen
    copy it is loaded into: the model at the end of the last finished task (iCaRL's, LUCIR's, PODNet's previous
    model), so the strategy can take the checkpoint's teacher state."""
    teacher = getattr(module, "teacher", None)
    if teacher is None and any(k.startswith("teacher.") for k in checkpoint["state_dict"]):
        teacher = module.copy_model(frozen=True, task=module.current_task - (not module.task_ended))
    return teacher

"""iCaRL: herding exemplars, distillation, nearest-mean-of-exemplars classification."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.buffers import Memory, herding
from clfw.evaluation import eval_mode
from clfw.module import restore_teacher


class ICaRL(ContinualModule):
    """iCaRL (Rebuffi, Kolesnikov, Sperl & Lampert, CVPR 2017, "iCaRL: Incremental Classifier and Representation
    Learning").

    - **Representation learning** (Algorithm 3): sigmoid outputs trained with binary cross-entropy (summed over the
      classes a sample may take, averaged over the batch) on the current batch plus a minibatch of exemplars; targets
      are one-hot for the current task's classes and the previous model's sigmoid outputs for the earlier classes
      (distillation). The previous model is a frozen copy taken at the end of each task.
    - **Exemplars** (Algorithms 4, 5): a memory of ``memory_size`` samples, ``memory_size // classes seen`` per class;
      at each task end the earlier classes' sets are cut to their first ``m`` exemplars and each new class gets ``m``
      chosen by herding (:func:`clfw.buffers.herding`) on L2-normalised features of all its training samples.
    - **Classification** (Algorithm 1): nearest mean of exemplars, with L2-normalised features and means.

    Deviations, named: exemplars are replayed as a minibatch of ``replay_batch_size`` per step instead of being mixed
    into the training set; class means use no flipped images (the paper's CIFAR setting flips); while some class that
    may be predicted has no exemplar mean yet (during a task, before its end), :meth:`predict` uses the network's
    outputs. Under DDP every rank runs herding on the whole task (not its shard), so all ranks select the same
    exemplars.

    Args:
        memory_size: Total number of exemplars K.
        replay_batch_size: Exemplars replayed per step.
        buffer_seed: Seed of the exemplar minibatch draws.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = ("class", "task")

    def __init__(
        self, memory_size: int = 500, replay_batch_size: int = 32, buffer_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be >= 1, got {replay_batch_size}")
        if memory_size < 1:
            raise ValueError(f"memory_size must be >= 1 (at least one exemplar per class), got {memory_size}")
        self.replay_batch_size = replay_batch_size
        self.buffer = Memory(memory_size, buffer_seed)
        self.teacher: ContinualModule | None = None

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        if self.buffer.capacity < self.stream.num_classes:
            raise ValueError(f"memory_size={self.buffer.capacity} is less than one exemplar per class")
        if not hasattr(self, "class_means"):
            self.register_buffer("class_means", torch.zeros(self.stream.num_classes, self.head.in_features))
            self.register_buffer("has_mean", torch.zeros(self.stream.num_classes, dtype=torch.bool))

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        x, y, task = batch.x, batch.y, batch.task
        if len(self.buffer):
            memory = self.buffer.sample(self.replay_batch_size)
            x = torch.cat([x, self.replay_inputs(memory["x"])])
            y, task = torch.cat([y, memory["y"]]), torch.cat([task, memory["task"]])
        logits = self(x)
        targets = F.one_hot(y, self.stream.num_classes).to(logits.dtype)
        if self.teacher is not None:
            old = self.stream.seen_class_mask(range(self.current_task)).to(self.device)
            with torch.no_grad(), eval_mode(self.teacher):
                previous = torch.sigmoid(self.teacher(x))
            targets[:, old] = previous[:, old]
        mask = self.class_mask(task)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        loss = (bce if mask is None else bce * mask).sum(1).mean()
        return {"loss": loss, "logits": logits[: len(batch.y)]}

    @torch.no_grad()
    def _features(self, x: Tensor) -> Tensor:
        transform = self.datamodule.eval_transform()
        with eval_mode(self):
            parts = [self.features(transform(c) if transform else c) for c in x.to(self.device).split(256)]
        return F.normalize(torch.cat(parts), dim=1)

    @override
    def on_task_end(self, task: int) -> None:
        self.teacher = self.copy_model(frozen=True)
        data = self.datamodule.train_data(task)
        new = torch.unique(data.y).tolist()
        old = [c for c in torch.unique(self.buffer.y[: len(self.buffer)]).tolist()] if len(self.buffer) else []
        m = self.buffer.capacity // (len(old) + len(new))
        keep = {f: [] for f in ("x", "y", "task")}
        for c in old:  # Algorithm 5: the first m exemplars of each earlier class
            idx = torch.nonzero(self.buffer.y[: len(self.buffer)] == c).flatten()[:m]
            for f in keep:
                keep[f].append(getattr(self.buffer, f)[idx].cpu())
        for c in new:  # Algorithm 4: herding over all of the class's training samples
            pos = torch.nonzero(data.y == c).flatten()
            chosen = pos[herding(self._features(data.x[pos]).cpu(), m)]
            for f, v in (("x", data.x), ("y", data.y), ("task", data.task)):
                keep[f].append(v[chosen])
        self.buffer.assign(**{f: torch.cat(v).to(self.device) for f, v in keep.items()})
        features = self._features(self.buffer.x[: len(self.buffer)])
        labels = self.buffer.y[: len(self.buffer)]
        for c in torch.unique(labels).tolist():
            self.class_means[c] = F.normalize(features[labels == c].mean(0), dim=0)
            self.has_mean[c] = True

    @override
    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        mask = self.class_mask(task_ids)
        allowed = mask.any(0) if mask is not None else torch.ones_like(self.has_mean)
        if not bool(self.has_mean[allowed].all()):
            return super().predict(x, task_ids)
        scores = -torch.cdist(F.normalize(self.features(x), dim=1), self.class_means)
        return scores if mask is None else scores.masked_fill(~mask, float("-inf"))

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.teacher = restore_teacher(self, checkpoint)

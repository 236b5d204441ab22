"""Experience replay with weight aligning, as a clfw strategy."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.buffers import ReservoirBuffer


class AlignedReplay(ContinualModule):
    """Experience replay plus weight aligning (Zhao et al., CVPR 2020, without its distillation): after each task but
    the first, the head rows of its classes are scaled to the older classes' mean norm (the bias toward new classes).

    Args:
        buffer_size: Replay memory capacity (samples).
        replay_batch_size: Samples replayed per step.
        **kwargs: Arguments of ContinualModule (backbone, optimizer, plugins ...).
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = ("class",)  # aligns old against new classes of one head

    def __init__(self, buffer_size: int = 200, replay_batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be >= 1, got {replay_batch_size}")
        self.replay_batch_size = replay_batch_size
        self.memory = ReservoirBuffer(buffer_size, argument="buffer_size")  # in checkpoints, the same on every rank
        self.register_buffer("gamma", torch.ones(()))  # the last alignment factor, in checkpoints too

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        x, y, task = batch.x, batch.y, batch.task
        if len(self.memory):  # the memory holds raw inputs: transform them as the current batch was
            old = self.memory.sample(self.replay_batch_size)
            x = torch.cat([x, self.replay_inputs(old["x"])])
            y, task = torch.cat([y, old["y"]]), torch.cat([task, old["task"]])
        logits = self(x)
        self.memory.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task)
        return {"loss": F.cross_entropy(self.masked(logits, task), y), "logits": logits[: len(batch.y)]}

    @override
    def on_task_end(self, task: int) -> None:
        if task > 0:
            norms = self.head.weight.detach().norm(dim=1)
            new, old = (self.stream.seen_class_mask(t).to(norms.device) for t in ([task], range(task)))
            self.gamma.copy_(norms[old].mean() / norms[new].mean())
            with torch.no_grad():
                self.head.weight[new] *= self.gamma

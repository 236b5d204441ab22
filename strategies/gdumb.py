"""GDumb: a greedy class-balanced memory, and a model retrained from scratch on it."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.buffers import ClassBalancedBuffer
from clfw.distributed import world


class GDumb(ContinualModule):
    """GDumb (Prabhu, Torr & Dokania, ECCV 2020, "GDumb: A Simple Approach that Questions Our Progress in Continual
    Learning").

    While the stream passes, the model does not learn: each batch's raw inputs are offered to a greedy class-balanced
    memory (:class:`~clfw.buffers.ClassBalancedBuffer`). At each task end, before the task-end evaluation, a model is
    trained from scratch (backbone and head re-initialised with a generator seeded from ``seed`` and the task) on the
    memory alone, for ``epochs`` epochs of minibatches of ``batch_size``, with the strategy's ``optimizer`` (the paper:
    SGD, lr 0.05, momentum 0.9, weight decay 1e-6, see ``configs/model/gdumb.yaml``), a cosine schedule with warm
    restarts (``T_0`` = 1 epoch, ``T_mult`` = 2, down to ``min_lr``, stepped per epoch) and gradient-norm clipping at
    ``clip``, and the scenario's class mask (the classes seen so far in class-IL). That model replaces the previous
    one. Deviations, named: no CutMix (the paper's CIFAR setting); evaluations between task ends (continual evaluation)
    see the model of the last task end, since GDumb retrains only at task ends here rather than before every
    evaluation.

    Under DDP the memory is filled from every rank's batches (gathered), and every rank retrains the same model on the
    whole memory with the same draws; the result is then broadcast from rank 0 so no replica can drift. During the
    stream the backbone and head are frozen and a zero placeholder loss keeps the Trainer's step count (and
    step-based checkpoints and evaluations) running.

    Args:
        buffer_size: Memory capacity (samples).
        epochs: Epochs of retraining on the memory at each task end (the paper: 256).
        batch_size: Minibatch size of the retraining (the paper: 16).
        min_lr: Lowest learning rate of the cosine schedule (the paper: 0.0005).
        clip: Gradient-norm clipping of the retraining (the paper: 10); 0 disables it.
        seed: Seed of the memory's draws, the re-initialisation and the retraining order.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(
        self,
        buffer_size: int = 500,
        epochs: int = 256,
        batch_size: int = 16,
        min_lr: float = 0.0005,
        clip: float = 10.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if epochs < 1 or batch_size < 1 or min_lr < 0 or clip < 0:
            raise ValueError(
                f"epochs, batch_size must be >= 1 and min_lr, clip >= 0; got {epochs}, {batch_size}, {min_lr}, {clip}"
            )
        self.epochs, self.batch_size, self.min_lr, self.clip, self.seed = epochs, batch_size, min_lr, clip, seed
        self.buffer = ClassBalancedBuffer(buffer_size, seed, "buffer_size")
        self.placeholder = nn.Parameter(torch.zeros(()))

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        self.backbone.requires_grad_(False)
        self.head.requires_grad_(False)

    @override
    def training_loss(self, batch: Batch) -> Tensor:
        self.buffer.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task)
        return self.placeholder * 0.0

    def retrain(self, task: int) -> ContinualModule:
        """A copy of the network (:meth:`~clfw.ContinualModule.copy_model`, without the memory) re-initialised and
        trained from scratch on the memory; ``model(x)`` gives its logits."""
        model = self.copy_model()
        n = len(self.buffer)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1_000_003 + task)
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            model.requires_grad_(True).train()
            model.placeholder.requires_grad_(False)  # not part of the network
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = self.optimizer_factory(params)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, 1, 2, eta_min=self.min_lr)
            for _ in range(self.epochs):
                for idx in torch.randperm(n).split(self.batch_size):
                    idx = idx.to(self.device)
                    x, y, t = self.replay_inputs(self.buffer.x[idx]), self.buffer.y[idx], self.buffer.task[idx]
                    with torch.enable_grad():
                        loss = F.cross_entropy(self.masked(model(x), t), y)
                        optimizer.zero_grad()
                        loss.backward()
                    if self.clip:
                        torch.nn.utils.clip_grad_norm_(params, self.clip)
                    optimizer.step()
                scheduler.step()
        return model

    @override
    def on_task_end(self, task: int) -> None:
        start = time.perf_counter()
        model = self.retrain(task)
        rank_zero_info(
            f"GDumb: task {task}: retrained from scratch on {len(self.buffer)} memory samples "
            f"({self.buffer.class_counts()}) for {self.epochs} epochs in {time.perf_counter() - start:.1f} s"
        )
        own = self.state_dict()  # the copy's state is the network's: no memory, no plugins
        network = {name: value for name, value in model.state_dict().items() if isinstance(value, Tensor)}
        with torch.no_grad():
            for name, value in network.items():
                own[name].copy_(value)
            if world()[1] > 1:
                for name in network:
                    dist.broadcast(own[name], src=0)

"""SLCA: slow learner with classifier alignment."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.distributed import sum_across_ranks
from clfw.evaluation import eval_mode


class SLCA(ContinualModule):
    """SLCA (Zhang, Wang, Kang, Chen & Wei, ICCV 2023, "SLCA: Slow Learner with Classifier Alignment for Continual
    Learning on a Pre-trained Model"; reference code GengDavid/SLCA ``models/slca.py``).

    - Slow learner: the backbone's learning rate is ``backbone_lr_scale`` (1/100) times the head's; each task trains
      with cross-entropy over its own classes only.
    - At each task's end the features of the task's training data (eval transform) give every class's mean and
      covariance (float64 sums of ``f`` and ``f f^T``, summed across DDP ranks; classes met again accumulate).
    - Classifier alignment, after every task but the first: the head alone is trained for ``ca_epochs`` epochs on
      features sampled from each seen class's Gaussian, ``samples_per_class`` per class and epoch, in batches of that
      size, with SGD (``ca_lr``, momentum 0.9, weight decay 5e-4, cosine-annealed over the epochs) and the
      reference's per-task logit normalisation: the logits divided by the mean over tasks of their per-task L2 norms
      and by ``logit_norm`` (:meth:`normalized_logits`). As in the reference, the mean of a class of task ``t`` is
      scaled by ``0.9 + 0.1 (t + 1) / (current task + 1)``. Draws come from a generator seeded by ``ca_seed`` and the
      task, so every DDP rank trains the same head and a resume repeats them.

    Deviations: ``1e-4 I`` is added to each covariance so the Gaussian is proper when a class has fewer samples than
    feature dimensions; the reference's MultiStep schedule of the first stage is left to ``lr_scheduler``.

    Args:
        backbone_lr_scale: The backbone's learning rate as a fraction of the optimizer's (the reference's 1/100).
        ca_epochs: Epochs of classifier alignment (5).
        samples_per_class: Features sampled per class and epoch (256).
        ca_lr: Learning rate of the alignment (the reference's 0.01).
        logit_norm: Temperature of the logit normalisation (0.1); ``None`` trains on the plain logits.
        ca_seed: Seed of the sampled features.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = ("class", "task")

    def __init__(
        self,
        backbone_lr_scale: float = 0.01,
        ca_epochs: int = 5,
        samples_per_class: int = 256,
        ca_lr: float = 0.01,
        logit_norm: float | None = 0.1,
        ca_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if backbone_lr_scale < 0 or ca_epochs < 0 or samples_per_class < 1 or ca_lr <= 0:
            raise ValueError(
                "backbone_lr_scale and ca_epochs must be >= 0, samples_per_class >= 1 and ca_lr > 0, got "
                f"{backbone_lr_scale}, {ca_epochs}, {samples_per_class}, {ca_lr}"
            )
        if logit_norm is not None and logit_norm <= 0:
            raise ValueError(f"logit_norm must be > 0 or null, got {logit_norm}")
        self.backbone_lr_scale, self.ca_epochs, self.samples_per_class = backbone_lr_scale, ca_epochs, samples_per_class
        self.ca_lr, self.logit_norm, self.ca_seed = ca_lr, logit_norm, ca_seed

    @override
    def build_for_stream(self) -> None:
        k, d, device = self.stream.num_classes, self._num_features(self.backbone), self.head.weight.device
        self.register_buffer("feature_sums", torch.zeros(k, d, dtype=torch.float64, device=device))
        self.register_buffer("feature_squares", torch.zeros(k, d, d, dtype=torch.float64, device=device))
        self.register_buffer("feature_counts", torch.zeros(k, dtype=torch.float64, device=device))

    @override
    def configure_optimizers(self) -> Any:
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        rest = [p for p in self.trainable_parameters() if id(p) not in ids]
        optimizer = self.optimizer_factory([{"params": backbone}, {"params": rest}])
        optimizer.param_groups[0]["lr"] *= self.backbone_lr_scale
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer)}}

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        logits = self(batch.x)
        own = self.task_masks[self.current_task].to(logits.device)  # the task's own classes
        return {"loss": F.cross_entropy(logits.masked_fill(~own, float("-inf")), batch.y), "logits": logits}

    def statistics(self) -> tuple[Tensor, Tensor]:
        """Each class's mean ``[C, D]`` and (unbiased) covariance ``[C, D, D]`` of the features gathered so far."""
        n = self.feature_counts.clamp_min(2)[:, None]
        mean = self.feature_sums / n
        cov = (self.feature_squares - n[:, :, None] * mean[:, :, None] * mean[:, None, :]) / (n[:, :, None] - 1)
        return mean, cov

    @staticmethod
    def normalized_logits(logits: Tensor, task_sizes: list[int], temperature: float) -> Tensor:
        """The reference's per-task logit normalisation: ``logits / mean_t ||logits_t|| / temperature``.

        >>> out = SLCA.normalized_logits(torch.tensor([[3.0, 4.0, 0.0, 1.0]]), [2, 2], 0.5)  # norms 5 and 1: mean 3
        >>> [round(v, 6) for v in out[0].tolist()]
        [2.0, 2.666667, 0.0, 0.666667]
        """
        norms = torch.stack([part.norm(dim=1) + 1e-7 for part in logits.split(task_sizes, dim=1)], 1).mean(1)
        return logits / norms[:, None] / temperature

    @override
    @torch.no_grad()
    def on_task_end(self, task: int) -> None:
        sums, squares, counts = (
            torch.zeros_like(t) for t in (self.feature_sums, self.feature_squares, self.feature_counts)
        )
        with eval_mode(self):
            for b in self.datamodule.task_loader(task):
                f, y = self.features(b.x.to(self.device)).double(), b.y.to(self.device)
                sums.index_add_(0, y, f)
                squares.index_add_(0, y, f[:, :, None] * f[:, None, :])
                counts += torch.bincount(y, minlength=len(counts)).double()
        sum_across_ranks([sums, squares, counts])
        self.feature_sums += sums
        self.feature_squares += squares
        self.feature_counts += counts
        if task > 0 and self.ca_epochs > 0:
            self.align_classifier(task)

    def align_classifier(self, task: int) -> None:
        """Trains the head on features sampled from the seen classes' Gaussians (see the class docstring)."""
        tasks = self.stream.tasks[: task + 1]
        classes = [c for t in tasks for c in t.classes]
        task_of = {c: i for i, t in enumerate(tasks) for c in t.classes}
        mean, cov = self.statistics()
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        generator = torch.Generator(device="cpu").manual_seed(self.ca_seed * 1_000_003 + task)
        head = self.head
        optimizer = torch.optim.SGD(head.parameters(), lr=self.ca_lr, momentum=0.9, weight_decay=5e-4)
        sizes = [len(t.classes) for t in tasks]
        order = torch.tensor(classes, device=head.weight.device)  # columns grouped by task, for the normalisation
        column = torch.full((self.stream.num_classes,), -1, dtype=torch.long, device=head.weight.device)
        column[order] = torch.arange(len(order), device=head.weight.device)
        for epoch in range(self.ca_epochs):
            for group in optimizer.param_groups:  # cosine annealing over the epochs
                group["lr"] = self.ca_lr * (1 + math.cos(math.pi * epoch / self.ca_epochs)) / 2
            xs, ys = [], []
            for c in classes:
                scale = 0.9 + 0.1 * (task_of[c] + 1) / (task + 1)
                chol = torch.linalg.cholesky(cov[c] + 1e-4 * eye).cpu()
                z = torch.randn(self.samples_per_class, len(eye), generator=generator, dtype=torch.float64)
                xs.append((mean[c].cpu() * scale + z @ chol.T).float())
                ys.append(torch.full((self.samples_per_class,), c))
            x, y = torch.cat(xs), torch.cat(ys)
            perm = torch.randperm(len(y), generator=generator)
            x, y = x[perm].to(head.weight.device), y[perm].to(head.weight.device)
            with torch.enable_grad():
                for i in range(0, len(y), self.samples_per_class):
                    logits = head(x[i : i + self.samples_per_class])[:, order]
                    if self.logit_norm is not None:
                        logits = self.normalized_logits(logits, sizes, self.logit_norm)
                    loss = F.cross_entropy(logits, column[y[i : i + self.samples_per_class]])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

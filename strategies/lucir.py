"""LUCIR: a cosine-normalised head, the less-forget constraint and the margin ranking loss, on top of replay."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.distributed import sum_across_ranks
from clfw.evaluation import eval_mode
from clfw.module import restore_teacher
from clfw.strategies.er import ER


class LUCIR(ER):
    """LUCIR (Hou, Pan, Loy, Wang & Lin, CVPR 2019, "Learning a Unified Classifier Incrementally via Rebalancing").

    - Cosine normalisation: logits ``sigma * cos(theta_c, f(x))`` with a learnable scale ``sigma`` (initialised to 1
      as in the reference code) and no bias.
    - At each task start after the first, the new classes' weight vectors are imprinted: the normalised mean of the
      normalised features of each new class's training samples under the current model.
    - Less-forget constraint on every sample of the joint batch (incoming and replayed):
      ``lambda * mean(1 - cos(f*(x), f(x)))`` against the model frozen at the previous task's end, with the adaptive
      ``lambda = lambda_base * sqrt(|C_old| / |C_new|)``.
    - Margin ranking loss on the replayed samples of old classes: ``mean max(0, m - cos_y + cos_k)`` over each such
      sample's ``K`` highest-scoring new classes ``k`` (:meth:`margin_ranking`).
    - Cross-entropy over the seen classes on the joint batch.

    Deviations: ER's reservoir memory replayed as a separate minibatch instead of herding exemplars mixed into the
    batches; no class-balanced finetuning (optional in the paper); the reference code's lambda_base, K and m are the
    defaults (CIFAR-100).

    Args:
        lambda_base: Base weight of the less-forget constraint (the paper's 5 on CIFAR-100).
        margin: Margin ``m`` of the ranking loss (0.5).
        hard_negatives: ``K``, new classes ranked against each old sample (2).
        **kwargs: Arguments of :class:`~clfw.strategies.ER` (buffer_size, replay_batch_size ...) and
            :class:`~clfw.ContinualModule`.
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = ("class", "task")

    def __init__(self, lambda_base: float = 5.0, margin: float = 0.5, hard_negatives: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if lambda_base < 0 or margin < 0 or hard_negatives < 1:
            raise ValueError(
                f"lambda_base and margin must be >= 0 and hard_negatives >= 1, got {lambda_base}, {margin}, "
                f"{hard_negatives}"
            )
        self.lambda_base, self.margin, self.hard_negatives = lambda_base, margin, hard_negatives
        self.scale = nn.Parameter(torch.ones(()))
        self.teacher: ContinualModule | None = None

    @override
    def build_for_stream(self) -> None:
        with torch.no_grad():
            self.head.bias.zero_()
        self.head.bias.requires_grad_(False)  # cosine logits have no bias (and DDP needs every trainable one used)

    def cosines(self, features: Tensor) -> Tensor:
        """``cos(theta_c, f(x))`` for every class ``[B, num_classes]``."""
        return F.normalize(features, dim=1) @ F.normalize(self.head.weight, dim=1).T

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.cosines(self.features(x))

    @staticmethod
    def less_forget(previous: Tensor, features: Tensor, n_old: int, n_new: int, lambda_base: float) -> Tensor:
        """``lambda_base * sqrt(n_old / n_new) * mean(1 - cos(previous_i, features_i))``.

        >>> f_old, f = torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> round(float(LUCIR.less_forget(f_old, f, n_old=4, n_new=2, lambda_base=5.0)), 6)  # 5 sqrt(2) (1 + 0) / 2
        3.535534
        """
        weight = lambda_base * math.sqrt(n_old / max(n_new, 1))
        return weight * (1 - F.cosine_similarity(previous, features, dim=1)).mean()

    @staticmethod
    def margin_ranking(cos: Tensor, y: Tensor, old: Tensor, new_classes: Tensor, k: int, margin: float) -> Tensor:
        """``mean max(0, margin - cos[i, y_i] + cos[i, c])`` over the rows ``old`` and, for each, its ``k`` highest
        ``cos[i, c]`` among ``new_classes``; zero when no row is old.

        >>> cos = torch.tensor([[0.9, 0.2, 0.8, 0.95], [0.1, 0.5, 0.3, 0.2]])
        >>> round(float(LUCIR.margin_ranking(cos, torch.tensor([0, 2]), torch.tensor([True, False]),
        ...                                  torch.tensor([2, 3]), 2, 0.5)), 6)  # (0.55 + 0.4) / 2
        0.475
        """
        if not bool(old.any()):
            return cos.new_zeros(())
        rows = cos[old]
        truth = rows.gather(1, y[old].unsqueeze(1))
        hard = rows[:, new_classes].topk(min(k, len(new_classes)), dim=1).values
        return F.relu(margin - truth + hard).mean()

    def _classes(self, tasks: range) -> list[int]:
        return sorted({c for t in tasks for c in self.stream.tasks[t].classes})

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        x, y, task, _ = self.joint_batch(batch)
        features = self.features(x)
        cos = self.cosines(features)
        logits = self.scale * cos
        loss = F.cross_entropy(self.masked(logits, task), y)
        terms: dict[str, Tensor] = {}
        if self.teacher is not None:
            old = self._classes(range(self.current_task))
            new = [c for c in self.stream.tasks[self.current_task].classes if c not in old]
            with torch.no_grad(), eval_mode(self.teacher):
                previous = self.teacher.features(x)
            terms["less_forget"] = self.less_forget(previous, features, len(old), len(new), self.lambda_base)
            if new:
                is_old = torch.isin(y, torch.tensor(old, device=y.device))
                new_t = torch.tensor(new, device=y.device)
                terms["margin_ranking"] = self.margin_ranking(cos, y, is_old, new_t, self.hard_negatives, self.margin)
        self.buffer.add(x=self.raw_inputs(batch), y=batch.y, task=batch.task)
        for term in terms.values():
            loss = loss + term
        return {"loss": loss, **terms, "logits": logits[: len(batch.y)]}

    @override
    @torch.no_grad()
    def on_task_start(self, task: int) -> None:
        if task == 0:
            return
        old = set(self._classes(range(task)))
        sums = torch.zeros_like(self.head.weight)
        counts = torch.zeros(len(sums), device=sums.device)
        with eval_mode(self):
            for b in self.datamodule.task_loader(task):
                f = F.normalize(self.features(b.x.to(self.device)), dim=1)
                sums.index_add_(0, b.y.to(self.device), f)
                counts += torch.bincount(b.y.to(self.device), minlength=len(counts)).float()
        sum_across_ranks([sums, counts])
        for c in self.stream.tasks[task].classes:
            if c not in old and counts[c] > 0:
                self.head.weight[c] = F.normalize(sums[c] / counts[c], dim=0)

    @override
    def on_task_end(self, task: int) -> None:
        self.teacher = self.copy_model(frozen=True)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.teacher = restore_teacher(self, checkpoint)

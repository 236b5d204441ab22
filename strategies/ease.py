"""EASE: one adapter subspace per task, prototypes completed by semantic similarity, reweighted cosine scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch
from clfw.adapters import run_adapted_blocks, vit_adapters
from clfw.distributed import sum_across_ranks, world, zero_reaching
from clfw.evaluation import eval_mode
from clfw.prompt import PromptModule, cosine, vit_tokens
from clfw.seeding import derived_generator


class EASE(PromptModule):
    """EASE, "expandable subspace ensemble" (Zhou, Sun, Ye & Zhan, CVPR 2024, "Expandable Subspace Ensemble for
    Pre-Trained Model-Based Class-Incremental Learning"; reference code sun-hailong/LAMDA-PILOT ``models/ease.py``,
    ``backbone/vit_ease.py``, ``exps/ease.json``).

    - The pretrained ViT is frozen. Task ``t`` owns one AdaptFormer adapter per block (:mod:`clfw.adapters`:
      bottleneck ``bottleneck``, ReLU, dropout, up-projection starting at zero, output times ``adapter_scale``,
      parallel to the MLP). While task ``t`` trains only its adapters and the head learn (the earlier adapters are
      frozen, the later ones untouched); the loss is cross-entropy over the task's own classes of a cosine head with
      a learnable scale, ``sigma cos(f_t(x), w_c)``, ``f_t`` being the [CLS] feature under adapter ``t``. The task's
      rows of the head are redrawn (uniform in ``+-1/sqrt(D)``, from a generator seeded by the task) and ``sigma`` is
      reset to 1 at each task start, as the reference's fresh per-task head.
    - At the end of task ``T``, the prototype of each of its classes in every subspace ``j <= T`` is the mean of
      ``f_j`` over the class's training data (eval transform; float64 sums over DDP ranks).
    - Semantic-guided prototype complement, redone at every task end (the reference's default ``recalc_sim``): the
      prototype of a class of an old task ``i`` in a later subspace ``j`` (``i < j <= T``) is ``sum_n s_n P_j(n)``
      over the classes ``n`` of tasks ``j .. T`` (the classes with a data prototype in both subspaces), with
      ``s = softmax_n cos(P_i(c), P_i(n))``: similarity measured in the old class's own subspace ``i``
      (:meth:`complete_prototypes`).
    - Prediction with ``K`` subspaces: the concatenated features ``[f_0(x), .., f_{K-1}(x)]``; with ``use_reweight``
      the score of a class of task ``i`` is ``cos(f_i, P_i(c)) + alpha / (K - 1) sum_{j != i} cos(f_j, P_j(c))``
      (the reference's ``forward_reweight``), otherwise the cosine of the concatenated vectors
      (:meth:`reweighted_scores`). Classes without prototypes score ``-inf``.

    Deviations: only the reference's default path (``use_init_ptm``, ``use_diagonal``, ``use_old_data``, ``moni_adam``
    off, ``recalc_sim`` on; so ``beta`` plays no part). The adapters of every task are created (from the global
    generator) when the module meets the stream, not at each task start, so checkpoints always hold the same keys.
    The reference evaluates only at task ends; here, before the first task end the head scores the current adapter's
    feature, and during task ``t > 0`` the prediction is the model of the last task end (``t`` subspaces, the earlier
    tasks' classes). The test-time scale of the reference's cosine classifier (1, never trained) is left out. Each
    class must belong to one task (the reference's class-IL splits); task-IL masks the scores to the sample's task.
    Optimizer and schedule come from the config (the reference's SGD, lr 0.025, momentum 0.9, weight decay 5e-4,
    cosine to 0 over 20 epochs per task, batch 48: ``configs/model/ease.yaml``).

    Args:
        bottleneck: Width of each adapter's bottleneck (the reference's ``ffn_num``, 64).
        adapter_scale: Fixed scale of the adapters' output (the reference's ``ffn_adapter_scalar``, 0.1).
        adapter_dropout: Dropout on the adapters' bottleneck activations in training (0.1).
        alpha: Weight of the other subspaces in the reweighted score, shared among them (0.1).
        use_reweight: Score by the reweighted per-subspace cosines (the reference's default); ``False``: the cosine of
            the concatenated features and prototypes.
        **kwargs: Arguments of :class:`~clfw.prompt.PromptModule` (vit, pretrained, checkpoint_path, vit_kwargs,
            optimizer, lr_scheduler ...); ``cache_queries`` has no effect (EASE uses no query);
            ``reset_optimizer_per_task`` must stay ``True``: the optimizer (and schedule) is re-created at every task
            over that task's adapters and the head, as in the reference.
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = ("class", "task")

    def __init__(
        self,
        bottleneck: int = 64,
        adapter_scale: float = 0.1,
        adapter_dropout: float = 0.1,
        alpha: float = 0.1,
        use_reweight: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not self.reset_optimizer_per_task:
            raise ValueError(
                "EASE needs reset_optimizer_per_task=True (got False): each task trains its own adapters, so the "
                "optimizer is re-created over them at every task start"
            )
        if bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {bottleneck}")
        if not (math.isfinite(adapter_scale) and adapter_scale > 0):
            raise ValueError(f"adapter_scale must be a finite number > 0, got {adapter_scale}")
        if not 0 <= adapter_dropout < 1:
            raise ValueError(f"adapter_dropout must be in [0, 1), got {adapter_dropout}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        self.bottleneck, self.adapter_scale, self.adapter_dropout = bottleneck, adapter_scale, adapter_dropout
        self.alpha, self.use_reweight = alpha, use_reweight
        self.scale = nn.Parameter(torch.ones(()))  # sigma of the training head, reset to 1 at each task start

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        shared = torch.nonzero(self.stream.task_class_masks().sum(0) > 1).flatten().tolist()
        if shared:
            raise ValueError(f"EASE needs each class in one task, but classes {shared} are in several tasks")

    @override
    def build_for_stream(self) -> None:
        device, stream = self.head.weight.device, self.stream
        with torch.no_grad():
            self.head.bias.zero_()
        self.head.bias.requires_grad_(False)  # cosine head: no bias (and DDP needs every trainable one used)
        self.adapters = nn.ModuleList(
            vit_adapters(self.backbone, self.bottleneck, self.adapter_scale, self.adapter_dropout)
            for _ in range(stream.n_tasks)
        ).to(device)
        shape = (stream.n_tasks, stream.num_classes, self.embed_dim)
        self.register_buffer("prototypes", torch.zeros(shape, device=device))  # [subspace, class, D]
        masks = stream.task_class_masks()
        class_task = torch.where(masks.any(0), masks.int().argmax(0), -1)  # each class's task, -1 if none
        self.register_buffer("class_task", class_task.to(device), persistent=False)

    @property
    def task_index(self) -> int:
        """The task whose adapter trains (0 before training)."""
        return max(self.current_task, 0)

    def tasks_absorbed(self) -> int:
        """How many tasks have ended, i.e. have prototypes and a subspace in the prediction."""
        return self.current_task + 1 if self.task_ended else self.current_task

    def subspace_features(self, x: Tensor, subspaces: Sequence[int]) -> Tensor:
        """The [CLS] features ``[K, B, D]`` of ``x`` under the adapters of each task in ``subspaces``."""
        tokens = vit_tokens(self.backbone, x)
        return torch.stack([run_adapted_blocks(self.backbone, tokens, self.adapters[k])[:, 0] for k in subspaces])

    @override
    def prompted_features(self, x: Tensor, batch: Batch | None = None) -> tuple[Tensor, Tensor]:
        return self.subspace_features(x, [self.task_index])[0], x.new_zeros(())

    @override
    def forward(self, x: Tensor) -> Tensor:
        """The training head's logits ``sigma cos(f_t(x), w_c)`` under the current task's adapter."""
        return self.scale * cosine(self.features(x), self.head.weight)

    @override
    def trainable_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for p in self.adapters[self.task_index].parameters()}  # only the current task's adapters
        others = {id(p) for p in self.adapters.parameters()} - own
        return [p for p in super().trainable_parameters() if id(p) not in others]

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        logits = self(batch.x)
        if self.stream.scenario == "class":
            mask = self.task_masks[self.current_task].expand(len(batch.y), -1)
        else:
            mask = self.class_mask(batch.task)
        loss = F.cross_entropy(logits.masked_fill(~mask, float("-inf")), batch.y)
        if world()[1] > 1:
            # the other tasks' adapters are not in this graph: a zero term gives them (zero) gradients, so DDP, which
            # reduces the gradients of every parameter it was given, sees each of them (the optimizer has task t's)
            others = [p for k, a in enumerate(self.adapters) if k != self.current_task for p in a.parameters()]
            loss = loss + zero_reaching(others, loss.device)
        return {"loss": loss, "logits": logits}

    @override
    def on_task_start(self, task: int) -> None:
        rows = self.task_masks[task]
        bound = 1 / math.sqrt(self.embed_dim)
        fresh = torch.rand(int(rows.sum()), self.embed_dim, generator=derived_generator(task), dtype=torch.float64)
        with torch.no_grad():
            self.head.weight[rows] = ((2 * fresh - 1) * bound).to(self.head.weight)
            self.scale.fill_(1.0)

    @override
    @torch.no_grad()
    def on_task_end(self, task: int) -> None:
        subspaces = range(task + 1)
        sums = torch.zeros(len(subspaces), *self.prototypes.shape[1:], dtype=torch.float64, device=self.device)
        counts = torch.zeros(self.prototypes.shape[1], dtype=torch.float64, device=self.device)
        with eval_mode(self):
            for batch in self.datamodule.task_loader(task):
                x, y = batch.x.to(self.device), batch.y.to(self.device)
                sums.index_add_(1, y, self.subspace_features(x, subspaces).double())
                counts += torch.bincount(y, minlength=len(counts)).double()
        sum_across_ranks([sums, counts])
        own = self.task_masks[task]
        self.prototypes[: task + 1, own] = (sums[:, own] / counts[own].clamp_min(1)[None, :, None]).float()
        self.complete_prototypes(self.prototypes, self.class_task, task)

    @staticmethod
    def complete_prototypes(prototypes: Tensor, class_task: Tensor, task: int) -> None:
        """Fills, in place, the prototypes ``[subspace, class, D]`` of the classes of every task ``i < task`` in the
        later subspaces ``j`` (``i < j <= task``): ``sum_n s_n P_j(n)`` over the classes ``n`` of tasks ``j .. task``,
        ``s = softmax_n cos(P_i(c), P_i(n))``. Reads only data prototypes (subspace ``<=`` the class's task).

        >>> p = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])
        >>> EASE.complete_prototypes(p, torch.tensor([0, 1, 1]), task=1)  # class 0 in subspace 1: cosines 1 and 0
        >>> [round(v, 4) for v in p[1, 0].tolist()]  # 2 e / (1 + e), 4 / (1 + e)
        [1.4621, 1.0758]
        """
        for old in range(task):
            mine = torch.nonzero(class_task == old).flatten()
            for sub in range(old + 1, task + 1):
                donors = torch.nonzero((class_task >= sub) & (class_task <= task)).flatten()
                weights = cosine(prototypes[old, mine], prototypes[old, donors]).softmax(dim=1)
                prototypes[sub, mine] = weights @ prototypes[sub, donors]

    @staticmethod
    def reweighted_scores(
        features: Tensor, prototypes: Tensor, class_task: Tensor, alpha: float, reweight: bool = True
    ) -> Tensor:
        """Scores ``[B, C]`` of features ``[K, B, D]`` against prototypes ``[K, C, D]``: with ``reweight``,
        ``cos(f_i, P_i(c)) + alpha / (K - 1) sum_{j != i} cos(f_j, P_j(c))`` for a class of task ``i``; without, the
        cosine of the concatenations over the ``K`` subspaces.

        >>> f, p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]), torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
        >>> [round(float(EASE.reweighted_scores(f, p, torch.tensor([0]), 0.1)), 4)]  # 1 + 0.1 cos 45
        [1.0707]
        """
        k = len(features)
        if not reweight:
            return cosine(features.transpose(0, 1).flatten(1), prototypes.transpose(0, 1).flatten(1))
        cos = torch.stack([cosine(f, p) for f, p in zip(features, prototypes, strict=True)])  # [K, B, C]
        own = class_task[None, :] == torch.arange(k, device=class_task.device)[:, None]  # [K, C]
        weights = torch.where(own, 1.0, alpha / max(k - 1, 1)).to(cos)
        return (cos * weights[:, None, :]).sum(0)

    @override
    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        done = self.tasks_absorbed()
        if done == 0:  # no prototypes yet: the training head
            return self.masked(self(x), task_ids)
        features = self.subspace_features(x, range(done))
        prototypes, reweight = self.prototypes[:done], self.use_reweight
        scores = self.reweighted_scores(features, prototypes, self.class_task, self.alpha, reweight)
        absent = (self.class_task < 0) | (self.class_task >= done)
        return self.masked(scores.masked_fill(absent[None, :], float("-inf")), task_ids)

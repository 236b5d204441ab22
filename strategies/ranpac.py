"""RanPAC: random projections of frozen pretrained features and a class-prototype ridge classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.distributed import sum_across_ranks
from clfw.frozen import FrozenFeatureModule

RIDGES: tuple[float, ...] = tuple(10.0**k for k in range(-8, 14))  # the reference code's candidates


class RanPAC(FrozenFeatureModule):
    """RanPAC (McDonnell, Gong, Parvaneh, Abbasnejad & van den Hengel, NeurIPS 2023, "RanPAC: Random Projections and
    Pre-trained Models for Continual Learning").

    The backbone's features ``f(x)`` (a pretrained model) go through a frozen Gaussian random projection and a ReLU,
    ``h = relu(f(x) W)`` with ``W`` of ``[num_features, projection_dim]`` drawn from ``projection_seed``. At each
    task's end the task's training data (eval transform, one pass) adds to the Gram matrix ``G = sum h h^T`` and to
    ``C = sum h y^T`` (one-hot labels); the classifier is the ridge solution ``W_o = (G + lambda I)^-1 C`` and predicts
    ``h W_o``. ``lambda`` is chosen at every task end among ``10^-8 .. 10^13`` (the reference's grid) by the squared
    error on a held-out fifth of the samples seen so far, from the held-out part's own Gram matrices (exactly the error
    of predicting them, without storing any feature), then ``W_o`` is solved on all samples. Sums are in float64,
    summed across DDP ranks. With ``adapt_first_task`` (the paper's first-session adaptation) the first task trains
    the backbone's trainable parameters, then it is frozen (:class:`~clfw.frozen.FrozenFeatureModule`).

    Deviations: the paper adapts the first session with parameter-efficient modules (AdaptFormer, SSF or VPT); here
    whatever parameters the given backbone leaves trainable are adapted (freeze the rest, e.g. a timm ViT with
    adapters). The held-out fifth is the samples whose index in their task is ``4 mod 5`` (the reference holds out the
    last 20% of its stored features). The linear head serves only the first-task adaptation.

    Args:
        projection_dim: Dimension ``M`` of the random projection (the paper's 10000).
        projection_seed: Seed of the random projection.
        adapt_first_task: Train the first task with cross-entropy before freezing the backbone.
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(
        self, projection_dim: int = 10000, projection_seed: int = 0, adapt_first_task: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(adapt_first_task=adapt_first_task, **kwargs)
        if projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {projection_dim}")
        self.projection_dim, self.projection_seed = projection_dim, projection_seed

    @override
    def build_for_stream(self) -> None:
        m, k, d = self.projection_dim, self.stream.num_classes, self._num_features(self.backbone)
        g = torch.Generator().manual_seed(self.projection_seed)
        device = self.head.weight.device
        self.register_buffer("projection", torch.randn(d, m, generator=g).to(device))
        for name, shape in (("gram", (m, m)), ("gram_val", (m, m)), ("targets", (m, k)), ("targets_val", (m, k))):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64, device=device))
        self.register_buffer("ridge_weights", torch.zeros(m, k, device=device))
        self.register_buffer("n_val", torch.zeros((), dtype=torch.float64, device=device))
        self.register_buffer("ridge", torch.zeros((), dtype=torch.float64, device=device))

    def projected(self, x: Tensor) -> Tensor:
        """``h = relu(f(x) W)``."""
        return self.project(self.features(x))

    def project(self, features: Tensor) -> Tensor:
        return F.relu(features @ self.projection)

    @staticmethod
    def select_ridge(
        gram_fit: Tensor, targets_fit: Tensor, gram_val: Tensor, targets_val: Tensor, n_val: float
    ) -> float:
        """The candidate ``lambda`` whose ridge solution on the fitting part has the least squared error on the
        held-out part, ``tr(W^T G_v W) - 2 tr(W^T C_v) + n_v`` (one-hot targets), the first on ties. One
        eigendecomposition ``G = Q diag(s) Q^T`` serves every candidate: ``W = Q diag(1 / (s + lambda)) Q^T C``."""
        s, q = torch.linalg.eigh(gram_fit)
        rotated = q.T @ targets_fit
        errors = []
        for ridge in RIDGES:
            w = q @ (rotated / (s.clamp_min(0) + ridge)[:, None])
            errors.append(float((w * (gram_val @ w)).sum() - 2 * (w * targets_val).sum() + n_val))
        return RIDGES[min(range(len(RIDGES)), key=errors.__getitem__)]

    @override
    @torch.no_grad()
    def absorb(self, task: int) -> None:
        stores = (self.gram, self.gram_val, self.targets, self.targets_val, self.n_val)
        sums = [torch.zeros_like(t) for t in stores]
        for features, labels, index in self.task_features(task):
            h = self.project(features).double()
            y = F.one_hot(labels, self.stream.num_classes).double()
            val = (index % 5) == 4
            sums[0] += h.T @ h
            sums[1] += h[val].T @ h[val]
            sums[2] += h.T @ y
            sums[3] += h[val].T @ y[val]
            sums[4] += val.sum()
        sum_across_ranks(sums)
        for store, add in zip(stores, sums, strict=True):
            store += add
        self.ridge.fill_(self.select_ridge(self.gram - self.gram_val, self.targets - self.targets_val,
                                           self.gram_val, self.targets_val, float(self.n_val)))  # fmt: skip
        eye = torch.eye(self.projection_dim, dtype=torch.float64, device=self.device)
        self.ridge_weights.copy_(torch.linalg.solve(self.gram + self.ridge * eye, self.targets))

    @override
    def classify(self, features: Tensor) -> Tensor:
        return self.project(features) @ self.ridge_weights

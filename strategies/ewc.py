"""Elastic Weight Consolidation and online EWC, as a plugin for any strategy."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from typing_extensions import override

from clfw import Batch, ContinualModule, Plugin
from clfw.fisher import diagonal_fisher
from clfw.plugins import flat_parameters, split_like, trainable_parameters, weighted_squared_distance


class EWC(Plugin):
    """Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) and online EWC (Schwarz et al., ICML 2018).

    After each task ``t`` it computes the diagonal Fisher ``F_t`` on the task's training data (``clfw.fisher``; the
    ``fisher`` argument chooses empirical or sampled labels) and stores the anchor ``theta*_t``. The loss gets
    ``(lambda / 2) sum_t sum_i F_t,i (theta_i - theta*_t,i)^2``: one term per past task (EWC), or with ``online`` one
    accumulated ``F <- gamma F + F_t`` and the latest anchor (online EWC). Logged as ``train/ewc``.

    A plugin, so it combines with any strategy: ``--model Naive --model.plugins+=clfw.strategies.EWC`` is EWC,
    ``--model ER --model.plugins+=clfw.strategies.EWC`` is ER with EWC (``configs/model/ewc.yaml``). Under DDP the
    Fisher is summed over the ranks' shards and divided by the global count, so every rank holds the same penalty.

    Args:
        ewc_lambda: Penalty weight lambda (tune it per benchmark; the papers' values range over orders of magnitude).
        online: Online EWC: one Fisher decayed by ``gamma`` and the latest anchor, instead of one term per task.
        gamma: Decay of the accumulated Fisher in online EWC (1.0 keeps it all).
        fisher: ``"empirical"`` (true labels), ``"sampled"`` (labels drawn from the model) or ``"weighted"`` (true
            labels weighted by their probability, as Mammoth's online EWC); see :func:`clfw.fisher.diagonal_fisher`.
    """

    def __init__(
        self,
        ewc_lambda: float = 100.0,
        online: bool = False,
        gamma: float = 1.0,
        fisher: Literal["empirical", "sampled", "weighted"] = "empirical",
    ) -> None:
        super().__init__()
        if ewc_lambda < 0 or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"ewc_lambda must be >= 0 and gamma in [0, 1], got {ewc_lambda}, {gamma}")
        if fisher not in ("empirical", "sampled", "weighted"):
            raise ValueError(f"fisher must be 'empirical', 'sampled' or 'weighted', got {fisher!r}")
        self.ewc_lambda, self.online, self.gamma, self.fisher_mode = ewc_lambda, online, gamma, fisher
        self.terms = 0  # number of stored (Fisher, anchor) pairs
        self._merged: tuple[int, Tensor, Tensor, Tensor] | None = None  # (terms, S, m, K) of penalty; not saved

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        fisher = diagonal_fisher(module, module.datamodule.task_loader(task, "train"), self.fisher_mode)
        names = [n for n, p in module.named_parameters() if p.requires_grad]
        flat = torch.cat([fisher[n].flatten() for n in names]).detach()
        anchor = flat_parameters(module).detach().clone()
        if self.online and self.terms:
            self.fisher_0.mul_(self.gamma).add_(flat)
            self.anchor_0.copy_(anchor)
            self._merged = None
        else:
            self.register_buffer(f"fisher_{self.terms}", flat)
            self.register_buffer(f"anchor_{self.terms}", anchor)
            self.terms += 1

    def penalty(self, module: ContinualModule) -> Tensor:
        """``(lambda / 2) sum_t F_t . (theta - theta*_t)^2`` over the stored pairs.

        Computed as ``(lambda / 2) (S . (theta - m)^2 + K)`` with ``S = sum_t F_t``, the Fisher-weighted anchor
        ``m = sum_t F_t theta*_t / S`` and the constant ``K = sum_t F_t . (theta*_t - m)^2`` (the cross term vanishes
        by the choice of ``m``): the same value and gradient, one pass per step however many tasks are stored. The
        merge is done in float64 when a pair is added or loaded.
        """
        params = trainable_parameters(module)
        if self._merged is None or self._merged[0] != self.terms or self._merged[1].device != params[0].device:
            self._merged = (self.terms, *self._merge())
        _, weight, anchor, constant = self._merged
        distance = weighted_squared_distance(params, split_like(weight, params), split_like(anchor, params))
        return 0.5 * self.ewc_lambda * (distance + constant)

    def _merge(self) -> tuple[Tensor, Tensor, Tensor]:
        pairs = [(getattr(self, f"fisher_{k}"), getattr(self, f"anchor_{k}")) for k in range(self.terms)]
        like = pairs[0][0]  # in float64 on the CPU (which every device can hand over), then back
        f64 = [(f.detach().cpu().double(), a.detach().cpu().double()) for f, a in pairs]
        weight = sum(f for f, _ in f64)
        anchor = sum(f * a for f, a in f64) / weight.clamp_min(torch.finfo(torch.float64).tiny)
        anchor = torch.where(weight > 0, anchor, f64[-1][1])  # no weight: any anchor gives a zero term
        constant = sum((f * (a - anchor).pow(2)).sum() for f, a in f64)
        return tuple(t.to(like.device, like.dtype) for t in (weight, anchor, constant))  # type: ignore[return-value]

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"ewc": self.penalty(module)} if self.terms else {}

    @override
    def get_extra_state(self) -> dict[str, int]:
        return {"terms": self.terms}

    @override
    def set_extra_state(self, state: dict[str, int]) -> None:
        self.terms, self._merged = state["terms"], None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for key, value in state_dict.items():  # the stored pairs are created on the fly: make room for them
            name = key[len(prefix) :]
            if key.startswith(prefix) and name.split("_")[0] in ("fisher", "anchor") and not hasattr(self, name):
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

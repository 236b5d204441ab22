"""CLS-ER: complementary learning system experience replay (Arani et al.)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import ContinualModule
from clfw.evaluation import eval_mode
from clfw.seeding import derived_generator
from clfw.strategies.er import ER


class CLSER(ER):
    """CLS-ER (Arani, Sarfraz & Zonooz, ICLR 2022, "Learning Fast, Learning Slow: A General Continual Learning Method
    based on Complementary Learning System"; reference code NeurAI-Lab/CLS-ER, ``models/clser.py``).

    Beside the working model, a plastic and a stable model start as copies of it and follow it as exponential moving
    averages, each updated stochastically after an optimizer step: with probability ``plastic_update_freq``
    (``stable_update_freq``) ``theta_P <- a theta_P + (1 - a) theta`` with ``a = min(1 - 1/(n + 1), plastic_alpha)``,
    ``n`` the optimizer steps so far including this one (``stable_alpha`` for the stable model). The loss is ER's
    cross-entropy on the current batch and a replayed minibatch together, plus ``consistency_weight`` times the mean
    squared error between the working model's logits of the replayed samples and those of a teacher chosen per sample:
    the plastic or the stable model, whichever gives the true label the higher softmax probability (the plastic one on
    a tie). The stable model predicts (the paper's reported model).

    The update draws come from a generator derived from ``(ema_seed, step)``: the same on every DDP rank and exact on
    resume. Both teachers see the same transformed replayed inputs as the working model; the probabilities that pick
    the teacher are computed on the scenario's masked logits, the squared error over all logits (the reference code
    does not mask). Deviation: the reference averages parameters only and leaves BatchNorm statistics at their initial
    copies; here floating-point buffers (BatchNorm statistics) are averaged with the same rate, so the stable model
    predicts with statistics of the weights it holds. Logged: ``train/clser`` (the weighted consistency term).
    Defaults: the reference code's argparse defaults; its tuned Seq-MNIST values are ``consistency_weight=2``,
    ``stable_update_freq=0.9``, ``plastic_update_freq=1``, both alphas 0.99 (buffer 200/500).

    Args:
        consistency_weight: Weight of the consistency loss (the paper's lambda).
        plastic_update_freq: Probability of a plastic-model update after each optimizer step (r_P).
        plastic_alpha: Decay of the plastic model's moving average (alpha_P).
        stable_update_freq: Probability of a stable-model update after each optimizer step (r_S).
        stable_alpha: Decay of the stable model's moving average (alpha_S).
        ema_seed: Seed of the update draws.
        **kwargs: Arguments of :class:`~clfw.strategies.ER` (buffer_size, replay_batch_size, buffer_seed, backbone ...).
    """

    def __init__(
        self,
        consistency_weight: float = 0.1,
        plastic_update_freq: float = 0.9,
        plastic_alpha: float = 0.999,
        stable_update_freq: float = 0.7,
        stable_alpha: float = 0.999,
        ema_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {consistency_weight}")
        for name, value in [("plastic_update_freq", plastic_update_freq), ("plastic_alpha", plastic_alpha),
                            ("stable_update_freq", stable_update_freq), ("stable_alpha", stable_alpha)]:  # fmt: skip
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.consistency_weight, self.ema_seed = consistency_weight, ema_seed
        self.rates = {"plastic": (plastic_update_freq, plastic_alpha), "stable": (stable_update_freq, stable_alpha)}
        self.plastic: ContinualModule | None = None
        self.stable: ContinualModule | None = None

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        if self.stable is None:  # both start as copies of the working model (before a checkpoint is loaded)
            self.plastic = self.copy_model(frozen=True)
            self.stable = self.copy_model(frozen=True)

    @override
    def replay_terms(self, x: Tensor, memory: dict[str, Tensor], logits: Tensor) -> dict[str, Tensor]:
        target = self.consistency_target(x, memory["y"], memory["task"])
        return {"clser": self.consistency_weight * F.mse_loss(logits, target)}

    def consistency_target(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        """Per sample, the logits of the plastic or the stable model, whichever is more confident in the label ``y``
        (the plastic one on a tie); no gradient."""
        with torch.no_grad(), eval_mode(self.plastic), eval_mode(self.stable):
            plastic, stable = self.plastic(x), self.stable(x)
            rows = torch.arange(len(y), device=y.device)
            p_plastic = torch.softmax(self.masked(plastic, task), 1)[rows, y]
            p_stable = torch.softmax(self.masked(stable, task), 1)[rows, y]
            return torch.where((p_plastic >= p_stable).unsqueeze(1), plastic, stable)

    @override
    def after_optimizer_step(self) -> None:
        self.update_ema_models(self.trainer.global_step + 1)  # Lightning counts this step once the hook returns

    def update_ema_models(self, step: int) -> None:
        """The stochastic updates after optimizer step ``step`` (1 for the first): the draws ``u_P, u_S`` are
        ``torch.rand(2)`` of :func:`~clfw.seeding.derived_generator` ``(ema_seed, step)``; a model updates if its draw
        is below its frequency."""
        draws = torch.rand(2, generator=derived_generator(self.ema_seed, step)).tolist()
        for (name, (freq, alpha)), u in zip(self.rates.items(), draws, strict=True):
            if u < freq:
                self.ema_update(getattr(self, name), min(1 - 1 / (step + 1), alpha))

    @torch.no_grad()
    def ema_update(self, ema: ContinualModule, alpha: float) -> None:
        """``ema <- alpha ema + (1 - alpha) self`` over the parameters and floating-point buffers ``forward`` uses."""
        own = dict(self.copy_source_tensors())
        for name, t in (*ema.named_parameters(), *ema.named_buffers()):
            if name in own and t.is_floating_point():
                t.mul_(alpha).add_(own[name], alpha=1 - alpha)

    def copy_source_tensors(self) -> list[tuple[str, Tensor]]:
        """The working model's parameters and buffers under the names its copies give them."""
        skip = ("plastic.", "stable.", "buffer.", "plugins.")
        return [(k, v) for k, v in (*self.named_parameters(), *self.named_buffers()) if not k.startswith(skip)]

    @override
    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        return self.masked(self.stable(x), task_ids)

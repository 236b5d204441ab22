"""Refresh learning: unlearn the current batch, then relearn it, as a plugin for any strategy."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule, Plugin
from clfw.distributed import average_across_ranks
from clfw.fisher import diagonal_fisher
from clfw.seeding import derived_generator


class Refresh(Plugin):
    """Refresh learning (Wang, Li, Shen & Huang, ICLR 2024, "A Unified and General Framework for Continual Learning").

    Before each training step of the strategy (which then *relearns* the batch with its own loss), it *unlearns* the
    current batch with one Fisher-preconditioned gradient-ascent step with noise, per parameter tensor ``theta``::

        g     = d CE(current batch) / d theta          # the scenario's masked logits; DDP-averaged
        u     = (||theta|| / (||unlearn_lr g|| + 1e-20)) unlearn_lr g
        theta <- theta + delta (1 / (1 + gamma F)) (u + sigma eps),   eps ~ N(0, I)

    This is the update of the authors' code (there: a copy of the model takes one SGD step of lr ``unlearn_lr`` on the
    negative cross-entropy, whose change is ``unlearn_lr g``; here ``g`` comes from ``torch.autograd.grad``, without the
    copy, and with the same result). ``F`` is the diagonal Fisher of the task's training data
    (:func:`clfw.fisher.diagonal_fisher`, batched per-sample gradients; by default weighted by ``p(y | x)`` as in the
    reference code), computed at each task end and accumulated as ``F <- tau F + F_new``; it is zero during the first
    task. Only the trainable parameters (``module.trainable_parameters()``) move. Deviations from the reference code:
    the Fisher is computed in eval mode on the unaugmented task data (the code: train-mode BatchNorm, one augmented
    image at a time), and the noise comes from refresh's own generator (the code: the global one). The paper's text
    could not be consulted here; its update is described (by its reviewers) as a Fisher-preconditioned ascent step
    with noise followed by the relearning descent step, which is what this implements with the code's constants.

    The unlearn pass changes nothing but the weights: BatchNorm running statistics are restored, dropout draws from
    a generator forked off the global one (so the strategy's random streams are untouched), the noise comes from
    refresh's own generator derived from ``(seed, steps)`` (``steps`` is a buffer, so resumes are exact), and nothing
    touches ``.grad``. With ``delta = 0`` a run is bit-identical to the strategy alone. Under DDP ``g`` is averaged
    across ranks and the noise is the same on every rank, so replicas stay identical. Cost: one forward and one backward
    pass of the batch. Logged: ``train/refresh_unlearn_loss``.

    Switch it on for any strategy with ``--config configs/plugins/refresh.yaml`` (it appends to ``model.plugins``).

    Args:
        unlearn_lr: Learning rate of the unlearning SGD step (the reference code's 0.01; it only scales ``g`` before
            the rescaling, so it matters only through the 1e-20 guard).
        delta: Step size of the unlearning update (1e-5).
        gamma: Fisher preconditioning strength (1e-3).
        sigma: Scale of the Gaussian noise (1e-3).
        tau: Decay of the accumulated Fisher at each task end (1e-5).
        fisher: Kind of Fisher (:func:`clfw.fisher.diagonal_fisher`): ``"weighted"`` (the reference code's: true labels,
            each squared gradient weighted by the probability of the label), ``"empirical"`` or ``"sampled"``.
        seed: Seed of the noise (and of the unlearn pass's dropout).
    """

    def __init__(
        self,
        unlearn_lr: float = 0.01,
        delta: float = 1e-5,
        gamma: float = 1e-3,
        sigma: float = 1e-3,
        tau: float = 1e-5,
        fisher: Literal["empirical", "sampled", "weighted"] = "weighted",
        seed: int = 0,
    ) -> None:
        super().__init__()
        values = {"unlearn_lr": unlearn_lr, "delta": delta, "gamma": gamma, "sigma": sigma, "tau": tau}
        bad = {k: v for k, v in values.items() if v < 0}
        if bad or unlearn_lr == 0:
            raise ValueError(f"refresh's constants must be >= 0 (unlearn_lr > 0), got {bad or values}")
        if fisher not in ("empirical", "sampled", "weighted"):
            raise ValueError(f"fisher must be 'empirical', 'sampled' or 'weighted', got {fisher!r}")
        self.unlearn_lr, self.delta, self.gamma, self.sigma, self.tau = unlearn_lr, delta, gamma, sigma, tau
        self.fisher_mode, self.seed = fisher, seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._batchnorm: list[str] | None = None
        # the accumulated F of each parameter: buffers ``fisher:<name, dots as colons>``, made at the first task end

    @staticmethod
    def _key(name: str) -> str:
        return "fisher:" + name.replace(".", ":")

    def _trainable(self, module: ContinualModule) -> list[tuple[str, nn.Parameter]]:
        trainable = {id(p) for p in module.trainable_parameters()}
        return [(n, p) for n, p in module.named_parameters() if id(p) in trainable]

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        new = diagonal_fisher(module, module.datamodule.task_loader(task, "train"), self.fisher_mode)
        for name, _ in self._trainable(module):
            key = self._key(name)
            if hasattr(self, key):
                getattr(self, key).mul_(self.tau).add_(new[name])
            else:
                self.register_buffer(key, new[name].detach().clone())

    def unlearn_direction(
        self, module: ContinualModule, batch: Batch, params: list[nn.Parameter]
    ) -> tuple[list[Tensor], Tensor]:
        """``g``, the gradient of the batch's cross-entropy for each of ``params`` (DDP-averaged), and the loss."""
        if self._batchnorm is None:  # names of the running statistics the unlearn forward would update
            ends = ("running_mean", "running_var", "num_batches_tracked")
            self._batchnorm = [n for n, _ in module.named_buffers() if n.endswith(ends)]
        saved = {n: module.get_buffer(n).clone() for n in self._batchnorm}
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(int(torch.randint(2**62, (), generator=derived_generator(self.seed, 7, int(self.steps)))))
            loss = F.cross_entropy(module.masked(module(batch.x), batch.task), batch.y)
            # no trainable parameter may reach the loss (GDumb trains only at task ends): then g is zero
            grads = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
        with torch.no_grad():
            for n, value in saved.items():
                module.get_buffer(n).copy_(value)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]
        average_across_ranks(grads)
        return grads, loss.detach()

    @override
    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        named = self._trainable(module)
        params = [p for _, p in named]
        grads, loss = self.unlearn_direction(module, batch, params)
        generator = torch.Generator(device=module.device).manual_seed(
            int(torch.randint(2**62, (), generator=derived_generator(self.seed, int(self.steps))))
        )
        with torch.no_grad():
            steps = torch._foreach_mul(grads, self.unlearn_lr)
            scale = [
                a / (b + 1e-20) for a, b in zip(torch._foreach_norm(params), torch._foreach_norm(steps), strict=True)
            ]
            updates = torch._foreach_mul(steps, scale)  # u, per tensor
            noise = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in params]
            torch._foreach_add_(updates, noise, alpha=self.sigma)
            for (name, _), update in zip(named, updates, strict=True):
                fisher = getattr(self, self._key(name), None)
                if fisher is not None:
                    update.div_(1 + self.gamma * fisher)
            torch._foreach_add_(params, updates, alpha=self.delta)
        self.steps += 1
        module.log_train_term("refresh_unlearn_loss", loss)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for key, value in state_dict.items():  # the Fisher buffers are made at the first task end: make room
            name = key[len(prefix) :]
            if key.startswith(prefix) and name.startswith("fisher:") and not hasattr(self, name):
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

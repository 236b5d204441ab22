"""Plugins: behaviours that switch on for any strategy (clfw's composition mechanism).

A strategy is a :class:`~clfw.ContinualModule` subclass; a plugin is a :class:`Plugin` passed in its ``plugins``
argument, so a config can add one to any strategy, including one written outside clfw::

    model:
      class_path: mylab.MyStrategy
      init_args:
        plugins:
          - class_path: mylab.MyRegularizer
            init_args: {weight: 0.5}

The module calls each hook on itself first, then on each plugin in list order: the strategy's ``predict`` then each
plugin's ``predict`` (each gets the scores so far); after an optimizer step the strategy's ``after_optimizer_step``,
then each plugin's, all before any evaluation, task end or checkpoint of that step. A plugin is an ``nn.Module`` held
inside the strategy, so its buffers (importance weights, anchors) are saved in checkpoints, moved to the device and
seen by DDP without extra code; other state goes in ``get_extra_state``/``set_extra_state``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from clfw.data import Batch

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from clfw.module import ContinualModule


class Plugin(nn.Module):
    """Base class of plugins. Override only the hooks you need; each receives the strategy module first.

    ``needs_task_boundaries`` (class attribute): ``None`` (default) means "whether the plugin overrides
    ``on_task_start`` or ``on_task_end``"; set it to ``True``/``False`` to say so explicitly. A plugin that needs
    boundaries is refused on a stream that hides them, before training.
    """

    needs_task_boundaries: bool | None = None

    def on_setup(self, module: ContinualModule) -> None:
        """Called once the stream is known (``module.stream``), before training."""

    def on_task_start(self, module: ContinualModule, task: int) -> None:
        """Called when training on ``task`` begins, after the strategy's own ``on_task_start``."""

    def on_task_end(self, module: ContinualModule, task: int) -> None:
        """Called after the last training epoch of ``task``, before the task-end evaluation."""

    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        """Called at the start of each training step, before the loss is computed (refresh learning unlearns here)."""

    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Extra loss terms, added to the strategy's loss and logged as ``train/<name>``.

        ``outputs`` holds the strategy's ``"loss"`` and, when it computed them, the current batch's raw ``"logits"``.
        """
        return {}

    def before_optimizer_step(self, module: ContinualModule, optimizer: Optimizer) -> None:
        """Called with the final gradients in ``.grad`` (accumulated, DDP-averaged, unscaled), before clipping/step."""

    def after_optimizer_step(self, module: ContinualModule) -> None:
        """Called right after each optimizer step, after the strategy's own ``after_optimizer_step`` and before any
        callback of that step (continual evaluation, task end, checkpoint): an EMA model updates here."""

    def predict(self, module: ContinualModule, x: Tensor, task_ids: Tensor, scores: Tensor) -> Tensor:
        """The class scores every evaluator uses (:meth:`~clfw.ContinualModule.class_scores`): ``scores`` are the
        strategy's ``predict`` after the earlier plugins' ``predict``; return them unchanged (the default), or new
        ``[B, num_classes]`` scores (a nearest-mean head)."""
        return scores


def needs_task_boundaries(obj: object) -> bool:
    """Whether a strategy or plugin needs to be told where tasks start and end: its ``needs_task_boundaries`` class
    attribute when set, else whether its class overrides ``on_task_start`` or ``on_task_end`` of its base class
    (:class:`Plugin` or :class:`~clfw.ContinualModule`)."""
    declared = getattr(type(obj), "needs_task_boundaries", None)
    if declared is not None:
        return bool(declared)
    from clfw.module import ContinualModule

    base = Plugin if isinstance(obj, Plugin) else ContinualModule
    return any(getattr(type(obj), hook) is not getattr(base, hook) for hook in ("on_task_start", "on_task_end"))


def flat_parameters(module: ContinualModule) -> Tensor:
    """The parameters that require gradients as one vector (keeps the graph: ``.detach()`` it to store it)."""
    return torch.cat([p.flatten() for p in module.parameters() if p.requires_grad])


def trainable_parameters(module: ContinualModule) -> list[Tensor]:
    """The parameters that require gradients, in the order of :func:`flat_parameters`."""
    return [p for p in module.parameters() if p.requires_grad]


def split_like(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Views of a flat vector (in :func:`flat_parameters` order) shaped as ``params``; no copy."""
    if flat.numel() != sum(p.numel() for p in params):
        total = sum(p.numel() for p in params)
        raise ValueError(f"a flat vector of {flat.numel()} values does not match {total} trainable parameter values")
    return [part.view_as(p) for part, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]


def weighted_squared_distance(params: list[Tensor], weights: list[Tensor], anchors: list[Tensor]) -> Tensor:
    """``sum_i w_i (theta_i - a_i)^2`` over the tensors of ``params``, differentiable in ``params``.

    The quadratic penalties' core (EWC, SI, MAS). Its gradient ``2 w (theta - a)`` is kept from the forward pass, so a
    step costs four passes over the parameters with no flattened copy of them; the autograd graph of ``sub``, ``pow``,
    ``mul`` and ``sum`` over a concatenated vector cost about 6x more (issue 14, ``scripts/bench.py``).

    >>> p = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> d = weighted_squared_distance([p], [torch.tensor([1.0, 3.0])], [torch.tensor([0.0, 0.0])])
    >>> d.backward(); d.item(), p.grad.tolist()
    (13.0, [2.0, 12.0])
    """
    return _WeightedSquaredDistance.apply(len(params), *weights, *anchors, *params)


class _WeightedSquaredDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, n: int, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        weights, anchors, params = tensors[:n], tensors[n : 2 * n], tensors[2 * n :]
        diff = torch._foreach_sub(params, anchors)
        weighted = torch._foreach_mul(diff, weights)
        ctx.n = n
        ctx.save_for_backward(*weighted)
        dots = [w.flatten().dot(d.flatten()) for w, d in zip(weighted, diff, strict=True)]
        return torch.stack(dots).sum() if dots else torch.zeros(())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grads = torch._foreach_mul(list(ctx.saved_tensors), 2 * grad)
        return (None,) * (1 + 2 * ctx.n) + tuple(grads)


class QuadraticPenalty(Plugin):
    """Base of the importance-weighted quadratic regularizers (SI, MAS ...): once a task has ended, the loss gets
    ``weight * sum_i importance_i (theta_i - anchor_i)^2`` over the trainable parameters, flattened in
    ``module.parameters()`` order, logged as ``train/<term>``.

    Subclasses fill the flat buffers ``importance`` and ``anchor`` (and any other names in ``vectors``), count finished
    tasks in ``self.tasks``, and set ``weight`` and ``term``. The buffers ride in checkpoints and are resized on load.
    """

    vectors: tuple[str, ...] = ("importance", "anchor")
    term = "penalty"

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        for name in self.vectors:
            self.register_buffer(name, torch.empty(0))
        self.tasks = 0  # number of consolidated tasks

    flat_parameters = staticmethod(flat_parameters)

    def penalty(self, module: ContinualModule) -> Tensor:
        """``weight * sum_i importance_i (theta_i - anchor_i)^2``."""
        params = trainable_parameters(module)
        importance, anchor = split_like(self.importance, params), split_like(self.anchor, params)
        return self.weight * weighted_squared_distance(params, importance, anchor)

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.term: self.penalty(module)} if self.tasks else {}

    @override
    def get_extra_state(self) -> dict[str, int]:
        return {"tasks": self.tasks}

    @override
    def set_extra_state(self, state: dict[str, int]) -> None:
        self.tasks = state["tasks"]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self.vectors:  # sized at setup or at the first task end: make room
            value, own = state_dict.get(prefix + name), getattr(self, name)
            if value is not None and value.shape != own.shape:
                setattr(self, name, own.new_empty(value.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

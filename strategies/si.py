"""Synaptic Intelligence, as a plugin for any strategy."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from clfw import ContinualModule
from clfw.plugins import QuadraticPenalty


class SI(QuadraticPenalty):
    """Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017).

    During a task it accumulates each parameter's path integral ``omega_i += -g_i * delta_theta_i`` over the optimizer
    steps, where ``g`` is the gradient the step used, the one in ``.grad`` at ``before_optimizer_step`` (the gradient of
    the total loss, SI's own penalty and the strategy's terms included, after gradient accumulation and unscaling,
    before clipping), and ``delta_theta`` the parameter change that step made. At the end of the task
    ``Omega += omega / (Delta^2 + xi)`` with ``Delta`` the parameters' change over the whole task; then ``omega``
    restarts at 0 and the anchor ``theta*`` is set to the current parameters. The loss gets
    ``c sum_i Omega_i (theta_i - theta*_i)^2`` once a task has ended. Logged as ``train/si``. (The authors' code differs
    in two points: it takes ``g`` of the unregularized loss and clips the accumulated ``Omega`` at 0.)

    A step's change is known only at the next step (or at the task end), so each step's ``g`` and ``theta`` wait in
    buffers, like ``omega``, ``Omega`` and the anchor: a checkpoint saved between steps resumes exactly. A pending step
    is a nonzero ``step_grad``; none is pending at a task start. Non-finite gradient entries (a step skipped by the AMP
    scaler) count as 0. Under DDP the gradients in ``.grad`` are already averaged across ranks and the parameters are
    equal, so every rank computes the same ``omega`` without any communication (reducing it would count twice).

    A plugin, so it combines with any strategy: ``--model Naive --model.plugins+=clfw.strategies.SI`` is SI
    (``configs/model/si.yaml``). The defaults are the authors' Split MNIST values (``c = 1``, ``xi = 1e-3``, in the
    ``fig_split_mnist`` notebook of their code, ganguli-lab/pathint; they used ``xi = 0.1`` on permuted MNIST).

    Args:
        c: Penalty strength c.
        xi: Damping xi > 0 of the normalisation ``Delta^2 + xi`` (keeps parameters that barely moved finite).
    """

    vectors = ("omega", "importance", "anchor", "start", "step_grad", "step_theta")
    term = "si"

    def __init__(self, c: float = 1.0, xi: float = 1e-3) -> None:
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        if xi <= 0:
            raise ValueError(f"xi must be > 0, got {xi}")
        super().__init__(weight=c)  # the vectors are flat over the trainable parameters, sized at setup
        self.c, self.xi = c, xi

    def _flat(self, module: ContinualModule) -> Tensor:
        return self.flat_parameters(module).detach()

    @override
    def on_setup(self, module: ContinualModule) -> None:
        theta = self._flat(module)
        for name in self.vectors:
            if getattr(self, name).shape != theta.shape:  # not yet loaded from a checkpoint
                setattr(self, name, torch.zeros_like(theta))

    def _finish_pending_step(self, theta: Tensor) -> None:
        self.omega.addcmul_(self.step_grad, theta - self.step_theta, value=-1.0)
        self.step_grad.zero_()

    @override
    def on_task_start(self, module: ContinualModule, task: int) -> None:
        self.step_grad.zero_()
        self.start.copy_(self._flat(module))

    @override
    def before_optimizer_step(self, module: ContinualModule, optimizer: Optimizer) -> None:
        theta = self._flat(module)
        self._finish_pending_step(theta)
        params = [p for p in module.parameters() if p.requires_grad]
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        self.step_grad.copy_(torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0))
        self.step_theta.copy_(theta)

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        theta = self._flat(module)
        self._finish_pending_step(theta)
        self.importance.add_(self.omega / ((theta - self.start).pow(2) + self.xi))
        self.omega.zero_()
        self.anchor.copy_(theta)
        self.tasks += 1

"""``FiniteGuard``: a run whose loss or gradients stop being finite is stopped, never reported.

A NaN or infinite loss term, or an exploding update, leaves a model whose accuracy matrix means nothing. The guard
checks, at every optimizer step, the total loss of the step and the norm of the final gradients (after DDP averaging,
so every rank reaches the same verdict and none is left waiting in a collective; a rank-local non-finite loss is
shared with one small all-reduce of a flag). On the CPU the verdict is read at once. On an accelerator it stays in a
device flag, with the step and the loss terms of the first bad step, and is read (one synchronisation) only before
each evaluation, task end and checkpoint, so no step waits for the host. The parameters themselves are checked at
those points too, and :class:`~clfw.checkpoint.AtomicCheckpointIO` refuses to write non-finite ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from clfw.checkpoint import nonfinite_tensors
from clfw.distributed import world

if TYPE_CHECKING:
    from clfw.module import ContinualModule


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or an infinity."""


class FiniteGuard:
    """Records each step's loss terms and checks the step's total loss and gradient norm.

    Args:
        defer: Keep the verdict on the device and read it only in :meth:`raise_if_flagged` (``None``: on accelerators,
            not on the CPU).
    """

    def __init__(self, defer: bool | None = None) -> None:
        self.defer = defer
        self.terms: dict[str, Tensor] = {}
        self.loss_ok: Tensor | None = None  # all micro-batches of the step so far had a finite total loss
        self.flag: Tensor | None = None  # accelerator: a non-finite step happened
        self.first: dict[str, Tensor] = {}  # accelerator: step, grad norm and terms of the first non-finite step

    def record(self, loss: Tensor, terms: dict[str, Tensor]) -> None:
        """Called in ``training_step`` with the total loss and its named terms (``"loss"``: the strategy's own)."""
        ok = torch.isfinite(loss.detach()).all()
        self.loss_ok = ok if self.loss_ok is None else self.loss_ok & ok
        self.terms = {name: t.detach() for name, t in terms.items()}
        self.terms["total"] = loss.detach()

    def check_step(self, module: ContinualModule, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Called with the final gradients, before the optimizer step: those of the parameters ``optimizer`` updates
        (its parameter list is read without walking the module tree), or of all of ``module``'s without it."""
        if optimizer is not None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        else:
            grads = [p.grad for p in module.parameters() if p.grad is not None]
        device = grads[0].device if grads else module.device
        defer = self.defer if self.defer is not None else device.type != "cpu"
        loss_ok, self.loss_ok = self.loss_ok, None
        if not defer:  # the verdict in Python numbers: a few tensor operations a step, not a dozen
            norm = _norm(grads, device, None)
            if not math.isfinite(norm.item()):  # an overflow of float32 is not a non-finite gradient
                norm = _norm(grads, device, torch.float64)
            local = not math.isfinite(norm.item()) or (loss_ok is not None and not bool(loss_ok))
            bad = local
            if world()[1] > 1:  # a rank-local NaN loss with finite averaged gradients: every rank must decide the same
                flag = torch.tensor(int(local), dtype=torch.uint8, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                bad = bool(flag.item())
            if bad:
                raise NonFiniteError(self._message(module, step, norm, self.terms, elsewhere=not local))
            return
        norm = _norm(grads, device, torch.float64)
        loss_ok = loss_ok.to(device) if loss_ok is not None else torch.ones((), dtype=torch.bool, device=device)
        bad = (~torch.isfinite(norm) | ~loss_ok).to(torch.uint8)
        if world()[1] > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad = bad.bool()
        if self.flag is None:
            self.flag = torch.zeros((), dtype=torch.bool, device=device)
            self.first = {"step": torch.full((), -1, dtype=torch.long, device=device), "norm": norm.clone()}
        first = bad & ~self.flag
        self.first["step"] = torch.where(first, torch.full((), step, device=device), self.first["step"])
        self.first["norm"] = torch.where(first, norm, self.first["norm"])
        for name, value in self.terms.items():
            old = self.first.get(f"term/{name}", torch.zeros_like(value))
            self.first[f"term/{name}"] = torch.where(first, value, old) if old.shape == value.shape else value
        self.flag |= bad

    def raise_if_flagged(self, module: ContinualModule, where: str, step: int) -> None:
        """Raises :class:`NonFiniteError` if a step was flagged or a parameter is not finite (checked before ``where``:
        an evaluation, a task end, a checkpoint)."""
        if self.flag is not None and bool(self.flag):
            terms = {k[5:]: v for k, v in self.first.items() if k.startswith("term/")}
            raise NonFiniteError(self._message(module, int(self.first["step"]), self.first["norm"], terms))
        params = [p for p in module.parameters() if p.is_floating_point()]
        # in float64: the norm of large but finite float32 weights (lr=1e30) must not overflow into a false alarm
        if not bool(torch.isfinite(_norm(params, module.device, torch.float64))):
            names = nonfinite_tensors(dict(module.named_parameters()))
            raise NonFiniteError(
                f"non-finite parameters before {where} (task {module.stream_task}, global step {step}): "
                f"{', '.join(names[:5])}"
            )

    @staticmethod
    def _message(
        module: ContinualModule, step: int, norm: Tensor, terms: dict[str, Tensor], elsewhere: bool = False
    ) -> str:
        values = {name: float(t.float().sum()) if t.numel() else 0.0 for name, t in terms.items()}
        bad = [name for name, v in values.items() if name != "total" and not math.isfinite(v)]
        shown = ", ".join(f"{name}={v:.4g}" for name, v in values.items())
        if elsewhere:
            culprit = "the loss of another rank is not finite (its error names the term)"
        elif bad:
            culprit = f"loss term {', '.join(repr(b) for b in bad)} is not finite"
        else:
            culprit = "the gradient is not finite"
        return (
            f"non-finite training at task {module.stream_task}, global step {step}: {culprit} ({shown}; "
            f"gradient norm {float(norm):.4g}); the run is stopped so that no metric of a broken model is reported"
        )


def _norm(tensors: list[Tensor], device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """The 2-norm of all ``tensors`` together (in ``dtype``, e.g. float64 so that large finite values cannot
    overflow)."""
    if not tensors:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype)))

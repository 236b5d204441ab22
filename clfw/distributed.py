"""The few torch.distributed calls clfw needs, written once; each is a no-op without a process group."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group). Every rank must call it."""
    size = world()[1]
    if size == 1:
        return [obj]
    out: list[object] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def average_across_ranks(tensors: list[Tensor]) -> None:
    """Replaces each tensor, in place, by its mean over the ranks (one all-reduce for all of them)."""
    size = world()[1]
    if size == 1 or not tensors:
        return
    sum_across_ranks(tensors)
    for t in tensors:
        t.div_(size)


def sum_across_ranks(tensors: list[Tensor]) -> None:
    """Replaces each tensor, in place, by its sum over the ranks (one all-reduce for all of them)."""
    if world()[1] == 1 or not tensors:
        return
    flat = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.view_as(t))


def zero_reaching(parameters: Iterable[Tensor], device: torch.device | str | None = None) -> Tensor:
    """A zero scalar whose graph reaches every tensor of ``parameters``: added to a loss it gives each a (zero)
    gradient, so DDP, which reduces the gradients of every parameter it was given, finds them all."""
    return sum((p.sum() for p in parameters), torch.zeros((), device=device)) * 0.0

"""The diagonal Fisher information of a :class:`~clfw.ContinualModule`, from batched per-sample gradients.

Shared by EWC / online EWC and refresh learning. ``F_i = (1/N) sum_n (d log p(y_n | x_n) / d theta_i)^2`` over the N
samples of the given loader, where ``p`` is the softmax of the module's masked logits (the classes it may predict in its
scenario). Two choices of ``y_n``, which the EWC literature mixes up:

- ``"empirical"``: the true label (the "empirical Fisher"; Mammoth's EWC and refresh learning's reference code);
- ``"sampled"``: a label drawn from the model's own prediction ``p(. | x_n)`` (a one-sample Monte-Carlo estimate of the
  true Fisher, as in Kirkpatrick et al.'s derivation).

Per-sample gradients come from ``torch.func.vmap(torch.func.grad(...))`` in chunks, not from a Python loop over samples.
The module is evaluated in eval mode (BatchNorm uses its running statistics and is not updated; no dropout). Under DDP
each rank passes its own shard; the sums and counts are added across ranks, so every rank gets the Fisher of the whole
data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F  # noqa: N812

from clfw.data import Batch
from clfw.evaluation import eval_mode

if TYPE_CHECKING:
    from clfw.module import ContinualModule


def diagonal_fisher(
    module: ContinualModule,
    batches: Iterable[Batch],
    mode: Literal["empirical", "sampled"] = "empirical",
    chunk_size: int = 64,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of every trainable parameter of ``module`` over ``batches``, keyed by parameter name.

    Args:
        module: The model (its ``forward`` gives raw logits; ``masked`` applies its scenario's class mask).
        batches: Batches of (transformed) inputs, labels and task ids, e.g. ``module.datamodule.task_loader(t)``.
        mode: ``"empirical"`` (true labels) or ``"sampled"`` (labels drawn from the model).
        chunk_size: Samples per vectorised per-sample-gradient pass (memory: ``chunk_size`` x parameters).
        generator: Generator of the sampled labels (CPU); default: a fixed seed, so the result is reproducible.
    """
    if mode not in ("empirical", "sampled"):
        raise ValueError(f"mode must be 'empirical' or 'sampled', got {mode!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in module.named_parameters() if not p.requires_grad}
    buffers = dict(module.named_buffers())

    def log_likelihood(p: dict[str, Tensor], x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        logits = functional_call(module, {**p, **frozen, **buffers}, (x.unsqueeze(0),))
        return -F.cross_entropy(module.masked(logits, task.unsqueeze(0)), y.unsqueeze(0))

    per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    count = torch.zeros((), dtype=torch.long, device=module.device)
    with eval_mode(module):
        for batch in batches:
            x, y, task = (v.to(module.device) for v in (batch.x, batch.y, batch.task))
            if mode == "sampled":
                with torch.no_grad():
                    probs = torch.softmax(module.masked(module(x), task), dim=1)
                y = torch.multinomial(probs.cpu().double(), 1, generator=generator).flatten().to(x.device)
            for i in range(0, len(y), chunk_size):
                grads = per_sample(params, x[i : i + chunk_size], y[i : i + chunk_size], task[i : i + chunk_size])
                for n, g in grads.items():
                    total[n] += g.pow(2).sum(0)
            count += len(y)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in total.values():
            dist.all_reduce(t)
        dist.all_reduce(count)
    if int(count) == 0:
        raise ValueError("the Fisher needs at least one sample: the loader was empty")
    return {n: t / count for n, t in total.items()}

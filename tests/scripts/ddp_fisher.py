"""Two gloo processes each compute the diagonal Fisher and the output sensitivity (MAS) on their own shard of a task;
each saves the results to OUTDIR.

A job of ``tests/scripts/ddp_suite.py`` (which provides the process group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from clfw.backbones import MLP
from clfw.fisher import diagonal_fisher, output_sensitivity
from clfw.loaders import EvalLoader
from clfw.strategies import Naive
from tests.helpers import TinyStream


def build() -> tuple[Naive, TinyStream]:
    torch.manual_seed(0)
    dm = TinyStream(n_tasks=2, test_per_class=11)
    model = Naive(backbone=MLP(in_features=16, hidden=(8,)))
    model.attach_stream(dm)
    model.current_task = 0
    model._update_seen_mask()
    return model.double(), dm


def main(outdir: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    model, dm = build()
    loader = EvalLoader(dm.stream.tasks[0].test, 5, dm.eval_transform(), rank, world)  # 22 samples: 11 per rank
    batches = [b._replace(x=b.x.double()) for b in loader]
    torch.save(diagonal_fisher(model, batches), f"{outdir}/fisher{rank}.pt")
    torch.save(output_sensitivity(model, batches), f"{outdir}/sensitivity{rank}.pt")

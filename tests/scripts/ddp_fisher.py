"""Two gloo processes each compute the diagonal Fisher and the output sensitivity (MAS) on their own shard of a task;
each saves the results to OUTDIR.

Run as ``python tests/scripts/ddp_fisher.py OUTDIR PORT``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def worker(rank: int, world: int, outdir: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, dm = build()
    loader = EvalLoader(dm.stream.tasks[0].test, 5, dm.eval_transform(), rank, world)  # 22 samples: 11 per rank
    batches = [b._replace(x=b.x.double()) for b in loader]
    torch.save(diagonal_fisher(model, batches), f"{outdir}/fisher{rank}.pt")
    torch.save(output_sensitivity(model, batches), f"{outdir}/sensitivity{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1], sys.argv[2]), nprocs=2, join=True)

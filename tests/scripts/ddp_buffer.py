"""Two gloo processes each offer their own shard of a stream to a ReservoirBuffer; each saves its buffers to OUTDIR
(a ReservoirBuffer, then a ClassBalancedBuffer).

A job of ``tests/scripts/ddp_suite.py`` (which provides the process group). Rank r offers stream[r::2] in batches of
10, as a sharded training loader would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from clfw.buffers import ClassBalancedBuffer, ReservoirBuffer


def main(outdir: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    buf = ReservoirBuffer(capacity=16, seed=5)
    stream = torch.arange(200)
    mine = stream[rank::world]
    for i in range(0, len(mine), 10):
        ids = mine[i : i + 10]
        buf.add(id=ids, x=(ids % 256).to(torch.uint8).view(-1, 1).repeat(1, 3))
    replay = buf.sample(4)["id"]
    balanced = ClassBalancedBuffer(capacity=12, seed=5)
    for i in range(0, len(mine), 10):
        ids = mine[i : i + 10]
        balanced.add(id=ids, y=(ids * ids) % 7)  # 7 unevenly sized classes
    torch.save(
        {"state": buf.state_dict(), "replay": replay, "balanced": balanced.state_dict()}, f"{outdir}/buffer{rank}.pt"
    )

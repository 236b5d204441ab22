"""A loss that is non-finite on rank 1 only, at one step, in a 2-process DDP fit: every rank must stop there.

Run as ``python tests/scripts/ddp_nan.py OUTDIR``. The NaN term has no gradient, so the averaged gradients stay finite
and only the guard's all-reduced flag tells rank 0. Each rank writes ``OUTDIR/rank<r>.txt`` with the error it raised.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

import clfw.strategies
from clfw import Batch, ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.numerics import NonFiniteError
from tests.helpers import TinyStream


class NaNOnRankOne(Plugin):
    """A gradient-free loss term that is NaN on rank 1 at global step 5."""

    needs_task_boundaries = False

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        broken = module.trainer.global_rank == 1 and module.trainer.global_step == 5
        return {"rank_local": torch.tensor(float("nan") if broken else 0.0)}


def main(outdir: str) -> None:
    pl.seed_everything(0)
    model = clfw.strategies.Naive(backbone=MLP(in_features=16, hidden=(8,)), plugins=[NaNOnRankOne()])
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=outdir,
    )  # fmt: skip
    try:
        trainer.fit(model, TinyStream(n_tasks=2, batch_size=8))
        outcome = "finished"
    except NonFiniteError as err:
        outcome = str(err)
    with open(f"{outdir}/rank{trainer.global_rank}.txt", "w") as f:
        f.write(outcome)


if __name__ == "__main__":
    main(sys.argv[1])

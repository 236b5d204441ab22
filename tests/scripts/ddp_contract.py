"""Fits every strategy of ``strategies.__all__`` (tiny kwargs from tests/test_contract.py) under DDP on 2 CPU processes,
one after the other in a single launch; each rank saves each strategy's final state to OUTDIR.

Run as ``python tests/scripts/ddp_contract.py OUTDIR`` (``strategy="ddp"`` re-runs this command line for rank 1).
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch

from clfw import AccuracyMatrix
from tests.helpers import TinyStream, snapshot
from tests.test_contract import NAMES, make


def main(outdir: str) -> None:
    for name in NAMES:
        pl.seed_everything(0)
        model = make(name)
        matrix = AccuracyMatrix(plot=False)
        dm = TinyStream(n_tasks=2, batch_size=8)
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=dm.total_epochs, callbacks=[matrix],
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=f"{outdir}/{name}",  # a run per directory
        )  # fmt: skip
        trainer.fit(model, dm)
        torch.save(
            {"state_dict": snapshot(model), "rows": matrix.rows}, f"{outdir}/{name}_rank{trainer.global_rank}.pt"
        )


if __name__ == "__main__":
    main(sys.argv[1])

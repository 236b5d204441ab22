"""Fits Naive on a tiny stream with DDP on 2 CPU processes (gloo); each rank saves its final state to OUTDIR.

Run as a script (``python tests/scripts/ddp_fit.py OUTDIR``): Lightning's ``strategy="ddp"`` re-runs this command line
for the second rank, which is why the DDP tests launch it as a subprocess instead of calling it from pytest.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from typing_extensions import override

from clfw import AccuracyMatrix, Batch, ContinualEvaluation, ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.strategies import Naive
from tests.helpers import TinyStream


class SeenIndices(Plugin):
    """Records the (task, index) pairs this rank trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[int, int]] = []

    @override
    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        self.pairs += list(zip(batch.task.tolist(), batch.index.tolist(), strict=True))


def main(outdir: str) -> None:
    pl.seed_everything(0)
    dm = TinyStream(n_tasks=2, num_classes_total=6, train_per_class=20, test_per_class=7, batch_size=8)
    seen = SeenIndices()
    model = Naive(backbone=MLP(in_features=16, hidden=(16,), dropout=0.2), plugins=[seen])
    matrix = AccuracyMatrix()
    continual = ContinualEvaluation(samples_per_task=15, tasks="all", windows=[3])
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=dm.total_epochs,
        callbacks=[matrix, continual],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=outdir,
    )
    trainer.fit(model, dm)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            "rows": matrix.rows,
            "pairs": seen.pairs,
            "world": trainer.world_size,
            "curves": continual.tracker.acc,
            "last": continual.last,
        },
        f"{outdir}/rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1])

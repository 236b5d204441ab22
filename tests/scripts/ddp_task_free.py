"""ER on a task-free class-IL stream in a 2-process DDP fit: the seen classes must be the same on both ranks.

Run as ``python tests/scripts/ddp_task_free.py OUTDIR``. Each rank saves ``OUTDIR/rank<r>.pt``: at every step its seen
classes (after the batch's labels were added) and the labels its own batches held so far, and its final state.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from typing_extensions import override

import clfw.strategies
from clfw import Batch, ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.testing import snapshot
from tests.helpers import TinyStream


class SeenRecorder(Plugin):
    """Records the seen classes and this rank's own labels at each step."""

    needs_task_boundaries = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []
        self.local: list[list[int]] = []
        self._met: set[int] = set()

    @override
    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        self._met |= set(batch.y.tolist())
        self.local.append(sorted(self._met))
        self.seen.append(torch.nonzero(module.seen_mask).flatten().tolist())


def main(outdir: str) -> None:
    pl.seed_everything(0)
    recorder = SeenRecorder()
    backbone = MLP(in_features=16, hidden=(8,))
    model = clfw.strategies.ER(buffer_size=20, replay_batch_size=4, backbone=backbone, plugins=[recorder])
    stream = TinyStream(n_tasks=2, num_classes_total=8, train_per_class=6, batch_size=2, task_boundaries_visible=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=outdir,
    )  # fmt: skip
    trainer.fit(model, stream)
    result = {"seen": recorder.seen, "local": recorder.local, "steps": trainer.global_step}
    torch.save({**result, "state_dict": snapshot(model)}, f"{outdir}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])

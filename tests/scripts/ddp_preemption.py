"""Preemption under DDP: only rank 0 gets SIGUSR1 (after step 3); both ranks must agree at the next sync step (4, with
``sync_every_n_steps=2``), write one checkpoint and stop: ``python tests/scripts/ddp_preemption.py OUTDIR``."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from clfw.backbones import MLP
from clfw.preemption import PreemptedError, Preemption
from clfw.strategies import Naive
from tests.helpers import TinyStream


class SignalRankZero(pl.Callback):
    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == 3 and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGUSR1)


def main(outdir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model = Naive(backbone=MLP(in_features=16, hidden=(16,)), num_classes=4)
    preemption = Preemption(requeue=False, sync_every_n_steps=2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=outdir, callbacks=[SignalRankZero(), preemption],
    )  # fmt: skip
    try:
        trainer.fit(model, TinyStream(batch_size=4))
        stopped = None
    except PreemptedError as err:
        stopped = str(err)
    record = {"stopped": stopped, "step": trainer.global_step, "path": preemption.path}
    Path(outdir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])

"""Trains each named strategy family once on the checks' 2-task stream (48 samples a task), on 1 process with batch 16
and replay 8, or on 2 DDP processes (gloo) with batch 8 and replay 4 per rank; saves per rank what it trained on and
ended with: ``python tests/scripts/ddp_equivalence.py OUTDIR WORLD NAME...``.

``NAME``: a strategy of ``tests.test_contract``'s table (plugins such as EWC on Naive). Lightning's ``strategy="ddp"``
re-runs this command line for rank 1, so the 2-process launch is a subprocess; the 1-process run may call :func:`main`
in-process. One launch loops over every family, to keep the test budget.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from clfw.evaluation import AccuracyMatrix
from clfw.testing.checks import build_model, preferred_scenario, tiny_stream
from clfw.testing.fixtures import snapshot
from tests.test_contract import config

GLOBAL_BATCH, GLOBAL_REPLAY = 16, 8
REPLAY_ARGS = ("replay_batch_size", "sample_size")


class Trained(pl.Callback):
    """The (task, index) pairs of each training step's batch on this rank, in serving order."""

    def __init__(self) -> None:
        self.steps: list[list[tuple[int, int]]] = []

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.steps.append(list(zip(batch.task.tolist(), batch.index.tolist(), strict=True)))


def family_config(name: str, world: int) -> dict[str, Any]:
    """The contract table's config of ``name`` with the per-rank replay size of a ``world``-process run, and without
    dropout: each rank draws the masks of its own samples, so dropout makes the runs equal in distribution only."""
    cfg = copy.deepcopy(config(name))
    args = cfg["init_args"]
    backbone = args.get("backbone")
    if isinstance(backbone, dict) and "dropout" in backbone.get("init_args", {}):
        backbone["init_args"]["dropout"] = 0.0
    for key in REPLAY_ARGS:
        if key in args:
            args[key] = GLOBAL_REPLAY // world
    return cfg


def main(outdir: str, world: int, names: list[str]) -> None:
    torch.set_num_threads(1)
    for name in names:
        pl.seed_everything(0, verbose=False)
        model = build_model(family_config(name, world))
        dm = tiny_stream(preferred_scenario(type(model)))
        dm.batch_size = GLOBAL_BATCH // world
        trained, matrix = Trained(), AccuracyMatrix(plot=False)
        trainer = pl.Trainer(
            accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_epochs=dm.total_epochs,
            callbacks=[trained, matrix], logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(Path(outdir) / f"{name}_w{world}"),
        )  # fmt: skip
        trainer.fit(model, dm)
        result = {"steps": trained.steps, "state_dict": snapshot(model), "rows": matrix.rows, "world": world}
        torch.save(result, Path(outdir) / f"{name}_w{world}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])

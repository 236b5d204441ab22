"""Checkpoints across world sizes: trains each named family on the checks' 2-task stream with global batch 16 on 1 or 2
processes, for several seeds, either from the start (saving a checkpoint after step 4, in the middle of task 1) or
resumed from another world size's checkpoint; saves per rank what it trained on and ended with.

``python tests/scripts/ddp_resume_world.py OUTDIR WORLD FROM NAME...``: ``FROM`` is ``start`` or the world size whose
checkpoints (``OUTDIR/<name>_s<seed>_w<FROM>.ckpt``) to resume. Lightning's ``strategy="ddp"`` re-runs this command
line for rank 1, so a 2-process launch is a subprocess; a 1-process run may call :func:`main` in-process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from clfw import ContinualEvaluation
from clfw.evaluation import AccuracyMatrix
from clfw.testing.checks import build_model, preferred_scenario, tiny_stream
from clfw.testing.fixtures import snapshot
from tests.scripts.ddp_equivalence import GLOBAL_BATCH, Trained, family_config

SEEDS = (0, 1, 2)
SAVE_AFTER = 4  # of 6 steps (3 per task): task 1's first step is done


class SaveAt(pl.Callback):
    """Writes a checkpoint after optimizer step ``step`` (last in the callback list: after that step's evaluation)."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def main(outdir: str, world: int, source: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    out = Path(outdir)
    for name in names:
        for seed in SEEDS:
            pl.seed_everything(seed, verbose=False)
            model = build_model(family_config(name, world))
            dm = tiny_stream(preferred_scenario(type(model)))
            dm.batch_size = GLOBAL_BATCH // world
            trained, matrix = Trained(), AccuracyMatrix(plot=False)
            curves = ContinualEvaluation(samples_per_task=8, windows=[2], plot=False)
            callbacks: list[pl.Callback] = [trained, matrix, curves]
            if source == "start":
                callbacks.append(SaveAt(SAVE_AFTER, out / f"{name}_s{seed}_w{world}.ckpt"))
                ckpt, tag = None, f"{name}_s{seed}_w{world}"
            else:
                ckpt, tag = str(out / f"{name}_s{seed}_w{source}.ckpt"), f"{name}_s{seed}_w{world}_from{source}"
            trainer = pl.Trainer(
                accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_epochs=dm.total_epochs,
                callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(out / tag),
            )  # fmt: skip
            trainer.fit(model, dm, ckpt_path=ckpt)
            result = {
                "steps": trained.steps,
                "state_dict": snapshot(model),
                "rows": matrix.rows,
                "curves": curves.tracker.state_dict(),
            }
            torch.save(result, out / f"{tag}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:])

"""The launch script of :func:`clfw.testing.check_ddp`: ``python -m clfw.testing.ddp CONFIGS_JSON OUTDIR``.

Fits each model config of ``CONFIGS_JSON`` (a JSON list) on the checks' 2-task stream under Lightning's DDP on 2 CPU
processes, one after the other in this single launch, and saves each rank's final state and accuracy matrix as
``OUTDIR/<i>_rank<r>.pt``. Lightning starts rank 1 by re-running this command line (``python -m clfw.testing.ddp ...``),
which is why the models are named by importable class paths rather than passed as objects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from clfw.evaluation import AccuracyMatrix
from clfw.testing.checks import build_model, needs_validation, preferred_scenario, tiny_stream
from clfw.testing.fixtures import snapshot


def main(argv: list[str] | None = None) -> None:
    """Runs the launch (see the module docstring).

    Args:
        argv: ``[CONFIGS_JSON, OUTDIR]`` (default: the command line).
    """
    parser = argparse.ArgumentParser(prog="python -m clfw.testing.ddp", description=__doc__.splitlines()[0])
    parser.add_argument("configs", type=Path, help="JSON list of model configs (class_path, init_args)")
    parser.add_argument("outdir", type=Path, help="folder for the run directories and each rank's results")
    args = parser.parse_args(argv)
    configs = json.loads(args.configs.read_text())
    if not isinstance(configs, list):
        raise ValueError(f"{args.configs} must hold a JSON list of model configs, got {type(configs).__name__}")
    torch.set_num_threads(1)  # tiny models, one process per core (clfw.testing.checks.single_threaded)
    for i, config in enumerate(configs):
        pl.seed_everything(0, verbose=False)
        model = build_model(config)
        dm = tiny_stream(preferred_scenario(type(model)), validation=needs_validation(model))
        matrix = AccuracyMatrix(plot=False)
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=dm.total_epochs, callbacks=[matrix],
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=str(args.outdir / f"run{i}"),  # a run per directory
        )  # fmt: skip
        trainer.fit(model, dm)
        result = {"world": trainer.world_size, "state_dict": snapshot(model), "rows": matrix.rows}
        torch.save({**result, "initial": matrix.initial}, args.outdir / f"{i}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()

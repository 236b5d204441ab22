"""The ``clfw`` command: Lightning's CLI over any strategy and any stream, one ``fit`` for the whole stream.

``clfw fit --model strategies.Naive --data benchmarks.SplitMNIST`` or ``clfw fit --config configs/quickstart.yaml``.
Any importable ``ContinualModule`` / ``ContinualDataModule`` subclass works by its ``class_path``; clfw's own
strategies and benchmarks are imported here (and only here in the core) so their short names resolve too.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

import benchmarks  # noqa: F401  (registers the short names of the built-in streams)
import strategies  # noqa: F401  (registers the short names of the built-in strategies)
from clfw.callbacks import ContinualProgressBar
from clfw.datamodule import ContinualDataModule
from clfw.evaluation import AccuracyMatrix
from clfw.module import ContinualModule


class ContinualCLI(LightningCLI):
    """LightningCLI in subclass mode for strategies (``--model``) and streams (``--data``).

    - ``model.init_args.num_classes`` is linked from the datamodule, so the head covers every class of the stream;
    - ``trainer.max_epochs`` is derived from the stream (``n_tasks * epochs_per_task``): setting another value is an
      error;
    - the :class:`~clfw.AccuracyMatrix` callback is always on, configured under ``evaluation``;
    - the progress bar names the task (:class:`~clfw.callbacks.ContinualProgressBar`) unless another bar is given.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            ContinualModule,
            ContinualDataModule,
            *args,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            **kwargs,
        )

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(AccuracyMatrix, "evaluation")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        dm = self.datamodule
        if isinstance(dm, ContinualDataModule):
            if config.get("max_epochs") not in (None, dm.total_epochs):
                raise ValueError(
                    f"trainer.max_epochs={config['max_epochs']}, but the stream takes n_tasks * epochs_per_task = "
                    f"{dm.total_epochs} epochs; leave trainer.max_epochs unset (set data.epochs_per_task instead)"
                )
            config["max_epochs"] = dm.total_epochs
            config["reload_dataloaders_every_n_epochs"] = 1
        given = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, ContinualProgressBar()]
        return super()._instantiate_trainer(config, callbacks)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``clfw`` console script and ``python -m clfw``."""
    ContinualCLI(args=args)


if __name__ == "__main__":
    main()

"""The Split CIFAR-100 prompt configs' first task on synthetic data of the right shape: training images per second.

    python scripts/gpu_first_task.py [--methods l2p dualprompt coda_prompt] [--epochs N] [--tiny]

Each strategy is built from ``configs/prompt/<method>_split_cifar100.yaml`` (its values read with PyYAML, without the
CLI) with a ViT-B/16 of random weights (the same shape as the tagged weights; nothing is downloaded), and trains the
first task of a ``SplitCIFAR100`` whose files are replaced by random uint8 images of CIFAR-100's size (500 per class,
resized to 224 by the stream as in the config; crop/flip augmentation on). It prints:

- training images/s over the first task's steps after the first 5 (the config's epochs, or ``--epochs``), data path
  included (on an accelerator the batch transforms, 224 resizing among them, run on the device after the transfer);
- the model-only rate: the same training step on one batch already on the device.

``--tiny`` swaps in a small ViT and a few images, to check the script on a CPU.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytorch_lightning as pl
import torch
import yaml

import clfw.strategies
from clfw.benchmarks import SplitCIFAR100


class SyntheticCIFAR100(SplitCIFAR100):
    """SplitCIFAR100 over random uint8 images (``per_class`` training and ``per_class // 5`` test images per class)."""

    def __init__(self, per_class: int = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_class = per_class

    def load(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(0)
        out = []
        for n in (self.per_class, max(1, self.per_class // 5)):
            y = torch.arange(100).repeat_interleave(n)
            out.append((torch.randint(0, 256, (len(y), 3, 32, 32), dtype=torch.uint8, generator=g), y))
        return out[0], out[1]


class FirstTask(pl.Callback):
    """Times the training steps and stops after the first task."""

    def __init__(self, skip: int = 5) -> None:
        self.skip, self.images, self.start = skip, 0, None

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.skip:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.start = time.perf_counter()
        if self.start is not None:
            self.images += len(batch[1])

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if trainer.datamodule.is_last_epoch_of_task(trainer.current_epoch):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


def build(method: str, tiny: bool, epochs: int | None) -> tuple[Any, SyntheticCIFAR100]:
    config = yaml.safe_load(open(f"configs/prompt/{method}_split_cifar100.yaml"))
    data_args = {k: v for k, v in config["data"]["init_args"].items() if k not in ("root", "download")}
    model_args = dict(config["model"]["init_args"])
    opt = model_args.pop("optimizer")
    sched = model_args.pop("lr_scheduler", None)
    model_args.update(vit="vit_base_patch16_224", pretrained=False, checkpoint_path=None)
    if tiny:
        model_args["vit_kwargs"] = {"img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 5, "num_heads": 2}
        if method == "coda_prompt":
            model_args["pool_size"] = 10
        data_args.update(image_size=32, batch_size=16)
    if epochs:
        data_args["epochs_per_task"] = epochs
    lr = opt["init_args"]["lr"]
    model_args["optimizer"] = lambda p: torch.optim.Adam(p, lr=lr)
    if sched:
        t_max = sched["init_args"]["T_max"]
        model_args["lr_scheduler"] = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max)
    module = getattr(clfw.strategies, config["model"]["class_path"].split(".")[-1])(**model_args)
    dm = SyntheticCIFAR100(per_class=40 if tiny else 500, **data_args)
    return module, dm


def model_only(module: Any, dm: SyntheticCIFAR100, device: torch.device, steps: int = 20) -> float:
    """Images/s of training steps on one batch already on the device (no loader)."""
    module.to(device)  # the Trainer moves the model back to the CPU when fit ends
    batch = dm.stream.tasks[0].train.batch(torch.arange(dm.batch_size))
    batch = batch._replace(x=dm.train_transform()(batch.x.to(device)), y=batch.y.to(device), task=batch.task.to(device))
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    module.train()
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize() if device.type == "cuda" else None
            start = time.perf_counter()
        loss = module.training_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize() if device.type == "cuda" else None
    return steps * len(batch.y) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["l2p", "dualprompt", "coda_prompt"])
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the first task (default: the config's)")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name() if accelerator == 'gpu' else 'cpu'}, torch {torch.__version__}")
    for method in args.methods:
        pl.seed_everything(0, verbose=False)
        module, dm = build(method, args.tiny, args.epochs)
        timer = FirstTask()
        trainer = pl.Trainer(
            accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[timer], gradient_clip_val=1.0 if method != "coda_prompt" else None,
        )  # fmt: skip
        trainer.fit(module, dm)
        rate = timer.images / timer.seconds
        only = model_only(module, dm, torch.device("cuda" if accelerator == "gpu" else "cpu"))
        print(
            f"{method}: first task, {dm.epochs_per_task} epochs x {len(dm.stream.tasks[0].train)} images, batch "
            f"{dm.batch_size}: {rate:.0f} images/s with the loader; model only {only:.0f} images/s",
            flush=True,
        )


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    main()

"""Step time of the prompt strategies on CPU (prints figures; not a test).

    python scripts/bench_prompts.py [--vit-b]

Median time per training step (forward, backward, optimizer step; ``on_train_batch_start`` to ``on_train_batch_end``)
of L2P, DualPrompt, CODA-Prompt and the two ViT baselines, over the steps of task 1:

- on the evidence setting (``configs/prompt_digits``: the 28x28 ViT of width 64 and depth 4, batch 32, random
  weights here since timing does not depend on them);
- with ``--vit-b``, on ViT-B/16 at 224x224 (random weights, batch 8, 2 tasks of 16 random images per class), the
  shape of the Split CIFAR-100 configs; slow on CPU, which is the point of the comparison.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytorch_lightning as pl
import torch
from bench_strategies import RandomImages, timed_fit

import clfw.strategies
from clfw import ContinualDataModule
from clfw.benchmarks import SplitMNIST
from clfw.prompt import create_vit

DIGITS_VIT = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=4, num_heads=4)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "L2P": ("L2P", {}),
    "DualPrompt": ("DualPrompt", {"e_pool_size": 3, "e_layers": [2, 3]}),
    "CODA-Prompt": ("CODAPrompt", {"pool_size": 30, "layers": [0, 1, 2, 3]}),
    "linear probe": ("ViTBaseline", {"finetune": False}),
    "fine-tuning": ("ViTBaseline", {"finetune": True}),
}


def step_time(cls: str, kwargs: dict[str, Any], vit: torch.nn.Module, dm: ContinualDataModule) -> float:
    pl.seed_everything(0, verbose=False)
    return timed_fit(getattr(clfw.strategies, cls)(vit=vit, **kwargs), dm)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit-b", action="store_true", help="also time ViT-B/16 at 224x224 (slow)")
    args = parser.parse_args()
    print(f"step time on CPU, {torch.get_num_threads()} threads (median over task 1's steps)")
    settings = [("digits ViT (28x28, width 64, depth 4), batch 32", DIGITS_VIT, False)]
    if args.vit_b:
        settings.append(("ViT-B/16 at 224x224, batch 8", {}, True))
    for title, vit_kwargs, vit_b in settings:
        print(f"  {title}")
        for label, (cls, kwargs) in METHODS.items():
            torch.manual_seed(0)
            if not vit_b:
                vit = create_vit("vit_tiny_patch16_224", **vit_kwargs)
                dm: ContinualDataModule = SplitMNIST(classes=[4, 5, 6, 7, 8, 9], n_tasks=3, batch_size=32)
            else:
                vit = create_vit("vit_base_patch16_224")
                dm = RandomImages(shape=(3, 224, 224), per_class=16, batch_size=8)
                kwargs = {k: v for k, v in kwargs.items() if k == "finetune"}  # the papers' defaults otherwise
            print(f"    {label:<14}{1e3 * step_time(cls, kwargs, vit, dm):9.1f} ms", flush=True)


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    main()

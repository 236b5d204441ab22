"""The prompt methods' Split CIFAR-100 and Split ImageNet-R configs parse and run a few steps on small files the test
writes, with a tiny random ViT in place of ViT-B/16 (the real runs need the data sets, the weights and a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clfw.benchmarks import SplitImageNetR
from clfw.cli import main
from tests.helpers import ROOT
from tests.test_cifar import write_cifar

TINY_VIT = {"img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 5, "num_heads": 2}


def write_image_folder(root: Path, classes: int = 4, per_class: int = 5) -> None:
    g = np.random.default_rng(0)
    for c in range(classes):
        (root / f"n0{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = g.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"n0{c}" / f"img{i}.png")


def test_image_folder_stream_splits_all_images_at_random_and_deals_classes_in_sorted_order(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imagenet-r")
    dm = SplitImageNetR(root=str(tmp_path / "imagenet-r"), image_size=32, n_tasks=2)
    stream = dm.stream
    assert [t.classes for t in stream.tasks] == [(0, 1), (2, 3)] and stream.num_classes == 4
    sizes = [len(t.train) + len(t.test) for t in stream.tasks]
    assert sizes == [10, 10] and sum(len(t.test) for t in stream.tasks) == 4, "20% of the 20 images"
    assert stream.tasks[0].train.x.shape[1:] == (3, 32, 32) and stream.tasks[0].train.x.dtype == torch.uint8
    with pytest.raises(ValueError, match="does not exist"):
        SplitImageNetR(root=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "config",
    [f"{m}_{d}" for m in ("l2p", "dualprompt", "coda_prompt") for d in ("split_cifar100", "imagenet_r")],
)
def test_prompt_configs_parse_and_run_a_few_steps(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if config.endswith("cifar100"):
        write_cifar(tmp_path / "data", "cifar100", per_class=1)
        root = tmp_path / "data"
    else:
        root = tmp_path / "imagenet-r"
        write_image_folder(root)
    cmd = [
        "fit", "--config", str(ROOT / "configs" / "prompt" / f"{config}.yaml"),
        f"--data.init_args.root={root}", "--data.init_args.image_size=32", "--data.init_args.n_tasks=2",
        "--data.init_args.epochs_per_task=1", "--data.init_args.batch_size=16",
        "--model.init_args.vit=vit_tiny_patch16_224", "--model.init_args.pretrained=false",
        f"--model.init_args.vit_kwargs={json.dumps(TINY_VIT)}", "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    if config.startswith("coda"):
        cmd.append("--model.init_args.pool_size=4")
    monkeypatch.chdir(tmp_path)
    main(cmd)  # in-process: a subprocess would spend most of the test importing torch
    out = capsys.readouterr()
    assert "Summary:" in out.out + out.err

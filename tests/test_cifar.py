"""Split CIFAR-10/100 from python-format files the test writes; the crop/flip augmentation; the refresh configs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from clfw import RandomCropFlip
from clfw.benchmarks import SplitCIFAR10, SplitCIFAR100
from clfw.cli import main
from tests.helpers import ROOT, write_cifar


def test_split_cifar10_reads_the_python_format(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", per_class=2)
    stream = SplitCIFAR10(root=str(tmp_path)).stream
    assert stream.n_tasks == 5 and stream.input_shape == (3, 32, 32)
    assert stream.tasks[1].classes == (2, 3) and len(stream.tasks[1].train) == 5 * 2 * 2
    assert stream.tasks[0].train.x.dtype == torch.uint8 and len(stream.tasks[0].test) == 2 * 2
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="bytes")
    first = torch.from_numpy(np.asarray(raw[b"data"][0], dtype=np.uint8).reshape(3, 32, 32))
    assert any(torch.equal(first, x) for x in stream.tasks[0].train.x), "CHW images, unchanged"


def test_split_cifar100_has_ten_tasks_of_fine_labels(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar100", per_class=1)
    stream = SplitCIFAR100(root=str(tmp_path), scenario="task").stream
    assert stream.n_tasks == 10 and stream.num_classes == 100 and stream.tasks[9].classes == tuple(range(90, 100))


def test_missing_files_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="download=True"):
        SplitCIFAR10(root=str(tmp_path)).stream  # noqa: B018


def test_random_crop_flip_is_a_padded_crop_or_its_mirror() -> None:
    x = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = RandomCropFlip(padding=2)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for k in range(len(x)):
        crops = [padded[k, :, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[k], c) or torch.equal(out[k], c.flip(-1)) for c in crops)
    assert not torch.equal(out, x), "samples are cropped at random"


@pytest.mark.parametrize("config", ["derpp_refresh_split_cifar10", "derpp_refresh_split_cifar100"])
def test_refresh_configs_parse_and_run_a_few_steps(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "cifar10" if config.endswith("cifar10") else "cifar100"
    write_cifar(tmp_path / "data", name, per_class=1)
    cmd = [
        "fit", "--config", str(ROOT / "configs" / "cifar" / f"{config}.yaml"),
        f"--data.init_args.root={tmp_path / 'data'}", "--data.init_args.epochs_per_task=1",
        "--data.init_args.n_tasks=2", "--data.init_args.classes_per_task=null", "--data.init_args.class_order=null",
        "--model.init_args.backbone.init_args.nf=4", "--model.init_args.buffer_size=8",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    main(cmd)  # in-process: a subprocess would spend most of the test importing torch
    out = capsys.readouterr()
    assert "Summary:" in out.out + out.err

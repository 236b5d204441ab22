"""DomainStream on image folders and torchvision-style data sets the test writes: one task per domain, classes
matched by name, layouts checked before any image is decoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from clfw.benchmarks import DomainStream

CLASSES = ("cat", "dog", "fox")


def write_folder(root: Path, classes: tuple[str, ...] = CLASSES, per_class: int = 5, shade: int = 0) -> str:
    """``root/<class>/<i>.png``: 10 x 10 images, each class its own colour, brighter by ``shade`` per domain."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixel = np.array([40 * c + shade, 20 * i, 200 - shade], dtype=np.uint8)
            Image.fromarray(np.tile(pixel, (10, 10, 1))).save(root / name / f"{i}.png")
    return str(root)


def fake(offset: int, classes: list[str] | None = None) -> dict[str, Any]:
    return {
        "dataset": "torchvision.datasets.FakeData",
        "dataset_args": {"image_size": [3, 12, 12], "num_classes": 3},
        "train_args": {"size": 9, "random_offset": offset},
        "test_args": {"size": 4, "random_offset": offset + 100},
        "classes": classes if classes is not None else list(CLASSES),
    }


def test_one_task_per_domain_from_folders_split_folders_and_a_dataset(tmp_path: Path) -> None:
    a = write_folder(tmp_path / "a")
    b = tmp_path / "b"
    write_folder(b / "train", shade=30)
    write_folder(b / "test", per_class=2, shade=30)
    dm = DomainStream(domains=[a, str(b), fake(0)], image_size=8, test_fraction=0.4, batch_size=4)
    assert (dm.n_tasks, dm.num_classes, dm.class_names(0)) == (3, 3, list(CLASSES))
    stream = dm.stream
    assert stream.scenario == "domain" and stream.input_shape == (3, 8, 8)
    assert [t.classes for t in stream.tasks] == [(0, 1, 2)] * 3
    assert [(len(t.train), len(t.test)) for t in stream.tasks] == [(9, 6), (15, 6), (9, 4)]
    # folder labels follow the sorted class names; each image's colour says its class and domain
    for task, shade in ((stream.tasks[0], 0), (stream.tasks[1], 30)):
        for split in (task.train, task.test):
            assert split.x.dtype == torch.uint8
            assert split.x[:, 0, 0, 0].tolist() == [40 * c + shade for c in split.y.tolist()]
            assert split.x[:, 2, 0, 0].tolist() == [200 - shade] * len(split)
    # a data set's items are (PIL image, label); the data sets are released after the build
    assert dm._datasets == {}
    from torchvision.datasets import FakeData

    labels = [FakeData(9, (3, 12, 12), 3, random_offset=0)[k][1] for k in range(9)]
    assert stream.tasks[2].train.y.tolist() == labels


def test_classes_are_matched_by_name_across_domains(tmp_path: Path) -> None:
    a = write_folder(tmp_path / "a")
    write_folder(tmp_path / "b", classes=("fox", "cat", "dog"))  # sorted the same: labels agree
    reordered = fake(0, ["dog", "fox", "cat"])  # label 0 of this data set is "dog", the stream's label 1
    dm = DomainStream(domains=[a, str(tmp_path / "b"), reordered], image_size=8)
    from torchvision.datasets import FakeData

    labels = [FakeData(9, (3, 12, 12), 3, random_offset=0)[k][1] for k in range(9)]
    assert dm.stream.tasks[2].train.y.tolist() == [[1, 2, 0][v] for v in labels]


def test_bad_domains_are_refused_naming_the_layout_or_the_classes(tmp_path: Path) -> None:
    a = write_folder(tmp_path / "a")
    write_folder(tmp_path / "b", classes=("cat", "dog", "owl"))
    with pytest.raises(ValueError, match=r"domains\[1\] \(.*b\) does not have domain 0's classes: it lacks \['fox'\] "):
        DomainStream(domains=[a, str(tmp_path / "b")])
    with pytest.raises(ValueError, match=r"does not exist \(expected an image folder: root/<class>/<image>, or"):
        DomainStream(domains=[a, str(tmp_path / "missing")])
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(ValueError, match="has no class subfolders"):
        DomainStream(domains=[str(tmp_path / "flat")])
    with pytest.raises(ValueError, match=r"lacks \['fox'\] and adds \['owl'\]"):
        DomainStream(domains=[a, fake(0, ["cat", "dog", "owl"])], image_size=8).stream  # noqa: B018
    with pytest.raises(ValueError, match="only scenario='domain'"):
        DomainStream(domains=[a], scenario="class")


def test_a_domain_stream_of_folders_and_a_dataset_trains_from_the_command_line(tmp_path: Path) -> None:
    import json

    import yaml

    from clfw.cli import main

    domains = json.dumps([write_folder(tmp_path / "a"), fake(0), write_folder(tmp_path / "b", shade=30)])
    run = tmp_path / "run"
    args = ["--model", "Naive", "--data", "DomainStream", f"--data.domains={domains}", "--data.image_size=8"]
    args += ["--data.batch_size=4", "--trainer.accelerator=cpu", "--trainer.logger=false"]
    args += ["--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false"]
    main(["fit", *args, f"--trainer.default_root_dir={run}"])
    metrics = yaml.safe_load((run / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 3 and len(metrics["accuracy_matrix"]) == 3

"""``clfw.benchmarks.AvalancheStream``: Avalanche benchmarks made with ``nc_benchmark`` / ``ni_benchmark`` from
in-memory tensors, checked against Avalanche's own view (classes, sample counts, task labels), and trained end to end
from the CLI. Each input is filled with its sample's index in the source data, so every converted sample can be traced
back to the sample it came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

pytest.importorskip("avalanche")

from avalanche.benchmarks import nc_benchmark, ni_benchmark
from torch.utils.data import TensorDataset

from clfw.benchmarks import AvalancheStream
from clfw.cli import main

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 6, 2
ORDER = [2, 0, 3, 1]


def tiny_data(dtype: torch.dtype = torch.float32) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Train and test sets of shape ``[N, 1, 2, 2]``; sample ``k`` is filled with ``k`` (test ids follow train ids)."""
    n_train, n_test = CLASSES * TRAIN_PER_CLASS, CLASSES * TEST_PER_CLASS
    ids = torch.arange(n_train + n_test)
    x = ids.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(dtype).contiguous()
    y = torch.cat([torch.arange(n_train) % CLASSES, torch.arange(n_test) % CLASSES])
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


class Shift:
    """A training "augmentation" that moves every input off its id: the adapter must read the eval transforms."""

    def __call__(self, x: Tensor) -> Tensor:
        return x + 1000


def tiny_nc(task_labels: bool = False) -> Any:
    """Class-incremental (task labels off) or task-incremental (on): 2 experiences of 2 classes, order ``ORDER``."""
    train, test = tiny_data()
    return nc_benchmark(
        TensorDataset(*train),
        TensorDataset(*test),
        2,
        task_labels,
        shuffle=False,
        fixed_class_order=ORDER,
        train_transform=Shift(),
    )


def tiny_ni() -> Any:
    """Domain-incremental (new instances): 2 experiences over every class, uint8 inputs."""
    train, test = tiny_data(torch.uint8)
    return ni_benchmark(TensorDataset(*train), TensorDataset(*test), 2, seed=3, balance_experiences=True)


def ids(x: Tensor) -> list[int]:
    """The source indices of converted inputs."""
    return x.flatten(1)[:, 0].long().tolist()


def check_against_avalanche(dm: AvalancheStream, bm: Any) -> None:
    """Every task's classes, sizes, task labels and samples agree with Avalanche's experiences."""
    (_, train_y), (_, test_y) = tiny_data()
    source_y = torch.cat([train_y, test_y])
    stream = dm.stream
    assert stream.n_tasks == len(bm.train_stream) and dm.n_tasks == len(bm.train_stream)
    assert stream.num_classes == dm.num_classes == 1 + max(max(e.classes_in_this_experience) for e in bm.train_stream)
    shared_test = len(bm.test_stream) == 1
    for t, (task, exp) in enumerate(zip(stream.tasks, bm.train_stream, strict=True)):
        assert task.id == t and list(task.classes) == sorted(exp.classes_in_this_experience)
        assert len(task.train) == len(exp.dataset)
        # each converted sample is a distinct source sample with its own label
        assert len(set(ids(task.train.x))) == len(task.train)
        assert task.train.y.tolist() == source_y[ids(task.train.x)].tolist()
        assert torch.equal(task.train.task, torch.full((len(task.train),), t))
        assert task.train.index.tolist() == list(range(len(task.train)))
        test_exp = bm.test_stream[0 if shared_test else t]
        assert len(task.test) == len(test_exp.dataset)
        assert task.test.y.tolist() == source_y[ids(task.test.x)].tolist()
        assert set(task.test.y.tolist()) == set(test_exp.classes_in_this_experience)
        assert task.val is None


def test_class_incremental_nc_benchmark() -> None:
    bm = tiny_nc(task_labels=False)
    dm = AvalancheStream(benchmark=lambda: bm)
    check_against_avalanche(dm, bm)
    assert dm.scenario == "class" and dm.stream.scenario == "class"
    assert [exp.task_labels for exp in bm.train_stream] == [[0], [0]]
    assert [list(t.classes) for t in dm.stream.tasks] == [sorted(ORDER[:2]), sorted(ORDER[2:])]
    assert dm.class_order == list(bm.classes_order) == ORDER  # recorded in metrics.json
    train_y = tiny_data()[0][1]
    for task in dm.stream.tasks:  # every training sample of the task's classes, none other
        expected = torch.nonzero(torch.isin(train_y, torch.tensor(task.classes))).flatten().tolist()
        assert sorted(ids(task.train.x)) == expected
    assert dm.eval_transform() is None and dm.stream.tasks[0].train.x.dtype == torch.float32
    assert bm.train_stream[0].dataset[0][0].min() >= 1000  # what Avalanche trains on: not what clfw stores


def test_task_labels_make_task_incremental() -> None:
    bm = tiny_nc(task_labels=True)
    dm = AvalancheStream(benchmark=lambda: bm)
    check_against_avalanche(dm, bm)
    assert dm.scenario == "task"
    assert [exp.task_labels for exp in bm.train_stream] == [[t.id] for t in dm.stream.tasks]
    assert [exp.task_labels for exp in bm.test_stream] == [[t.id] for t in dm.stream.tasks]
    # the same benchmark learned class-incrementally when asked; task-free only then
    assert AvalancheStream(benchmark=lambda: bm, scenario="class").stream.scenario == "class"
    with pytest.raises(ValueError, match="task_boundaries_visible=False hides task ids"):
        AvalancheStream(benchmark=lambda: bm, task_boundaries_visible=False).stream  # noqa: B018


def test_new_instances_are_domain_incremental() -> None:
    bm = tiny_ni()
    dm = AvalancheStream(benchmark=lambda: bm, val_fraction=0.5)
    assert dm.scenario == "domain" and len(bm.test_stream) == 1  # the whole test set, shared
    train_y = tiny_data()[0][1]
    seen: list[int] = []
    for task, exp in zip(dm.stream.tasks, bm.train_stream, strict=True):
        assert list(task.classes) == sorted(exp.classes_in_this_experience) == list(range(CLASSES))
        assert task.val is not None and len(task.train) + len(task.val) == len(exp.dataset)
        both = ids(task.train.x) + ids(task.val.x)
        assert sorted(train_y[both].tolist()) == sorted(task.train.y.tolist() + task.val.y.tolist())
        seen += both
    assert sorted(seen) == list(range(len(train_y)))  # the experiences partition the training set
    assert dm.stream.tasks[0].train.x.dtype == torch.uint8
    x = dm.stream.tasks[0].test.x[:3]
    assert torch.allclose(dm.eval_transform()(x), x.float() / 255)
    assert dm.class_order is None  # classes recur: no order of classes dealt to tasks
    in_workers = AvalancheStream(benchmark=tiny_ni, num_workers=2).converted  # read by 2 loader workers: the same
    for ours, theirs in zip(dm.converted.train + dm.converted.test, in_workers.train + in_workers.test, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    shared_test = AvalancheStream(benchmark=tiny_ni, scenario="task")
    with pytest.raises(ValueError, match="scenario 'task' needs one test experience per task"):
        shared_test.stream  # noqa: B018


def test_bad_benchmark_arguments() -> None:
    with pytest.raises(ValueError, match="no attribute 'NoSuchBenchmark'"):
        AvalancheStream(benchmark="avalanche.benchmarks.classic.NoSuchBenchmark")
    with pytest.raises(ValueError, match="cannot be imported"):
        AvalancheStream(benchmark="no_such_package.Bench")
    with pytest.raises(ValueError, match=r"benchmark_args .*'colour'.* do not fit"):
        AvalancheStream(benchmark="tests.test_avalanche.tiny_nc", benchmark_args={"colour": 1}).num_classes  # noqa: B018
    with pytest.raises(ValueError, match="num_classes=2, but the benchmark holds class id 3"):
        AvalancheStream(benchmark="tests.test_avalanche.tiny_nc", num_classes=2).stream  # noqa: B018


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")
def test_missing_avalanche_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "avalanche", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model=Naive", "--data=AvalancheStream", "--data.benchmark=tests.test_avalanche.tiny_nc"])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("Seed set to")]
    assert lines == [
        "clfw: error: data (clfw.benchmarks.avalanche.AvalancheStream): avalanche is not installed; install it with: "
        'pip install "clfw[avalanche]"'
    ]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")
def test_clfw_trains_an_avalanche_benchmark_from_the_cli(tmp_path: Path) -> None:
    main(
        [
            "fit",
            "--data=clfw.benchmarks.AvalancheStream",
            "--data.benchmark=tests.test_avalanche.tiny_nc",
            '--data.benchmark_args={"task_labels": true}',
            "--data.batch_size=4",
            "--data.epochs_per_task=2",
            "--model=clfw.strategies.ER",
            "--model.buffer_size=8",
            "--model.replay_batch_size=4",
            "--model.backbone=clfw.backbones.MLP",
            "--model.backbone.in_features=4",
            "--model.backbone.hidden=[8]",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    bm = tiny_nc(task_labels=True)
    assert metrics["scenario"] == "task" and metrics["num_classes"] == CLASSES
    assert metrics["task_classes"] == [sorted(e.classes_in_this_experience) for e in bm.train_stream]
    assert metrics["tasks_completed"] == 2 and len(metrics["accuracy_matrix"]) == 2
    assert all(len(row) == 2 for row in metrics["accuracy_matrix"])

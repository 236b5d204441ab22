"""Stream construction: disjoint classes, sizes, reproducible seeds, the torchvision path, and bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from clfw import Stream, Task, TaskData
from clfw.benchmarks import PermutedMNIST, RotatedMNIST, SplitMNIST
from clfw.loaders import EvalLoader, TaskLoader, shard


def test_split_mnist_offline_tasks_are_disjoint_and_sized() -> None:
    stream = SplitMNIST(n_tasks=5).stream
    assert stream.n_tasks == 5 and stream.scenario == "class" and stream.num_classes == 10
    assert [t.classes for t in stream.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for task in stream.tasks:
        # 500 real digits per class, 400 train / 100 test per class
        assert len(task.train) == 800 and len(task.test) == 200
        assert set(task.train.y.tolist()) == set(task.classes) == set(task.test.y.tolist())
        assert task.train.x.dtype == torch.uint8 and task.train.x.shape[1:] == (1, 28, 28)
        assert (task.train.task == task.id).all() and torch.equal(task.train.index, torch.arange(800))
    # train and test images of the offline source do not overlap
    train = torch.cat([t.train.x.flatten(1) for t in stream.tasks])
    test = torch.cat([t.test.x.flatten(1) for t in stream.tasks])
    common = set(map(bytes, train.numpy())) & set(map(bytes, test.numpy()))
    assert len(common) <= 2  # MNIST holds a handful of exact duplicate images


def test_split_is_reproducible_and_seed_dependent() -> None:
    a, b, c = SplitMNIST(seed=1).stream, SplitMNIST(seed=1).stream, SplitMNIST(seed=2).stream
    assert torch.equal(a.tasks[0].train.x, b.tasks[0].train.x)
    assert not torch.equal(a.tasks[0].train.x, c.tasks[0].train.x)


def test_class_order_and_uneven_split() -> None:
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    stream = SplitMNIST(n_tasks=None, class_order=order, classes_per_task=[5, 1, 1, 1, 1, 1]).stream
    assert [t.classes for t in stream.tasks] == [(3, 1, 4, 0, 5), (9,), (2,), (6,), (8,), (7,)]
    assert len(stream.tasks[0].train) == 2000


def test_a_subset_of_digits_forms_the_stream_with_the_full_head() -> None:
    stream = SplitMNIST(n_tasks=3, classes=[4, 5, 6, 7, 8, 9]).stream
    assert [t.classes for t in stream.tasks] == [(4, 5), (6, 7), (8, 9)] and stream.num_classes == 10
    assert set(stream.tasks[0].train.y.tolist()) == {4, 5} and len(stream.tasks[0].train) == 800
    with pytest.raises(ValueError, match="distinct digits"):
        SplitMNIST(classes=[1, 1, 2])
    with pytest.raises(ValueError, match="permutation"):
        SplitMNIST(n_tasks=1, classes=[4, 5], class_order=[4, 6])


def test_validation_split_is_stratified_and_disjoint() -> None:
    task = SplitMNIST(val_fraction=0.1).stream.tasks[0]
    assert len(task.val) == 80 and len(task.train) == 720
    assert torch.bincount(task.val.y).tolist()[:2] == [40, 40]
    assert not set(map(bytes, task.val.x.flatten(1).numpy())) & set(map(bytes, task.train.x.flatten(1).numpy()))


def test_permuted_mnist() -> None:
    dm = PermutedMNIST(n_tasks=3, seed=0)
    stream = dm.stream
    assert stream.scenario == "domain" and all(t.classes == tuple(range(10)) for t in stream.tasks)
    perms = dm.permutations()
    assert torch.equal(perms[0], torch.arange(784)) and not torch.equal(perms[1], perms[2])
    base = stream.tasks[0].train
    for t, task in enumerate(stream.tasks):  # same images and labels, pixels permuted
        assert torch.equal(task.train.y, base.y)
        assert torch.equal(task.train.x.flatten(1), base.x.flatten(1)[:, perms[t]])


def test_rotated_mnist() -> None:
    dm = RotatedMNIST(n_tasks=4)
    assert dm.angles == [0.0, 45.0, 90.0, 135.0]
    stream = dm.stream
    t0, t2 = stream.tasks[0].test, stream.tasks[2].test
    assert torch.equal(t0.y, t2.y)
    # a 90 degree rotation of a square image is exact: counter-clockwise = rot90 over (H, W)
    assert torch.equal(t2.x, torch.rot90(t0.x, 1, dims=(2, 3)))


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, len(dims)))
        f.write(struct.pack(">" + "I" * len(dims), *dims))
        f.write(array.astype(np.uint8).tobytes())


def test_torchvision_source_reads_mnist_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    stream = SplitMNIST(source="torchvision", root=str(tmp_path), n_tasks=2).stream
    assert [len(t.train) for t in stream.tasks] == [30, 30] and [len(t.test) for t in stream.tasks] == [10, 10]
    assert stream.tasks[1].classes == (5, 6, 7, 8, 9)


def test_torchvision_source_missing_files_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="download=True"):
        SplitMNIST(source="torchvision", root=str(tmp_path)).stream  # noqa: B018


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]}, r"not a permutation.*repeats \[8\]; misses \[9\]"),
        ({"class_order": [0, 1, 2]}, "not a permutation"),
        ({"n_tasks": 3}, "n_tasks=3 does not divide the 10 classes"),
        ({"n_tasks": None, "classes_per_task": [5, 4]}, r"must be positive and sum to the 10 classes"),
        ({"scenario": "domain"}, "use PermutedMNIST or RotatedMNIST"),
        ({"scenario": "online"}, "scenario must be one of"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"epochs_per_task": 0}, "epochs_per_task must be positive"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"source": "internet"}, "source must be"),
    ],
)
def test_bad_stream_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitMNIST(**kwargs)


def test_task_without_samples_is_refused() -> None:
    x, y = torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1])
    full, empty = TaskData.for_task(x, y, 0), TaskData.for_task(x[:0], y[:0], 1)
    tasks = [Task(0, (0,), full, full), Task(1, (1,), empty, full)]
    with pytest.raises(ValueError, match=r"task 1 has no train samples \(classes \[1\]\)"):
        Stream(tasks, "class", 2, (1, 2, 2))


def test_task_loader_resumes_mid_epoch_and_shards() -> None:
    x = torch.arange(10).view(10, 1)
    data = TaskData.for_task(x, torch.zeros(10), 0)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    full = [b.x.flatten().tolist() for b in TaskLoader(data, order, 3)]
    loader = TaskLoader(data, order, 3, epoch=4)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 4, "served": 2}
    resumed = TaskLoader(data, order, 3, epoch=4)
    resumed.load_state_dict(state)
    assert [b.x.flatten().tolist() for b in resumed] == full[2:]
    with pytest.raises(ValueError, match="epoch 4"):
        TaskLoader(data, order, 3, epoch=5).load_state_dict(state)
    # training: every rank takes the same number of steps, and the ranks' batches of a step, in rank order, are the
    # global batch in serving order (nothing padded when the last global batch has at least one sample per rank)
    shards = [[b.x.flatten().tolist() for b in TaskLoader(data, order, 2, rank=r, world_size=3)] for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]
    assert [v for step in zip(*shards, strict=True) for batch in step for v in batch] == order.tolist()
    # evaluation shards partition exactly
    ev = [torch.cat([b.x for b in EvalLoader(data, 4, rank=r, world_size=3)]).flatten() for r in range(3)]
    assert sorted(torch.cat(ev).tolist()) == list(range(10))
    assert shard(torch.arange(7), 2, 3, pad=False).tolist() == [2, 5]


def test_task_loader_with_workers_matches_main_process() -> None:
    data = TaskData.for_task(torch.arange(20).view(20, 1), torch.zeros(20), 0)
    order = torch.randperm(20)
    a = [b.x.flatten().tolist() for b in TaskLoader(data, order, 6)]
    b = [b.x.flatten().tolist() for b in TaskLoader(data, order, 6, num_workers=1)]
    assert a == b


def test_on_an_accelerator_the_training_transform_runs_after_the_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an accelerator the loader yields the stored ``uint8`` inputs and ``on_after_batch_transfer`` transforms
    them on the device; training is then the same as on the CPU path. Checked here by declaring the CPU an
    accelerator (``tests/scripts/accelerator_smoke.py`` runs the real thing on a GPU)."""
    from clfw import Batch
    from clfw.backbones import MLP
    from clfw.datamodule import ContinualDataModule
    from clfw.strategies import Naive
    from tests.helpers import TinyStream, assert_same_state, fit, snapshot

    transfer = ContinualDataModule.on_after_batch_transfer

    def run(on_device: bool) -> tuple[dict, set, set]:
        arrived, trained = set(), set()

        def spy(self, batch, dataloader_idx):  # what the loader delivered, then what the module gets
            out = transfer(self, batch, dataloader_idx)
            if self.trainer.training:
                arrived.add(Batch(*batch).x.dtype)
                trained.add(Batch(*out).x.dtype)
            return out

        monkeypatch.setattr(ContinualDataModule, "_transform_on_device", lambda self: on_device)
        monkeypatch.setattr(ContinualDataModule, "on_after_batch_transfer", spy)
        torch.manual_seed(0)
        module = Naive(backbone=MLP(in_features=16, hidden=(8,)))
        fit(module, TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2))
        return snapshot(module), arrived, trained

    on_cpu, arrived_cpu, trained_cpu = run(False)
    on_device, arrived_device, trained_device = run(True)
    assert arrived_cpu == trained_cpu == {torch.float32}, "the CPU loader normalises"
    assert arrived_device == {torch.uint8} and trained_device == {torch.float32}, "raw in, normalised on the device"
    assert_same_state(on_cpu, on_device, "device-side transform")

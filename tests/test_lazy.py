"""The lazy path (images decoded from disk by the loader's workers) serves exactly what the in-memory path serves.

An image folder stream on small PNG and JPEG files written here, with crop/flip augmentation, read both ways
(``in_memory`` true and false): every training batch of every epoch (worker counts 0 and 2, a resume mid-epoch,
Cumulative's "seen" data), every evaluation batch, each rank's shard under a world of 2, the samples replay memories
store, and a whole run with replay and dropout (resumed mid-task from the other path) are compared bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

import clfw.strategies
from clfw import Batch
from clfw.backbones import MLP
from clfw.benchmarks import DomainStream, ImageFolderStream, SplitCUB200, SplitTinyImageNet
from clfw.data import TaskData, domain_incremental_tasks, take
from clfw.datamodule import ContinualDataModule
from clfw.lazy import FileInputs
from clfw.loaders import TaskLoader
from tests.helpers import Interrupt, assert_same_state, fit, snapshot
from tests.test_domain_stream import fake, write_folder
from tests.test_stream_catalogue import write_cub, write_tiny_imagenet

SIZE = 16  # stored image side: 16 x 16 x 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes of 7 images of varied sizes (PNG and JPEG), so decoding resizes and crops."""
    root = tmp_path_factory.mktemp("images")
    g = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir()
        for i in range(7):
            h, w = int(g.integers(18, 40)), int(g.integers(18, 40))
            image = Image.fromarray(g.integers(0, 255, (h, w, 3), dtype=np.uint8))
            image.save(root / f"class{c}" / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    return root


def stream(root: Path, **kwargs: Any) -> ImageFolderStream:
    """2 tasks of 2 classes, 2 epochs each, batches of 4, crop/flip augmentation; 21 training and 7 test images."""
    args: dict[str, Any] = {"root": str(root), "image_size": SIZE, "n_tasks": 2, "batch_size": 4}
    args.update(eval_batch_size=3, epochs_per_task=2, test_fraction=0.25, normalize=True)
    return ImageFolderStream(**{**args, **kwargs})


def train_loader(
    dm: ContinualDataModule, epoch: int, rank: int = 0, world: int = 1, mode: str = "current"
) -> TaskLoader:
    """The training loader the datamodule makes for ``epoch``, as rank ``rank`` of ``world`` (a stand-in Trainer)."""
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        current_epoch=epoch,
        global_rank=rank,
        world_size=world,
        lightning_module=SimpleNamespace(training_data=mode),
        accelerator=pl.accelerators.CPUAccelerator(),
    )
    return dm.train_dataloader()


def served(loader: TaskLoader | Any) -> list[Batch]:
    """One pass, checking that it leaves the global CPU generator alone."""
    before = torch.get_rng_state()
    out = list(loader)
    assert torch.equal(torch.get_rng_state(), before), "a pass must not draw from the global generator"
    return out


def assert_same_batches(a: list[Batch], b: list[Batch], label: str) -> None:
    assert len(a) == len(b) > 0, label
    for k, (p, q) in enumerate(zip(a, b, strict=True)):
        for name, u, v in zip(Batch._fields, p, q, strict=True):
            assert u.dtype == v.dtype and torch.equal(u, v), f"{label}: batch {k}, field {name}"


def test_lazy_batches_equal_in_memory_batches(folder: Path) -> None:
    memory, lazy0, lazy2 = (
        stream(folder),
        stream(folder, in_memory=False),
        stream(folder, in_memory=False, num_workers=2),
    )
    assert isinstance(lazy0.stream.tasks[0].train.x, FileInputs) and isinstance(
        memory.stream.tasks[0].train.x, torch.Tensor
    )
    for t in range(2):
        assert torch.equal(lazy0.stream.tasks[t].train.y, memory.stream.tasks[t].train.y), "same split"
    pools = []
    try:
        for epoch in range(4):  # task 0: epochs 0-1, task 1: epochs 2-3
            reference = served(train_loader(memory, epoch))
            assert_same_batches(served(train_loader(lazy0, epoch)), reference, f"epoch {epoch}, main process")
            loader = train_loader(lazy2, epoch)
            assert loader.pool is not None
            pools.append(loader.pool)
            assert_same_batches(served(loader), reference, f"epoch {epoch}, 2 persistent workers")
            # resumed mid-epoch, in a pool whose previous pass was abandoned after one batch
            next(iter(train_loader(lazy2, epoch)))
            resumed = train_loader(lazy2, epoch)
            resumed.load_state_dict({"epoch": epoch, "served": 2})
            assert_same_batches(served(resumed), reference[2:], f"epoch {epoch}, resumed after 2 batches")
            if epoch == 1:
                task0_workers = list(loader.pool.loader._iterator._workers)
        assert pools[0] is pools[1] and pools[2] is pools[3] and pools[1] is not pools[2], "workers kept per task"
        assert len(task0_workers) == 2 and not any(w.is_alive() for w in task0_workers), "task 0's workers stopped"
        assert all(w.is_alive() for w in pools[2].loader._iterator._workers)
        # Cumulative's data (tasks 0..1 concatenated), and the evaluation loaders of every split
        assert_same_batches(
            served(train_loader(lazy2, 3, mode="seen")), served(train_loader(memory, 3, mode="seen")), "seen"
        )
        for t in range(2):
            for split in ("train", "test"):
                want = served(memory.task_loader(t, split))
                assert_same_batches(served(lazy2.task_loader(t, split)), want, f"task {t} {split}, eval workers")
                assert_same_batches(served(lazy0.task_loader(t, split)), want, f"task {t} {split}, eval")
    finally:
        lazy2.teardown("fit")
    assert lazy2._pool is None


def test_augmentation_is_on_so_the_comparison_can_fail(folder: Path) -> None:
    plain = served(train_loader(stream(folder, augment=False), 0))
    augmented = served(train_loader(stream(folder, in_memory=False), 0))
    assert all(torch.equal(p.index, a.index) for p, a in zip(plain, augmented, strict=True))
    assert not any(torch.equal(p.x, a.x) for p, a in zip(plain, augmented, strict=True)), "every batch is augmented"
    other = served(train_loader(stream(folder, in_memory=False, seed=1), 0))
    assert not torch.equal(other[0].index, augmented[0].index), "the data seed changes the order"


def test_each_rank_gets_the_same_samples_on_both_paths(folder: Path) -> None:
    memory, lazy = stream(folder), stream(folder, in_memory=False)
    for epoch in (0, 2):
        task = memory.task_of_epoch(epoch)
        shards = {}
        for name, dm in (("memory", memory), ("lazy", lazy)):
            for rank in (0, 1):
                batches = served(train_loader(dm, epoch, rank, 2))
                shards[name, rank] = batches
                pairs = [(int(t), int(i)) for b in batches for t, i in zip(b.task, b.index, strict=True)]
                shards[name, rank, "pairs"] = pairs
        for rank in (0, 1):
            assert shards["lazy", rank, "pairs"] == shards["memory", rank, "pairs"], f"rank {rank}, epoch {epoch}"
            assert_same_batches(shards["lazy", rank], shards["memory", rank], f"rank {rank}, epoch {epoch}")
        both = set(shards["memory", 0, "pairs"]) | set(shards["memory", 1, "pairs"])
        assert both == {(task, i) for i in range(len(memory.stream.tasks[task].train))}, "the ranks cover the task"
        for t in range(2):  # evaluation shards partition each split exactly
            parts = []
            for rank in (0, 1):
                memory.trainer.global_rank = lazy.trainer.global_rank = rank  # type: ignore[union-attr]
                a, b = served(lazy.task_loader(t, "test")), served(memory.task_loader(t, "test"))
                assert_same_batches(a, b, f"test shard of rank {rank}")
                parts += [int(i) for x in a for i in x.index]
            assert sorted(parts) == list(range(len(memory.stream.tasks[t].test)))


def test_memories_get_the_decoded_sample_without_reading_it_again(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, lazy = stream(folder), stream(folder, in_memory=False)
    loader = train_loader(lazy, 0)
    batches = served(loader)
    old, last = batches[0], batches[-1]
    monkeypatch.setattr(FileInputs, "load", lambda self, i: pytest.fail("decoded again"))
    raw = lazy.raw_train_inputs(last.task, last.index)
    assert torch.equal(raw, memory.raw_train_inputs(last.task, last.index)) and raw.dtype == torch.uint8
    monkeypatch.undo()
    assert torch.equal(lazy.raw_train_inputs(old.task, old.index), memory.raw_train_inputs(old.task, old.index))
    pick = torch.tensor([5, 0, 3])  # not a served batch: read from disk
    ids = torch.zeros(3, dtype=torch.long)
    assert torch.equal(lazy.raw_train_inputs(ids, pick), memory.stream.tasks[0].train.x[pick])


def make_er(seed: int = 0) -> clfw.strategies.ER:
    torch.manual_seed(seed)
    return clfw.strategies.ER(
        backbone=MLP(in_features=3 * SIZE * SIZE, hidden=(16,), dropout=0.2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        buffer_size=6,
        replay_batch_size=3,
    )


@pytest.fixture(scope="module")
def reference(folder: Path) -> tuple[dict[str, Any], list[list[float]]]:
    """ER (replay of augmented inputs, dropout) on the in-memory path: final state and accuracy matrix."""
    module = make_er()
    _, matrix = fit(module, stream(folder), plot=False)
    assert len(module.buffer) == 6
    return snapshot(module), matrix.rows


def test_a_run_on_the_lazy_path_equals_the_in_memory_run(
    folder: Path, reference: tuple[dict[str, Any], list[list[float]]], tmp_path: Path
) -> None:
    lazy = make_er()
    _, lazy_matrix = fit(lazy, stream(folder, in_memory=False, num_workers=2), plot=False)
    assert lazy_matrix.rows == reference[1]
    assert_same_state(snapshot(lazy), reference[0], "lazy path, 2 workers")  # the memory's images included

    # killed 2 batches into task 1 on the in-memory path, resumed on the lazy path with workers
    dm = stream(folder)
    steps = -(-len(dm.stream.tasks[0].train) // dm.batch_size) * dm.epochs_per_task  # task 0's steps
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=steps + 2, save_last=True, save_top_k=-1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(make_er(), dm, [ckpt, Interrupt(steps + 3)], plot=False, enable_checkpointing=True)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["clfw"]["task"] == 1 and state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 2, "served": 2}
    ]
    resumed = make_er(seed=5)
    _, resumed_matrix = fit(
        resumed, stream(folder, in_memory=False, num_workers=2), plot=False, ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert resumed_matrix.rows == reference[1]
    assert_same_state(snapshot(resumed), reference[0], "resumed on the lazy path")


def test_downscaled_replay_copies_are_opt_in(folder: Path, reference: tuple[dict[str, Any], list[list[float]]]) -> None:
    small = make_er()
    dm = stream(folder, in_memory=False, replay_image_size=8)
    fit(small, dm, plot=False)
    assert reference[0]["buffer.x"].shape[1:] == (3, SIZE, SIZE) and small.buffer.x.shape[1:] == (3, 8, 8)
    assert small.buffer.x.dtype == torch.uint8
    assert not torch.equal(small.head.weight, reference[0]["head.weight"]), "a downscaled memory changes results"
    replayed = dm.replay_inputs(small.buffer.x[:2])
    assert replayed.shape == (2, 3, SIZE, SIZE) and replayed.dtype == torch.float32
    with pytest.raises(ValueError, match=r"replay_image_size must be null .* or in \[1, 16\) .* got 16"):
        stream(folder, replay_image_size=SIZE)


def test_file_inputs_select_without_decoding_and_name_bad_files(tmp_path: Path) -> None:
    files = []
    for i in range(4):
        Image.fromarray(np.full((4, 4), 10 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))

    def first_pixel(path: str) -> torch.Tensor:
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image))[:1, :1].clone()

    x = FileInputs(files, first_pixel, (1, 1))
    assert x.shape == (4, 1, 1) and len(x) == 4
    assert x[torch.tensor([3, 1])].flatten().tolist() == [30, 10] and x[2].item() == 20
    assert x[torch.tensor([True, False, True, False])].flatten().tolist() == [0, 20]
    picked = take(x, torch.tensor([2, 0]))
    assert isinstance(picked, FileInputs) and picked[:].flatten().tolist() == [20, 0]
    both = TaskData.cat(
        [TaskData.for_task(picked, torch.zeros(2), 0), TaskData.for_task(x.take([1]), torch.ones(1), 1)]
    )
    assert isinstance(both.x, FileInputs) and both.x[:].flatten().tolist() == [20, 0, 10]
    assert both.subset(torch.tensor([2])).x[:].flatten().tolist() == [10]
    with pytest.raises(ValueError, match=r"0\.png decoded to \(1, 1\) torch.uint8, expected \(2, 2\)"):
        FileInputs(files, first_pixel, (2, 2))[0]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    bad = FileInputs([str(tmp_path / "bad.png")], first_pixel, (1, 1))
    with pytest.raises(OSError, match=r"cannot decode .*bad\.png"):
        bad[0]


def other_folder_stream(name: str, root: Path, **kwargs: Any) -> ContinualDataModule:
    """Tiny-ImageNet, CUB-200 and a two-domain stream (a folder split at random, one with its own train/test split) on
    the files the catalogue's and the domain stream's tests write: 2 tasks, 1 epoch each, a validation split."""
    args: dict[str, Any] = {"batch_size": 3, "eval_batch_size": 2, "epochs_per_task": 1, "val_fraction": 0.3}
    if name == "SplitTinyImageNet":
        if not (root / "tiny").exists():
            write_tiny_imagenet(root / "tiny", ["n03", "n01", "n04", "n02"], train_per_class=3)
        return SplitTinyImageNet(root=str(root / "tiny"), n_tasks=2, image_size=32, **args, **kwargs)
    if name == "SplitCUB200":
        if not (root / "cub").exists():
            write_cub(root / "cub")
        sizes = {"image_size": 16, "train_resize": 20, "test_resize": 18}
        return SplitCUB200(root=str(root / "cub"), n_tasks=2, class_order="icarl", **sizes, **args, **kwargs)
    if not (root / "a").exists():
        write_folder(root / "a")
        write_folder(root / "b" / "train", shade=30)
        write_folder(root / "b" / "test", per_class=2, shade=30)
    return DomainStream(domains=[str(root / "a"), str(root / "b")], image_size=8, test_fraction=0.4, **args, **kwargs)


@pytest.mark.parametrize("name", ["SplitTinyImageNet", "SplitCUB200", "DomainStream"])
def test_the_other_folder_streams_serve_the_same_batches_from_disk(name: str, tmp_path: Path) -> None:
    memory, lazy = other_folder_stream(name, tmp_path), other_folder_stream(name, tmp_path, in_memory=False)
    stored = memory.stream.tasks[0].train.x
    assert isinstance(lazy.stream.tasks[0].train.x, FileInputs) and isinstance(stored, torch.Tensor)
    for epoch in range(2):  # one epoch per task, augmented
        want = served(train_loader(memory, epoch))
        assert_same_batches(served(train_loader(lazy, epoch)), want, f"{name}: epoch {epoch}")
    for t in range(2):
        for split in ("val", "test"):
            want = served(memory.task_loader(t, split))
            assert_same_batches(served(lazy.task_loader(t, split)), want, f"{name}: task {t} {split}")
    # downscaled replay copies: stored at 4 x 4, replayed upscaled to the stored training images' side
    small = other_folder_stream(name, tmp_path, in_memory=False, replay_image_size=4)
    copy = small.memory_inputs(stored[:2])
    assert copy.shape[-2:] == (4, 4) and small.stored_image_size == stored.shape[-1]
    assert small.replay_inputs(copy).shape == memory.replay_inputs(stored[:2]).shape
    with pytest.raises(ValueError, match=rf"replay_image_size must be null .* \(below \w+={stored.shape[-1]}\)"):
        other_folder_stream(name, tmp_path, replay_image_size=stored.shape[-1])
    with pytest.raises(ValueError, match=r"in_memory must be true or false, got 'no'"):
        other_folder_stream(name, tmp_path, in_memory="no")


def test_lazy_data_sets_and_warps_are_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"in_memory=false reads image files .* domains\[1\] are data sets"):
        DomainStream(domains=[write_folder(tmp_path / "a"), fake(0)], image_size=8, in_memory=False)
    lazy = stream(folder, in_memory=False).stream.tasks[0]
    with pytest.raises(ValueError, match=r"warped domains need the inputs in memory"):
        domain_incremental_tasks((lazy.train.x, lazy.train.y), (lazy.test.x, lazy.test.y), [lambda x: x], 4)

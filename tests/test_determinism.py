"""Determinism on CPU: the same seeds give bit-identical weights and accuracy matrices across runs, with 0 or 2 loader
workers, and after a mid-task resume, on a tiny Split CIFAR-10 with augmentation on (random crop and flip), replay
(ER, whose replayed inputs are augmented too) and dropout.

MNIST streams draw nothing at random in the loader, so they would pass these tests trivially; the crop/flip draws are
what the worker count and the resume point could disturb. The guards at the end show that the comparisons can fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

import clfw.strategies
from clfw import Batch, RandomCropFlip
from clfw.backbones import MLP
from clfw.benchmarks import SplitCIFAR10
from clfw.loaders import TaskLoader
from tests.helpers import Interrupt, assert_same_state, fit, snapshot, write_cifar

# 2 images per class in each CIFAR file: 10 training images per class, 50 per task (7 batches of 8), 2 tasks
PER_CLASS = 2
STEPS_PER_TASK = 7


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10", per_class=PER_CLASS)
    return root


def stream(root: Path, **kwargs: Any) -> SplitCIFAR10:
    """Two tasks of five classes, one epoch each, batches of 8, crop/flip augmentation on unless overridden."""
    args: dict[str, Any] = {"root": str(root), "n_tasks": 2, "batch_size": 8, "eval_batch_size": 64, "augment": True}
    args.update(kwargs)
    return SplitCIFAR10(**args)


def make(model_seed: int = 0) -> clfw.strategies.ER:
    """ER with an MLP with dropout (draws from the global generator in every step), initialised from ``model_seed``."""
    torch.manual_seed(model_seed)
    return clfw.strategies.ER(
        backbone=MLP(in_features=3 * 32 * 32, hidden=(32,), dropout=0.2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        buffer_size=20,
        replay_batch_size=4,
    )


def run(root: Path, **data_kwargs: Any) -> tuple[dict[str, Any], list[list[float]]]:
    """The final ``state_dict`` and accuracy matrix of an uninterrupted run."""
    module = make()
    _, matrix = fit(module, stream(root, **data_kwargs))
    return snapshot(module), matrix.rows


@pytest.fixture(scope="module")
def reference(cifar_root: Path) -> tuple[dict[str, Any], list[list[float]]]:
    return run(cifar_root, num_workers=0)


def epoch_batches(loader: TaskLoader) -> list[Batch]:
    """Every batch of one pass over ``loader``, checking that the pass leaves the global CPU generator untouched."""
    before = torch.get_rng_state()
    batches = list(loader)
    assert torch.equal(torch.get_rng_state(), before), "the loader must not draw from the global generator"
    return batches


def assert_same_batches(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for k, (p, q) in enumerate(zip(a, b, strict=True)):
        assert all(torch.equal(u, v) for u, v in zip(p, q, strict=True)), f"batch {k}"


def test_same_seed_gives_the_same_run(cifar_root: Path, reference: tuple[dict[str, Any], list[list[float]]]) -> None:
    state, rows = run(cifar_root, num_workers=0)
    assert rows == reference[1]
    assert_same_state(state, reference[0], "second run")


def test_two_loader_workers_give_the_same_run(
    cifar_root: Path, reference: tuple[dict[str, Any], list[list[float]]]
) -> None:
    state, rows = run(cifar_root, num_workers=2)
    assert rows == reference[1]
    assert_same_state(state, reference[0], "num_workers=2")


def test_resume_mid_task_with_workers_gives_the_same_run(
    cifar_root: Path, reference: tuple[dict[str, Any], list[list[float]]], tmp_path: Path
) -> None:
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=-1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(make(), stream(cifar_root), callbacks=[ckpt, Interrupt(11)], enable_checkpointing=True)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 9 and last["clfw"]["task"] == 1, "checkpoint in the middle of task 1"
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "served": 9 - STEPS_PER_TASK}]

    resumed = make()
    torch.manual_seed(123)  # the resume must not depend on the global generator's state at restart
    _, matrix = fit(resumed, stream(cifar_root, num_workers=2), ckpt_path=str(tmp_path / "last.ckpt"))
    assert matrix.rows == reference[1]
    assert_same_state(snapshot(resumed), reference[0], "resumed with num_workers=2")


def test_augmented_batches_are_drawn_per_batch_not_per_process(cifar_root: Path) -> None:
    plain = epoch_batches(stream(cifar_root, augment=False).train_dataloader())
    augmented = epoch_batches(stream(cifar_root).train_dataloader())
    assert_same_batches(augmented, epoch_batches(stream(cifar_root).train_dataloader()))
    assert_same_batches(augmented, epoch_batches(stream(cifar_root, num_workers=2).train_dataloader()))
    for p, a in zip(plain, augmented, strict=True):
        assert torch.equal(p.y, a.y) and torch.equal(p.index, a.index), "augmentation leaves the order alone"
        assert not torch.equal(p.x, a.x), "every batch is augmented"

    resumed = stream(cifar_root, num_workers=2).train_dataloader()
    resumed.load_state_dict({"epoch": 0, "served": 3})
    assert_same_batches(epoch_batches(resumed), augmented[3:])


def test_augmentation_differs_between_epochs_and_batches(cifar_root: Path) -> None:
    data = stream(cifar_root).stream.tasks[0].train
    order = torch.arange(8).repeat(2)  # the same 8 samples in two batches

    def augmented(epoch: int) -> list[Tensor]:
        return [b.x for b in epoch_batches(TaskLoader(data, order, 8, RandomCropFlip(4), epoch=epoch))]

    first, second = augmented(0)
    assert not torch.equal(first, second), "each batch draws its own crops and flips"
    assert not torch.equal(first, augmented(1)[0]), "each epoch draws its own crops and flips"
    assert torch.equal(first, augmented(0)[0])


def test_guards_the_comparisons_can_fail(cifar_root: Path, reference: tuple[dict[str, Any], list[list[float]]]) -> None:
    no_augment, _ = run(cifar_root, augment=False)
    assert not torch.equal(no_augment["head.weight"], reference[0]["head.weight"]), "augmentation changes training"
    other_seed, _ = run(cifar_root, seed=1)
    assert not torch.equal(other_seed["head.weight"], reference[0]["head.weight"]), "the data seed changes training"

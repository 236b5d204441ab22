"""The catalogue's class-incremental streams on tiny files in each data set's own format, written here and read through
the real loading code (Fashion-MNIST's IDX files, Tiny-ImageNet's and CUB-200-2011's folders, a torchvision-style
data set), and seeded class orders: ``"random"`` from the data seed, ``"icarl"`` the literature's seed-1993 order, the
order used recorded in ``metrics.json``."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from clfw.backbones import MLP
from clfw.benchmarks import (
    SplitCIFAR100,
    SplitCUB200,
    SplitFashionMNIST,
    SplitMNIST,
    SplitTinyImageNet,
    TorchvisionStream,
)
from clfw.benchmarks.split_tiny_imagenet import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
from clfw.data import resolve_class_order
from clfw.strategies import Naive
from tests.helpers import fit, write_cifar

ICARL_HEAD = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]  # PyCIL's CIFAR-100 order begins so (its logs, README)


def legacy_numpy_order(n: int) -> list[int]:
    """iCaRL/PyCIL's order exactly as their code draws it, ``np.random.seed(1993); np.random.permutation(n)``, with
    NumPy's global state saved and restored around it."""
    state = np.random.get_state()
    try:
        np.random.seed(1993)
        return np.random.permutation(n).tolist()
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------------------------------------------- class orders
def test_icarl_order_is_numpys_legacy_seed_1993_permutation_and_leaves_the_global_state_alone() -> None:
    expected = legacy_numpy_order(100)
    assert expected[:10] == ICARL_HEAD
    assert np.random.RandomState(1993).permutation(100).tolist() == expected
    before = np.random.get_state()
    assert resolve_class_order("icarl", range(100), seed=7) == expected
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert torch.randperm(100, generator=torch.Generator().manual_seed(1993)).tolist() != expected
    # over a subset of classes it permutes the sorted classes
    digits = [9, 4, 6, 1]
    assert resolve_class_order("icarl", digits, seed=0) == [[1, 4, 6, 9][i] for i in legacy_numpy_order(4)]


def test_split_cifar100_tasks_follow_the_icarl_order_as_10_tasks_and_as_b50(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar100", per_class=1)
    expected = legacy_numpy_order(100)
    stream = SplitCIFAR100(root=str(tmp_path), class_order="icarl").stream
    assert [list(t.classes) for t in stream.tasks] == [expected[10 * t : 10 * t + 10] for t in range(10)]
    assert set(stream.tasks[0].train.y.tolist()) == set(ICARL_HEAD)
    b50 = SplitCIFAR100(
        root=str(tmp_path), n_tasks=None, classes_per_task=[50, 10, 10, 10, 10, 10], class_order="icarl"
    )
    assert [len(t.classes) for t in b50.stream.tasks] == [50, 10, 10, 10, 10, 10]
    assert list(b50.stream.tasks[0].classes) == expected[:50] and list(b50.stream.tasks[1].classes) == expected[50:60]


def test_random_order_is_drawn_from_the_data_seed_and_defaults_are_unchanged() -> None:
    a, b, c = (SplitMNIST(class_order="random", seed=s).class_order for s in (0, 0, 1))
    assert a == b != c and sorted(a) == sorted(c) == list(range(10)) and a != list(range(10))
    assert SplitMNIST().class_order == list(range(10))
    assert SplitMNIST(n_tasks=2, classes=[9, 8, 7, 6]).class_order == [9, 8, 7, 6]  # classes as given, as before
    assert SplitMNIST(n_tasks=2, classes=[9, 8, 7, 6], class_order="sorted").class_order == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="class_order must be a list of classes, 'sorted', 'random' or 'icarl'"):
        SplitMNIST(class_order="shuffled")  # type: ignore[arg-type]


class TinyImages(torch.utils.data.Dataset):
    """A torchvision-style data set with ``.data`` (``[N, H, W, C]`` uint8, as CIFAR's) and ``.targets``: 6 classes, 4
    training or 2 test images each, class ``c`` brighter in channel ``c % 3``."""

    def __init__(self, root: str = "", train: bool = True) -> None:
        n = 4 if train else 2
        g = np.random.default_rng(0 if train else 1)
        self.targets = np.repeat(np.arange(6), n).tolist()
        self.data = g.integers(0, 60, (len(self.targets), 6, 6, 3), dtype=np.uint8)
        self.data[np.arange(len(self.targets)), :, :, np.array(self.targets) % 3] += 150
        self.transform = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return Image.fromarray(self.data[i]), self.targets[i]


def test_the_order_used_is_recorded_in_metrics_json(tmp_path: Path) -> None:
    dm = TorchvisionStream(
        dataset="tests.test_stream_catalogue.TinyImages", n_tasks=3, class_order="random", seed=3, batch_size=8
    )
    torch.manual_seed(0)
    module = Naive(backbone=MLP(in_features=3 * 6 * 6, hidden=(8,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    fit(module, dm, root=str(tmp_path), plot=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["class_order"] == dm.class_order == resolve_class_order("random", range(6), seed=3)
    assert [c for task in metrics["task_classes"] for c in task] == dm.class_order
    assert metrics["tasks_completed"] == 3


# ------------------------------------------------------------------------------------------------------ Fashion-MNIST
def _write_idx(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_split_fashion_mnist_reads_torchvisions_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for prefix, n in (("train", 30), ("t10k", 10)):
        images[prefix] = rng.integers(0, 256, (n, 28, 28))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[prefix])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    dm = SplitFashionMNIST(root=str(tmp_path))
    stream = dm.stream
    assert stream.n_tasks == 5 and [t.classes for t in stream.tasks][:2] == [(0, 1), (2, 3)]
    assert [len(t.train) for t in stream.tasks] == [6] * 5 and [len(t.test) for t in stream.tasks] == [2] * 5
    assert torch.equal(stream.tasks[0].train.x[0, 0], torch.from_numpy(images["train"][0].astype(np.uint8)))
    assert stream.tasks[1].test.y.tolist() == [2, 3]
    white = dm.eval_transform()(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(white, torch.full_like(white, (1 - 0.2860) / 0.3530))
    with pytest.raises(ValueError, match="MNIST digits only"):
        SplitFashionMNIST(root=str(tmp_path), source="offline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"FashionMNIST not found.*FashionMNIST/raw/\{train,t10k\}"):
        SplitFashionMNIST(root=str(tmp_path / "none")).stream  # noqa: B018


# ------------------------------------------------------------------------------------------------------ Tiny-ImageNet
def _jpeg(path: Path, color: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 40, (size[1], size[0], 3))
    rgb = np.clip(noise + np.array([color, 255 - color, color // 2]), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")


def write_tiny_imagenet(root: Path, wnids: list[str], train_per_class: int = 2) -> list[tuple[str, str]]:
    """Tiny-ImageNet's official layout with ``train_per_class`` training and one validation image per class; returns
    the validation ``(file, wnid)`` pairs in annotation order (classes reversed, so order matters)."""
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, wnid in enumerate(wnids):
        for k in range(train_per_class):
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 40 * c, seed=10 * c + k)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = [(f"val_{i}.JPEG", wnid) for i, wnid in enumerate(reversed(wnids))]
    for i, (name, wnid) in enumerate(val):
        _jpeg(root / "val" / "images" / name, 40 * wnids.index(wnid), seed=100 + i)
    lines = [f"{name}\t{wnid}\t0\t0\t63\t63" for name, wnid in val]
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return val


def test_split_tiny_imagenet_reads_the_official_layout(tmp_path: Path) -> None:
    wnids = ["n09", "n01", "n05", "n03"]  # wnids.txt is not sorted
    root = tmp_path / "tiny-imagenet-200"
    val = write_tiny_imagenet(root, wnids)
    dm = SplitTinyImageNet(root=str(tmp_path), n_tasks=2)  # the folder that holds tiny-imagenet-200 works too
    stream = dm.stream
    assert stream.num_classes == 4 and stream.input_shape == (3, 64, 64)
    assert [t.classes for t in stream.tasks] == [(0, 1), (2, 3)]
    assert [len(t.train) for t in stream.tasks] == [4, 4] and [len(t.test) for t in stream.tasks] == [2, 2]
    # a 64x64 JPEG is decoded exactly as PIL decodes it (no resampling), labels in wnids.txt order
    first = np.array(Image.open(root / "train" / "n09" / "images" / "n09_0.JPEG").convert("RGB"))
    assert torch.equal(stream.tasks[0].train.x[0], torch.from_numpy(first).permute(2, 0, 1))
    name, wnid = val[0]  # the first annotation: the last wnid, label 3
    decoded = torch.from_numpy(np.array(Image.open(root / "val" / "images" / name).convert("RGB"))).permute(2, 0, 1)
    test = stream.tasks[1].test
    assert wnid == "n03" and torch.equal(test.x[test.y == 3][0], decoded)
    # sorted WordNet ids: n01 n03 n05 n09 -> n09 is label 3
    by_sorted_id = SplitTinyImageNet(root=str(root), n_tasks=2, wnid_order="sorted").stream
    assert by_sorted_id.tasks[1].train.y.tolist() == [2, 2, 3, 3]
    white = dm.eval_transform()(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(white[0, :, 0, 0], (1 - torch.tensor(TINY_IMAGENET_MEAN)) / torch.tensor(TINY_IMAGENET_STD))
    crop = dm.train_transform()[0]
    assert crop.padding == 4 and crop.flip


def test_split_tiny_imagenet_names_the_layout_when_it_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no wnids.txt \(expected root/wnids.txt .*val/val_annotations.txt"):
        SplitTinyImageNet(root=str(tmp_path))
    root = tmp_path / "tiny"
    write_tiny_imagenet(root, ["n01", "n02"])
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(ValueError, match=r"val_annotations.txt is missing \(expected root/wnids.txt"):
        SplitTinyImageNet(root=str(root), n_tasks=2).stream  # noqa: B018
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"line 1: expected 'file<TAB>wnid<TAB>box' with a wnid of wnids\.txt"):
        SplitTinyImageNet(root=str(root), n_tasks=2).stream  # noqa: B018


# ------------------------------------------------------------------------------------------------------------ CUB-200
def write_cub(root: Path, n_classes: int = 4) -> dict[int, tuple[str, int, bool]]:
    """CUB-200-2011's layout: per class two training images and one test image of unequal sides; returns
    ``id -> (relative path, class id from 1, is_train)``."""
    images = {}
    for c in range(1, n_classes + 1):
        for k in range(3):
            image_id = len(images) + 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{k}.jpg"
            _jpeg(root / "images" / rel, 50 * c, size=(30 + 3 * k, 24), seed=image_id)
            images[image_id] = (rel, c, k != 1)
    (root / "images.txt").write_text("".join(f"{i} {rel}\n" for i, (rel, _, _) in images.items()))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, (_, c, _) in images.items()))
    (root / "train_test_split.txt").write_text("".join(f"{i} {int(t)}\n" for i, (_, _, t) in images.items()))
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, n_classes + 1)))
    return images


def test_split_cub200_reads_its_split_files_and_follows_slcas_transforms(tmp_path: Path) -> None:
    from torchvision import transforms

    root = tmp_path / "CUB_200_2011"
    images = write_cub(root)
    sizes = {"image_size": 16, "train_resize": 20, "test_resize": 18}
    dm = SplitCUB200(root=str(tmp_path), n_tasks=2, class_order="icarl", **sizes)
    stream = dm.stream
    order = [[0, 1, 2, 3][i] for i in legacy_numpy_order(4)]
    assert dm.class_order == order and [list(t.classes) for t in stream.tasks] == [order[:2], order[2:]]
    assert sum(len(t.train) for t in stream.tasks) == 8 and sum(len(t.test) for t in stream.tasks) == 4
    assert stream.tasks[0].train.x.shape[1:] == (3, 20, 20) and stream.tasks[0].test.x.shape[1:] == (3, 16, 16)
    bicubic = transforms.InterpolationMode.BICUBIC
    test_reference = transforms.Compose(
        [transforms.Resize(18, bicubic), transforms.CenterCrop(16), transforms.PILToTensor()]
    )
    train_reference = transforms.Compose([transforms.Resize((20, 20), bicubic), transforms.PILToTensor()])
    for image_id, (rel, c, is_train) in images.items():
        label = c - 1
        task = stream.tasks[0] if label in stream.tasks[0].classes else stream.tasks[1]
        split = task.train if is_train else task.test
        expected = (train_reference if is_train else test_reference)(Image.open(root / "images" / rel).convert("RGB"))
        assert any(torch.equal(x, expected) for x in split.x[split.y == label]), image_id
    batch = stream.tasks[0].train.x
    assert dm.train_transform()(batch).shape == dm.eval_transform()(batch).shape == (len(batch), 3, 16, 16)
    centre = dm.eval_transform()[0](batch)
    assert torch.equal(centre, batch[:, :, 2:18, 2:18])


def test_split_cub200_names_the_layout_when_it_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a CUB-200-2011 folder: \['images.txt'.*expected root/images.txt"):
        SplitCUB200(root=str(tmp_path))
    images = write_cub(tmp_path, n_classes=2)
    (tmp_path / "images" / images[1][0]).unlink()
    with pytest.raises(ValueError, match=r"Bird_1_0.jpg, listed in images.txt, is missing \(expected"):
        SplitCUB200(root=str(tmp_path), n_tasks=2).stream  # noqa: B018


# -------------------------------------------------------------------------------------------- torchvision-style data
def test_torchvision_stream_reads_data_and_targets_or_image_label_pairs() -> None:
    ds = TinyImages(train=True)
    dm = TorchvisionStream(dataset="tests.test_stream_catalogue.TinyImages", n_tasks=2, augment=True)
    assert dm.num_classes == 6 and dm.n_tasks == 2
    stream = dm.stream
    assert stream.input_shape == (3, 6, 6) and [t.classes for t in stream.tasks] == [(0, 1, 2), (3, 4, 5)]
    assert [len(t.train) for t in stream.tasks] == [12, 12] and [len(t.test) for t in stream.tasks] == [6, 6]
    assert torch.equal(stream.tasks[0].train.x[0], torch.from_numpy(ds.data[0]).permute(2, 0, 1))  # HWC -> CHW
    # the same data through its (PIL image, label) pairs: resizing (image_size) reads each item
    pairs = TorchvisionStream(dataset="tests.test_stream_catalogue.TinyImages", n_tasks=3, image_size=4)
    first = pairs.stream.tasks[0].train
    assert first.x.shape[1:] == (3, 4, 4) and first.y.tolist() == [0] * 4 + [1] * 4
    # torchvision's FakeData: PIL images, no .data, splits by random_offset
    fake = TorchvisionStream(
        dataset="torchvision.datasets.FakeData",
        dataset_args={"image_size": [3, 5, 5], "num_classes": 2},
        train_args={"size": 12},
        test_args={"size": 8, "random_offset": 1000},
        num_classes=2,
        n_tasks=2,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    assert fake.stream.input_shape == (3, 5, 5) and fake.stream.tasks[0].train.x.dtype == torch.uint8
    assert sum(len(t.train) for t in fake.stream.tasks) == 12 and sum(len(t.test) for t in fake.stream.tasks) == 8
    white = fake.eval_transform()(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert torch.allclose(white, torch.full_like(white, 2.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "torchvision.datasets.NoSuchSet"}, "not an importable class path"),
        ({"dataset": "nosuchpackage.Data"}, "cannot be imported"),
        ({"mean": [0.5]}, "mean and std must be given together"),
        ({"scenario": "domain"}, "class- or task-incremental"),
    ],
)
def test_torchvision_stream_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args = {"dataset": "tests.test_stream_catalogue.TinyImages", **kwargs}
    with pytest.raises(ValueError, match=message):
        TorchvisionStream(**args)

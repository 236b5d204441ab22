"""Split CUB-200: the 200 bird species of CUB-200-2011 in 10 tasks of 20, from the data set's folder and split files."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from clfw import Normalize, RandomCropFlip, Stream
from clfw.benchmarks.image_folder import ImageFileStream, image_inputs
from clfw.data import CenterCrop, ClassOrder, class_incremental_tasks, classes_per_task_split, resolve_class_order

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
LAYOUT = (
    "root/images.txt (id path), root/image_class_labels.txt (id class), root/train_test_split.txt (id is_train), "
    "root/classes.txt (class name) and root/images/<class folder>/*.jpg: the extracted CUB_200_2011.tgz"
)


def cub_root(root: str) -> str:
    """The folder that holds CUB's split files: ``root`` itself, or ``root/CUB_200_2011``; else a ``ValueError``
    naming the expected layout."""
    for folder in (root, os.path.join(root, "CUB_200_2011")):
        if all(os.path.isfile(os.path.join(folder, f)) for f in FILES):
            return folder
    missing = [f for f in FILES if not os.path.isfile(os.path.join(root, f))]
    raise ValueError(f"root={root!r} is not a CUB-200-2011 folder: {missing} missing (expected {LAYOUT})")


def _read_table(path: str) -> dict[int, str]:
    """``id -> rest of the line`` of one of CUB's ``<id> <value>`` files."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, _, value = line.strip().partition(" ")
            if not key.isdigit() or not value:
                raise ValueError(f"{path} line {n}: expected '<id> <value>', got {line.strip()!r} (expected {LAYOUT})")
            out[int(key)] = value.strip()
    return out


class SplitCUB200(ImageFileStream):
    """Split CUB-200 (class- or task-incremental): the 200 species of CUB-200-2011 (Wah et al. 2011) in 10 tasks of 20,
    the protocol of SLCA (Zhang et al., ICCV 2023, "Slow Learner with Classifier Alignment"; its code
    ``utils/data.py``, ``iCUB200_224``, and ``exps/slca/slca_cub.json``).

    ``root`` is the extracted ``CUB_200_2011`` folder (or the folder holding it); its own files give the labels
    (``image_class_labels.txt``, classes numbered from 0 in ``classes.txt`` order) and the official split
    (``train_test_split.txt``: 5,994 training and 5,794 test images). As in SLCA, test images are resized (bicubic)
    to 256 on the shorter side and centre-cropped to 224; training images are resized to 300 x 300 (bicubic), and
    each training batch takes a random 224 x 224 crop and a horizontal flip (no crop at evaluation time: the stored
    test images are already 224; a training image evaluated, e.g. by a validation split or at a task end, is
    centre-cropped). Inputs are normalised with ImageNet's statistics (SLCA's), or only scaled to [0, 1]. SLCA orders
    the classes with seed 1993 (``class_order: icarl``; ``configs/data/split_cub200.yaml`` sets it); the default here
    is label order. Everything is held in memory as ``uint8`` (about 2.5 GB at the default sizes), or, with
    ``in_memory=False``, decoded from disk by the loader's workers when served (the same batches, bit for bit).

    Args:
        root: The ``CUB_200_2011`` folder, or a folder that holds it.
        n_tasks: Number of tasks; must divide the number of classes unless ``classes_per_task`` is given.
        class_order: Order in which the classes are dealt to tasks: a list, ``"sorted"``, ``"random"`` (drawn from
            ``seed``) or ``"icarl"`` (SLCA's and PyCIL's seed-1993 order; :func:`~clfw.data.resolve_class_order`).
        classes_per_task: Uneven split.
        image_size: Side of the model's inputs (224).
        train_resize: Side of the stored training images (300), from which training batches are cropped.
        test_resize: Shorter side of the test images before their centre crop to ``image_size`` (256).
        augment: Random crop and flip of training batches (else their centre crop).
        normalize: ImageNet normalisation; ``False`` only scales to [0, 1].
        in_memory: Decode every image once, at setup, and hold them in memory; ``False`` decodes them from disk in
            the loader's workers when they are served (set ``num_workers``): bit-identical batches.
        replay_image_size: Opt-in, changes results: replay memories store copies of the stored training images
            downscaled to this side (below ``train_resize``) and replay them upscaled back to ``train_resize``, before
            the random crop (:class:`~clfw.benchmarks.ImageFolderStream`); ``None`` stores the exact images.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        root: str = "data/CUB_200_2011",
        n_tasks: int | None = 10,
        class_order: ClassOrder = None,
        classes_per_task: list[int] | None = None,
        image_size: int = 224,
        train_resize: int = 300,
        test_resize: int = 256,
        augment: bool = True,
        normalize: bool = True,
        in_memory: bool = True,
        replay_image_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError(f"{type(self).__name__} is class- or task-incremental, not 'domain'")
        if not 8 <= image_size <= min(train_resize, test_resize):
            raise ValueError(
                f"need 8 <= image_size <= train_resize and test_resize, got image_size={image_size}, "
                f"train_resize={train_resize}, test_resize={test_resize}"
            )
        self.init_storage(in_memory, replay_image_size, train_resize, "train_resize")
        self.root = cub_root(root)
        classes = _read_table(os.path.join(self.root, "classes.txt"))
        if not classes or sorted(classes) != list(range(1, len(classes) + 1)):
            raise ValueError(f"{self.root}/classes.txt must number its classes 1..C, got ids {sorted(classes)[:5]}...")
        self.class_names = [classes[c] for c in range(1, len(classes) + 1)]
        self.image_size, self.train_resize, self.test_resize = image_size, train_resize, test_resize
        self.augment, self.normalize = augment, normalize
        self.sizes = classes_per_task_split(len(self.class_names), n_tasks, classes_per_task)
        self.class_order = resolve_class_order(class_order, range(len(self.class_names)), self.seed)

    @property
    @override
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.sizes)

    def split_files(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """``(path, label)`` of the training and of the test images, in image-id order, checked against the layout."""
        images, labels, is_train = (_read_table(os.path.join(self.root, f)) for f in FILES[:3])
        if not images or set(images) != set(labels) or set(images) != set(is_train):
            raise ValueError(
                f"{', '.join(FILES[:3])} under {self.root} must list the same image ids (expected {LAYOUT})"
            )
        train, test = [], []
        for image_id in sorted(images):
            path = os.path.join(self.root, "images", images[image_id])
            label = int(labels[image_id]) - 1
            if not 0 <= label < self.num_classes:
                raise ValueError(f"image {image_id} has class {label + 1}, outside classes.txt's 1..{self.num_classes}")
            if not os.path.isfile(path):
                raise ValueError(f"{path}, listed in images.txt, is missing (expected {LAYOUT})")
            (train if is_train[image_id] == "1" else test).append((path, label))
        return train, test

    @override
    def build_stream(self) -> Stream:
        train_files, test_files = self.split_files()
        name = type(self).__name__
        size, in_memory = self.train_resize, self.in_memory
        train_x = image_inputs([p for p, _ in train_files], size, [size, size], "bicubic", f"{name} train", in_memory)
        test_x = image_inputs(
            [p for p, _ in test_files], self.image_size, self.test_resize, "bicubic", f"{name} test", in_memory
        )
        train = (train_x, torch.tensor([c for _, c in train_files], dtype=torch.long))
        test = (test_x, torch.tensor([c for _, c in test_files], dtype=torch.long))
        tasks = class_incremental_tasks(train, test, self.class_order, self.sizes, self.val_fraction, self.seed)
        shape = (3, self.image_size, self.image_size)
        return Stream(tasks, self.scenario, self.num_classes, shape, self.task_boundaries_visible)

    def _normalize(self) -> Normalize:
        if self.normalize:
            return Normalize(IMAGENET_MEAN, IMAGENET_STD)
        return Normalize((0.0,) * 3, (1.0,) * 3)

    @override
    def eval_transform(self) -> nn.Module:
        return nn.Sequential(CenterCrop(self.image_size), self._normalize())

    @override
    def train_transform(self) -> nn.Module:
        if not self.augment:
            return self.eval_transform()
        return nn.Sequential(RandomCropFlip(padding=0, size=self.image_size), self._normalize())

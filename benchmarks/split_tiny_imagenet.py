"""Split Tiny-ImageNet: the 200 Tiny-ImageNet classes in 10 tasks of 20, from the extracted ``tiny-imagenet-200``."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn
from typing_extensions import override

from clfw import Normalize, RandomCropFlip, Stream
from clfw.benchmarks.image_folder import EXTENSIONS, ImageFileStream, image_inputs
from clfw.data import ClassOrder, class_incremental_tasks, classes_per_task_split, resolve_class_order

# per-channel mean and std of the training images (Mammoth's seq-tinyimg values)
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821)
LAYOUT = (
    "root/wnids.txt (one WordNet id a line), root/train/<wnid>/images/*.JPEG, root/val/val_annotations.txt (file, "
    "wnid, box, tab-separated) and root/val/images/*.JPEG: the extracted tiny-imagenet-200.zip"
)


def tiny_imagenet_root(root: str) -> str:
    """The folder that holds ``wnids.txt``: ``root`` itself, or ``root/tiny-imagenet-200``; else a ``ValueError``
    naming the expected layout."""
    for folder in (root, os.path.join(root, "tiny-imagenet-200")):
        if os.path.isfile(os.path.join(folder, "wnids.txt")):
            return folder
    raise ValueError(f"root={root!r} is not a Tiny-ImageNet folder: no wnids.txt (expected {LAYOUT})")


class SplitTinyImageNet(ImageFileStream):
    """Split Tiny-ImageNet (class- or task-incremental): 200 classes in 10 tasks of 20, Mammoth's seq-tinyimg
    (Buzzega et al. 2020, "Dark Experience for General Continual Learning").

    ``root`` is the extracted ``tiny-imagenet-200`` folder (or the folder holding it), read in its official layout:
    ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` (500 images a class) and ``val/val_annotations.txt`` with
    ``val/images/*.JPEG`` (50 a class). Training uses the training images, testing the official validation set
    (the test set's labels are not public), as Mammoth does. All 110,000 images are held in memory as ``uint8`` 64 x 64
    (1.35 GB), or, with ``in_memory=False``, decoded from disk by the loader's workers when served (the same batches,
    bit for bit). Labels are numbered in ``wnids.txt`` order (Mammoth's class order; ``wnid_order: sorted`` numbers them
    in sorted WordNet-id order, torchvision ``ImageFolder``'s and so PyCIL's, where ``class_order: icarl`` then gives
    PyCIL's order). Training batches are augmented by a random 64 x 64 crop with padding 4 and a horizontal flip, and
    inputs normalised with Mammoth's statistics of the training images.

    Args:
        root: The ``tiny-imagenet-200`` folder, or a folder that holds it.
        n_tasks: Number of tasks; must divide the number of classes unless ``classes_per_task`` is given.
        class_order: Order in which the classes are dealt to tasks: a list, ``"sorted"``, ``"random"`` (drawn from
            ``seed``) or ``"icarl"`` (:func:`~clfw.data.resolve_class_order`); default: label order.
        classes_per_task: Uneven split.
        wnid_order: Label numbering: ``"file"`` (``wnids.txt`` order) or ``"sorted"`` (sorted WordNet ids).
        image_size: Side of the stored images (64, the data set's own size: images are not resampled).
        augment: Random crop and flip of training batches, replay included.
        padding: Zero padding of the random crop (Mammoth: 4).
        normalize: Normalise with the training images' statistics; ``False`` only scales to [0, 1].
        in_memory: Decode every image once, at setup, and hold them in memory; ``False`` decodes them from disk in
            the loader's workers when they are served (set ``num_workers``): bit-identical batches.
        replay_image_size: Opt-in, changes results: replay memories store copies downscaled to this side and replay
            them upscaled back to ``image_size`` (:class:`~clfw.benchmarks.ImageFolderStream`); ``None`` stores the
            exact images.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        root: str = "data/tiny-imagenet-200",
        n_tasks: int | None = 10,
        class_order: ClassOrder = None,
        classes_per_task: list[int] | None = None,
        wnid_order: Literal["file", "sorted"] = "file",
        image_size: int = 64,
        augment: bool = True,
        padding: int = 4,
        normalize: bool = True,
        in_memory: bool = True,
        replay_image_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError(f"{type(self).__name__} is class- or task-incremental, not 'domain'")
        if wnid_order not in ("file", "sorted"):
            raise ValueError(f"wnid_order must be 'file' or 'sorted', got {wnid_order!r}")
        if image_size < 8 or padding < 0:
            raise ValueError(f"need image_size >= 8 and padding >= 0, got {image_size}, {padding}")
        self.init_storage(in_memory, replay_image_size, image_size)
        self.root = tiny_imagenet_root(root)
        with open(os.path.join(self.root, "wnids.txt")) as f:
            wnids = [line.strip() for line in f if line.strip()]
        if not wnids or len(set(wnids)) != len(wnids):
            raise ValueError(f"{self.root}/wnids.txt must list distinct WordNet ids, one a line (expected {LAYOUT})")
        self.wnids = sorted(wnids) if wnid_order == "sorted" else wnids
        self.image_size, self.augment, self.padding, self.normalize = image_size, augment, padding, normalize
        self.sizes = classes_per_task_split(len(self.wnids), n_tasks, classes_per_task)
        self.class_order = resolve_class_order(class_order, range(len(self.wnids)), self.seed)

    @property
    @override
    def num_classes(self) -> int:
        return len(self.wnids)

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.sizes)

    def split_files(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """``(path, label)`` of the training images (per class, sorted) and of the validation images (in
        ``val_annotations.txt`` order), checked against the layout."""
        label = {w: i for i, w in enumerate(self.wnids)}
        train = []
        for wnid in self.wnids:
            folder = os.path.join(self.root, "train", wnid, "images")
            if not os.path.isdir(folder):
                raise ValueError(f"{folder} is missing (expected {LAYOUT})")
            train += [(os.path.join(folder, f), label[wnid]) for f in sorted(os.listdir(folder)) if _is_image(f)]
        annotations = os.path.join(self.root, "val", "val_annotations.txt")
        if not os.path.isfile(annotations):
            raise ValueError(f"{annotations} is missing (expected {LAYOUT})")
        test = []
        with open(annotations) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 2 or fields[1].strip() not in label:
                    raise ValueError(
                        f"{annotations} line {n}: expected 'file<TAB>wnid<TAB>box' with a wnid of wnids.txt, got "
                        f"{line.strip()!r}"
                    )
                path = os.path.join(self.root, "val", "images", fields[0].strip())
                if not os.path.isfile(path):
                    raise ValueError(f"{path}, listed in {annotations}, is missing (expected {LAYOUT})")
                test.append((path, label[fields[1].strip()]))
        return train, test

    @override
    def build_stream(self) -> Stream:
        train_files, test_files = self.split_files()
        splits = []
        for files, split in ((train_files, "train"), (test_files, "val")):
            paths, name = [p for p, _ in files], f"{type(self).__name__} {split}"
            x = image_inputs(paths, self.image_size, self.image_size, name=name, in_memory=self.in_memory)
            splits.append((x, torch.tensor([c for _, c in files], dtype=torch.long)))
        tasks = class_incremental_tasks(
            splits[0], splits[1], self.class_order, self.sizes, self.val_fraction, self.seed
        )
        shape = (3, self.image_size, self.image_size)
        return Stream(tasks, self.scenario, self.num_classes, shape, self.task_boundaries_visible)

    @override
    def eval_transform(self) -> Normalize:
        if self.normalize:
            return Normalize(TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
        return Normalize((0.0,) * 3, (1.0,) * 3)

    @override
    def train_transform(self) -> nn.Module:
        if not self.augment:
            return self.eval_transform()
        return nn.Sequential(RandomCropFlip(self.padding), self.eval_transform())


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)

"""Class-incremental streams from an image folder (``root/<class>/<image>``), e.g. ImageNet-R."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from clfw import ContinualDataModule, Normalize, RandomCropFlip, Stream
from clfw.data import check_class_order, class_incremental_tasks, classes_per_task_split

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_image(path: str, size: int) -> Tensor:
    """An image as ``uint8 [3, size, size]``: shorter side resized to ``size * 256 / 224``, then a centre crop."""
    from PIL import Image
    from torchvision.transforms import functional as TF  # noqa: N812

    with Image.open(path) as img:
        img = img.convert("RGB")
        img = TF.resize(img, round(size * 256 / 224))
        img = TF.center_crop(img, [size, size])
        return TF.pil_to_tensor(img)


def _has_images(folder: str) -> bool:
    return any(f.lower().endswith(EXTENSIONS) for f in os.listdir(folder))


def tiny_imagenet_layout(root: str) -> str | None:
    """Where ``root`` holds Tiny-ImageNet's training layout, ``<train>/<wnid>/images/*.JPEG`` (each class's images one
    folder down), that train folder: ``"root"`` or ``"root/train"`` (the data set's top folder); else ``None``."""
    for folder, where in ((root, "root"), (os.path.join(root, "train"), "root/train")):
        if not os.path.isdir(folder):
            continue
        classes = [os.path.join(folder, d) for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))]
        if classes and all(not _has_images(c) and os.path.isdir(os.path.join(c, "images")) for c in classes):
            return where
    return None


class ImageFolderStream(ContinualDataModule):
    """Class-incremental (or task-incremental) stream over an image folder, one subfolder per class.

    Classes are the subfolders in sorted order (labels 0..C-1). All images are loaded once into memory as ``uint8``
    (resized and centre-cropped to ``image_size``; 224 x 224 x 3 bytes each), with progress reported. The images are
    split at random into training and test parts (``test_fraction`` of all images, with a generator seeded by
    ``split_seed``, not stratified), then dealt to tasks by class. Training batches are augmented by a random crop
    (padding ``image_size // 8``) and a horizontal flip; inputs are scaled to [0, 1] (``normalize=False``, the prompt
    papers' input) or normalised with ImageNet's statistics.

    Args:
        root: Folder holding one subfolder per class.
        image_size: Side of the stored (and served) square images.
        test_fraction: Fraction of all images used for testing.
        split_seed: Seed of the train/test split.
        n_tasks: Number of tasks; must divide the number of classes unless ``classes_per_task`` is given.
        class_order: Order in which classes are dealt to tasks (default: sorted folder order).
        classes_per_task: Uneven split.
        augment: Random crop and flip of training batches.
        normalize: ImageNet normalisation instead of [0, 1] scaling.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        root: str = "data/imagenet-r",
        image_size: int = 224,
        test_fraction: float = 0.2,
        split_seed: int = 42,
        n_tasks: int | None = 10,
        class_order: list[int] | None = None,
        classes_per_task: list[int] | None = None,
        augment: bool = True,
        normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError(f"{type(self).__name__} is class- or task-incremental, not 'domain'")
        if not 0.0 < test_fraction < 1.0 or image_size < 8:
            raise ValueError(f"need 0 < test_fraction < 1 and image_size >= 8, got {test_fraction}, {image_size}")
        if not os.path.isdir(root):
            raise ValueError(f"root={root!r} does not exist (expected an image folder: root/<class>/<image> files)")
        self.root, self.image_size, self.test_fraction, self.split_seed = root, image_size, test_fraction, split_seed
        self.augment, self.normalize = augment, normalize
        self.class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not self.class_names:
            raise ValueError(f"no class subfolders under root={root!r}")
        tiny = tiny_imagenet_layout(root)
        if tiny is not None:
            raise ValueError(
                f"root={root!r} has the Tiny-ImageNet layout ({tiny}/<wnid>/images/*.JPEG), which "
                f"{type(self).__name__} does not read: it expects root/<class>/<image> files; move the images of "
                f"each {tiny}/<wnid>/images/ up into {tiny}/<wnid>/ and pass that folder as root"
            )
        self.sizes = classes_per_task_split(len(self.class_names), n_tasks, classes_per_task)
        order = class_order if class_order is not None else range(len(self.class_names))
        self.class_order = check_class_order(order, range(len(self.class_names)))

    @property
    @override
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.sizes)

    def files(self) -> list[tuple[str, int]]:
        """``(path, label)`` of every image, in sorted order."""
        out = []
        for label, name in enumerate(self.class_names):
            folder = os.path.join(self.root, name)
            out += [
                (os.path.join(folder, f), label) for f in sorted(os.listdir(folder)) if f.lower().endswith(EXTENSIONS)
            ]
        return out

    @override
    def build_stream(self) -> Stream:
        files, start = self.files(), time.perf_counter()
        x = torch.empty((len(files), 3, self.image_size, self.image_size), dtype=torch.uint8)
        for i, (path, _) in enumerate(files):
            x[i] = load_image(path, self.image_size)
            if (i + 1) % 2000 == 0 or i + 1 == len(files):
                rank_zero_info(
                    f"{type(self).__name__}: loaded {i + 1}/{len(files)} images ({time.perf_counter() - start:.0f} s)"
                )
        y = torch.tensor([label for _, label in files], dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        n_test = round(self.test_fraction * len(y))
        test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
        tasks = class_incremental_tasks(
            (x[train], y[train]), (x[test], y[test]), self.class_order, self.sizes, self.val_fraction, self.seed
        )
        return Stream(
            tasks, self.scenario, self.num_classes, (3, self.image_size, self.image_size), self.task_boundaries_visible
        )

    @override
    def eval_transform(self) -> Normalize:
        if self.normalize:
            return Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return Normalize((0.0,) * 3, (1.0,) * 3)

    @override
    def train_transform(self) -> nn.Module:
        if not self.augment:
            return self.eval_transform()
        return nn.Sequential(RandomCropFlip(self.image_size // 8), self.eval_transform())

"""Class-incremental streams from an image folder (``root/<class>/<image>``), e.g. ImageNet-R."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from clfw import ContinualDataModule, Normalize, RandomCropFlip, Stream
from clfw.data import ClassOrder, Inputs, class_incremental_tasks, classes_per_task_split, resolve_class_order, take
from clfw.lazy import FileInputs, grow_images, shrink_images

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def fit_image(
    img: Any, size: int, resize: int | Sequence[int] | None = None, interpolation: str = "bilinear"
) -> Tensor:
    """A PIL image as ``uint8 [3, size, size]``: RGB, resized, then a centre crop (torchvision's ``Resize(resize)`` +
    ``CenterCrop(size)``). An int ``resize`` sets the shorter side (default ``size * 256 / 224``; an image whose
    shorter side already has that length is not resampled), a pair ``[h, w]`` the exact size; ``interpolation`` is a
    torchvision ``InterpolationMode`` value (``"bilinear"``, ``"bicubic"`` ...)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF  # noqa: N812

    img = img.convert("RGB")
    target = round(size * 256 / 224) if resize is None else resize if isinstance(resize, int) else list(resize)
    img = TF.resize(img, target, interpolation=InterpolationMode(interpolation))
    img = TF.center_crop(img, [size, size])
    return TF.pil_to_tensor(img)


def load_image(
    path: str, size: int, resize: int | Sequence[int] | None = None, interpolation: str = "bilinear"
) -> Tensor:
    """The image file at ``path`` as ``uint8 [3, size, size]`` (see :func:`fit_image`)."""
    from PIL import Image

    with Image.open(path) as img:
        return fit_image(img, size, resize, interpolation)


def load_images(
    paths: Sequence[str],
    size: int,
    resize: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    name: str = "images",
) -> Tensor:
    """The image files ``paths`` as one ``uint8 [N, 3, size, size]`` tensor (:func:`load_image`), with progress
    reported under ``name`` every 2,000 images."""
    start = time.perf_counter()
    x = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        x[i] = load_image(path, size, resize, interpolation)
        if (i + 1) % 2000 == 0 or i + 1 == len(paths):
            rank_zero_info(f"{name}: loaded {i + 1}/{len(paths)} images ({time.perf_counter() - start:.0f} s)")
    return x


def image_inputs(
    paths: Sequence[str],
    size: int,
    resize: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    name: str = "images",
    in_memory: bool = True,
) -> Inputs:
    """The image files ``paths`` as a stream's inputs: all decoded now into one ``uint8`` tensor (:func:`load_images`),
    or, with ``in_memory=False``, a :class:`~clfw.lazy.FileInputs` that the loaders' workers decode with the same
    :func:`load_image` when they serve a batch (the same bytes, so the same batches). Select from either with
    :func:`clfw.data.take`, which does not decode."""
    if in_memory:
        return load_images(paths, size, resize, interpolation, name)
    if isinstance(resize, list):
        resize = tuple(resize)  # hashable and comparable, for FileInputs.cat
    return FileInputs(
        list(paths), partial(load_image, size=size, resize=resize, interpolation=interpolation), (3, size, size)
    )


def check_storage(
    in_memory: bool, replay_image_size: int | None, image_size: int, size_name: str = "image_size"
) -> None:
    """Checks a folder stream's ``in_memory`` and ``replay_image_size`` arguments (one ``ValueError`` line);
    ``image_size`` is the side of the stored training images, named ``size_name`` in the message."""
    if not isinstance(in_memory, bool):
        raise ValueError(f"in_memory must be true or false, got {in_memory!r}")
    if replay_image_size is not None and not 1 <= replay_image_size < image_size:
        raise ValueError(
            f"replay_image_size must be null (replay memories store exact images) or in [1, {image_size}) "
            f"(below {size_name}={image_size}), got {replay_image_size}"
        )


class ImageFileStream(ContinualDataModule):
    """Base of the streams that decode image files (:class:`ImageFolderStream`, ``SplitTinyImageNet``,
    ``SplitCUB200``, ``DomainStream``): where their images are kept, ``in_memory``, and what replay memories store of
    them, ``replay_image_size``. A subclass calls :meth:`init_storage` in its ``__init__`` and reads its images with
    ``image_inputs(..., in_memory=self.in_memory)``, selecting from them with :func:`clfw.data.take`."""

    in_memory: bool = True
    replay_image_size: int | None = None
    stored_image_size: int = 0  # side of the stored training images, to which replayed copies are upscaled back

    def init_storage(
        self, in_memory: bool, replay_image_size: int | None, stored_image_size: int, size_name: str = "image_size"
    ) -> None:
        """Checks and keeps the storage arguments (:func:`check_storage`); ``stored_image_size`` is the side of the
        stored training images (``size_name`` in error messages)."""
        check_storage(in_memory, replay_image_size, stored_image_size, size_name)
        self.in_memory, self.replay_image_size, self.stored_image_size = in_memory, replay_image_size, stored_image_size

    @override
    def memory_inputs(self, raw: Tensor) -> Tensor:
        return raw if self.replay_image_size is None else shrink_images(raw, self.replay_image_size)

    @override
    def replay_inputs(self, stored: Tensor) -> Tensor:
        return super().replay_inputs(grow_images(stored, self.stored_image_size))

    @override
    def stored_eval_inputs(self, stored: Tensor) -> Tensor:
        return super().stored_eval_inputs(grow_images(stored, self.stored_image_size))


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


class ImageFolderStream(ImageFileStream):
    """Class-incremental (or task-incremental) stream over an image folder, one subfolder per class.

    Classes are the subfolders in sorted order (labels 0..C-1). All images are loaded once into memory as ``uint8``
    (resized and centre-cropped to ``image_size``; 224 x 224 x 3 bytes each), with progress reported, or, with
    ``in_memory=False``, decoded from disk by the loader's workers each time they are served (``num_workers``; the same
    batches, bit for bit, and replay memories still store the exact decoded images). The images are
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
        class_order: Order in which classes are dealt to tasks: a list, ``"sorted"``, ``"random"`` (drawn from
            ``seed``) or ``"icarl"`` (default: sorted folder order; :func:`~clfw.data.resolve_class_order`).
        classes_per_task: Uneven split.
        augment: Random crop and flip of training batches.
        normalize: ImageNet normalisation instead of [0, 1] scaling.
        in_memory: Decode every image once, at setup, and hold them in memory; ``False`` reads them from disk when
            they are served (for data larger than memory; set ``num_workers``). Results are the same either way.
        replay_image_size: Opt-in, changes results: replay memories store a copy downscaled to this side (antialiased
            bilinear) and replay it upscaled back (bilinear), ``(image_size / replay_image_size)**2`` times more
            samples in the same memory. ``None`` (default) stores the exact images. Applies to the strategies that
            store through ``raw_inputs`` (ER, ER-ACE, DER, DER++, GDumb); iCaRL and A-GEM store exact images.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        root: str = "data/imagenet-r",
        image_size: int = 224,
        test_fraction: float = 0.2,
        split_seed: int = 42,
        n_tasks: int | None = 10,
        class_order: ClassOrder = None,
        classes_per_task: list[int] | None = None,
        augment: bool = True,
        normalize: bool = False,
        in_memory: bool = True,
        replay_image_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError(f"{type(self).__name__} is class- or task-incremental, not 'domain'")
        if not 0.0 < test_fraction < 1.0 or image_size < 8:
            raise ValueError(f"need 0 < test_fraction < 1 and image_size >= 8, got {test_fraction}, {image_size}")
        self.init_storage(in_memory, replay_image_size, image_size)
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
                f"{type(self).__name__} does not read: it expects root/<class>/<image> files; use "
                "clfw.benchmarks.SplitTinyImageNet with root set to the tiny-imagenet-200 folder"
            )
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
        files = self.files()
        x = image_inputs(
            [path for path, _ in files], self.image_size, name=type(self).__name__, in_memory=self.in_memory
        )
        y = torch.tensor([label for _, label in files], dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        n_test = round(self.test_fraction * len(y))
        test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
        tasks = class_incremental_tasks(
            (take(x, train), y[train]),
            (take(x, test), y[test]),
            self.class_order,
            self.sizes,
            self.val_fraction,
            self.seed,
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

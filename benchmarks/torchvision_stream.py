"""A class-incremental stream over any torchvision-style data set (a ``Dataset`` of ``(image, label)`` pairs)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import override

from clfw import ContinualDataModule, Normalize, RandomCropFlip, Stream
from clfw.data import ClassOrder, class_incremental_tasks, classes_per_task_split, resolve_class_order


def dataset_class(path: str) -> type:
    """The class named by the import path ``path`` (``"torchvision.datasets.SVHN"``)."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except ImportError as err:
        raise ValueError(f"dataset={path!r} cannot be imported: {err}") from err
    except AttributeError:
        cls = None
    if not isinstance(cls, type):
        raise ValueError(f"dataset={path!r} is not an importable class path such as 'torchvision.datasets.SVHN'")
    return cls


def _to_chw(x: Tensor, what: str) -> Tensor:
    """Images ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` (C in 1, 3, 4) as ``[N, C, H, W]``."""
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        return x.permute(0, 3, 1, 2).contiguous()
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x
    raise ValueError(f"{what}: cannot read images of shape {tuple(x.shape)} as [N, C, H, W] (C in 1, 3 or 4)")


def _image(img: Any, size: int | None) -> Tensor:
    """One image (PIL, tensor ``[C, H, W]`` or ``[H, W]``, array ``[H, W(, C)]``) as a ``[C, H, W]`` tensor, its
    shorter side resized to ``size`` and centre-cropped to ``size x size`` when ``size`` is given."""
    from torchvision.transforms import functional as TF  # noqa: N812

    if isinstance(img, np.ndarray):
        img = torch.from_numpy(img)
        img = img.permute(2, 0, 1) if img.ndim == 3 else img
    if isinstance(img, Tensor):
        img = img.unsqueeze(0) if img.ndim == 2 else img
    elif img.mode not in ("L", "RGB"):  # a PIL image: palette, RGBA, CMYK ... as RGB
        img = img.convert("RGB")
    if size is not None:
        img = TF.center_crop(TF.resize(img, size), [size, size])
    return img if isinstance(img, Tensor) else TF.pil_to_tensor(img)


def read_dataset(ds: Any, image_size: int | None, what: str) -> tuple[Tensor, Tensor]:
    """All samples of a torchvision-style data set as ``(inputs, int64 labels)``.

    A data set with array-like ``.data`` and ``.targets`` (or ``.labels``) and no ``transform`` of its own (MNIST,
    CIFAR, SVHN ...) is read from those at once; any other by iterating its ``(image, label)`` pairs.
    """
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", getattr(ds, "labels", None))
    if (
        isinstance(data, (Tensor, np.ndarray))
        and targets is not None
        and len(data) == len(targets)
        and getattr(ds, "transform", None) is None
        and image_size is None
    ):
        x = _to_chw(torch.as_tensor(np.asarray(data)), what)
        return x, torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
    xs, ys = [], []
    for i in range(len(ds)):
        sample = ds[i]
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise ValueError(f"{what}: item {i} is not an (image, label) pair")
        xs.append(_image(sample[0], image_size))
        ys.append(int(sample[1]))
        if xs[-1].shape != xs[0].shape:
            raise ValueError(
                f"{what}: images differ in shape ({tuple(xs[0].shape)} and {tuple(xs[-1].shape)} at item {i}); set "
                "image_size to resize them to one size"
            )
    if not xs:
        raise ValueError(f"{what} is empty")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


class TorchvisionStream(ContinualDataModule):
    """Class- or task-incremental stream over any torchvision-style data set: ``dataset`` is its class path, built
    twice, ``dataset(**dataset_args, **train_args)`` for training and ``dataset(**dataset_args, **test_args)`` for
    testing, and its classes are dealt to tasks like Split CIFAR's.

    The samples are read once into memory: from ``.data`` and ``.targets`` (or ``.labels``) when the data set has them
    as arrays (torchvision's MNIST family, CIFAR, SVHN ...), else from its ``(image, label)`` pairs (PIL images,
    tensors or arrays, which must share one shape unless ``image_size`` resizes them). ``uint8`` images stay
    ``uint8`` and are scaled to [0, 1] by the transform, then normalised with ``mean`` and ``std`` if given.

    Args:
        dataset: Class path of the data set, e.g. ``torchvision.datasets.SVHN``.
        dataset_args: Arguments of both splits, e.g. ``{"root": "data", "download": true}``.
        train_args: Arguments of the training split (default ``{"train": true}``; SVHN: ``{"split": "train"}``).
        test_args: Arguments of the test split (default ``{"train": false}``; SVHN: ``{"split": "test"}``).
        num_classes: Number of classes; ``None`` takes ``len(dataset.classes)`` or the largest label + 1, which builds
            the training split as soon as it is asked (the CLI asks it to size the model's head).
        n_tasks: Number of tasks; must divide the number of classes unless ``classes_per_task`` is given.
        class_order: Order in which the classes are dealt to tasks: a list, ``"sorted"``, ``"random"`` (drawn from
            ``seed``) or ``"icarl"`` (:func:`~clfw.data.resolve_class_order`); default ``0..C-1``.
        classes_per_task: Uneven split, e.g. ``[50, 10, 10, 10, 10, 10]``.
        image_size: Resize (shorter side) and centre-crop each image to this size; ``None`` keeps them as they are.
        mean: Per-channel mean after scaling to [0, 1]; ``None`` with ``std`` ``None`` skips normalisation.
        std: Per-channel standard deviation after scaling.
        augment: Random crop with ``padding`` and horizontal flip of training batches, replay included.
        padding: Zero padding of the random crop.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        dataset: str,
        dataset_args: dict[str, Any] | None = None,
        train_args: dict[str, Any] | None = None,
        test_args: dict[str, Any] | None = None,
        num_classes: int | None = None,
        n_tasks: int | None = 5,
        class_order: ClassOrder = None,
        classes_per_task: list[int] | None = None,
        image_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = False,
        padding: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.scenario == "domain":
            raise ValueError(f"{type(self).__name__} is class- or task-incremental, not 'domain'")
        if (mean is None) != (std is None) or (mean is not None and std is not None and len(mean) != len(std)):
            raise ValueError(f"mean and std must be given together, with one value per channel; got {mean}, {std}")
        if (image_size is not None and image_size < 1) or padding < 0:
            raise ValueError(f"need image_size >= 1 (or None) and padding >= 0, got {image_size}, {padding}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}")
        self.dataset_cls = dataset_class(dataset)
        self.dataset = dataset
        self.dataset_args = dict(dataset_args or {})
        self.split_args = {
            "train": dict({"train": True} if train_args is None else train_args),
            "test": dict({"train": False} if test_args is None else test_args),
        }
        self.image_size, self.mean, self.std, self.augment, self.padding = image_size, mean, std, augment, padding
        self.n_tasks_arg, self.classes_per_task = n_tasks, classes_per_task
        self.class_order_arg = class_order
        self._num_classes = num_classes
        self._loaded: dict[str, tuple[Tensor, Tensor]] = {}
        self._sizes: list[int] | None = None
        if num_classes is not None:
            self._resolve(num_classes)

    def _resolve(self, num_classes: int) -> None:
        self._num_classes = num_classes
        self._sizes = classes_per_task_split(num_classes, self.n_tasks_arg, self.classes_per_task)
        self.class_order = resolve_class_order(self.class_order_arg, range(num_classes), self.seed)

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self._loaded:
            args = {**self.dataset_args, **self.split_args[split]}
            what = f"{self.dataset}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
            try:
                ds = self.dataset_cls(**args)
            except (TypeError, RuntimeError, OSError) as err:
                raise ValueError(f"{what} failed: {err}") from err
            self._loaded[split] = read_dataset(ds, self.image_size, what)
            if split == "train" and self._num_classes is None:
                classes = getattr(ds, "classes", None)
                y = self._loaded[split][1]
                self._resolve(len(classes) if classes is not None else int(y.max()) + 1)
        return self._loaded[split]

    @property
    @override
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._split("train")
        return self._num_classes  # type: ignore[return-value]

    @property
    @override
    def n_tasks(self) -> int:
        if self._sizes is None:
            if self.classes_per_task is not None:
                return len(self.classes_per_task)
            if self.n_tasks_arg is not None:
                return self.n_tasks_arg
            self._split("train")
        return len(self._sizes)  # type: ignore[arg-type]

    @override
    def build_stream(self) -> Stream:
        train, test = self._split("train"), self._split("test")
        self._loaded = {}  # the tasks hold the samples now
        for name, (_, y) in (("training", train), ("test", test)):
            bad = y[(y < 0) | (y >= self.num_classes)]
            if len(bad):
                raise ValueError(f"{self.dataset}: {name} label {int(bad[0])} is outside [0, {self.num_classes})")
        assert self._sizes is not None and self.class_order is not None
        tasks = class_incremental_tasks(train, test, self.class_order, self._sizes, self.val_fraction, self.seed)
        shape = tuple(train[0].shape[1:])
        if tuple(test[0].shape[1:]) != shape:
            raise ValueError(
                f"{self.dataset}: training inputs {shape} and test inputs {tuple(test[0].shape[1:])} differ"
            )
        return Stream(tasks, self.scenario, self.num_classes, shape, self.task_boundaries_visible)

    @override
    def eval_transform(self) -> Normalize:
        scale = 255.0 if self.stream.tasks[0].train.x.dtype == torch.uint8 else 1.0
        if self.mean is None or self.std is None:
            return Normalize((0.0,), (1.0,), scale=scale)
        return Normalize(self.mean, self.std, scale=scale)

    @override
    def train_transform(self) -> nn.Module:
        if not self.augment:
            return self.eval_transform()
        return nn.Sequential(RandomCropFlip(self.padding), self.eval_transform())

"""Domain-incremental streams over a list of domains (image folders or torchvision-style data sets), one task each."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from clfw import Normalize, RandomCropFlip, Stream
from clfw.benchmarks.image_folder import EXTENSIONS, ImageFileStream, fit_image, image_inputs
from clfw.benchmarks.torchvision_stream import dataset_class
from clfw.data import Inputs, ScenarioName, domain_tasks, take
from clfw.seeding import derived_generator

FOLDER_LAYOUT = "root/<class>/<image>, or root/train/<class>/<image> and root/test/<class>/<image>"
SPEC_KEYS = ("dataset", "dataset_args", "train_args", "test_args", "classes")

Split = tuple[Inputs, Tensor]


def _subfolders(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS))


class DomainStream(ImageFileStream):
    """Domain-incremental stream: one task per domain, the same classes in every domain (the CORe50 sessions of
    Lomonaco & Maltoni 2017's "new instances" scenario, the DomainNet domains of Peng et al. 2019, digits across data
    sets ...). Every task holds all classes; the head is shared and never masked.

    Each entry of ``domains`` is a task, in order, and is either:

    - an image folder, ``root/<class>/<image>``, split at random into training and test images (``test_fraction`` of
      the domain's images, drawn from ``split_seed`` and the domain's position, not stratified), or
      ``root/train/<class>/<image>`` and ``root/test/<class>/<image>``, the domain's own split, used as it is;
    - a torchvision-style data set, a mapping ``{"dataset": "torchvision.datasets.SVHN", "dataset_args": {"root":
      "data"}, "train_args": {"split": "train"}, "test_args": {"split": "test"}, "classes": [...]}`` (the keys of
      :class:`~clfw.benchmarks.TorchvisionStream`). The class is built twice, with ``dataset_args`` plus ``train_args``
      (default ``{"train": true}``, the convention of MNIST, USPS, CIFAR) and with ``dataset_args`` plus
      ``test_args`` (default ``{"train": false}``); its items are ``(image, label)`` pairs, the image a PIL
      image or a ``[C, H, W]`` tensor. Its class names, in label order, are ``classes`` when given, else its
      ``classes`` attribute (USPS and SVHN have none: name them). Downloads are the data set's own (``"download":
      true`` in ``dataset_args``).

    Every domain must name the same classes: a mismatch is an error naming the domain and the classes it lacks or
    adds. Labels follow the first domain's class order (sorted folder names); the other domains' labels are mapped by
    name. Every image is decoded once into memory as ``uint8`` RGB ``image_size x image_size`` (shorter side resized to
    ``resize``, by default ``image_size * 256 / 224``, then a centre crop, as
    :class:`~clfw.benchmarks.ImageFolderStream` decodes): 3 * ``image_size``² bytes each; with ``in_memory=False``
    (image-folder domains only) the files are decoded from disk by the loader's workers when served, the same batches
    bit for bit. Training batches are augmented by a random crop (padding ``image_size // 8``) and a horizontal flip;
    inputs are scaled to [0, 1], or normalised with ImageNet's statistics (``normalize``).

    Args:
        domains: One image folder path or data set mapping per task, in task order.
        image_size: Side of the stored (and served) square images.
        resize: Shorter side before the centre crop (default ``image_size * 256 / 224``); ``image_size`` keeps whole
            square images, such as CORe50's 128 x 128 frames, unresampled.
        test_fraction: Fraction of a folder domain's images held out for testing (folders without their own split).
        split_seed: Seed of those train/test splits.
        augment: Random crop and flip of training batches.
        normalize: ImageNet normalisation instead of [0, 1] scaling.
        in_memory: Decode every image once, at setup, and hold them in memory; ``False`` decodes them from disk in
            the loader's workers when they are served (set ``num_workers``): bit-identical batches. Needs every domain
            to be an image folder (a data set's items are not files).
        replay_image_size: Opt-in, changes results: replay memories store copies downscaled to this side and replay
            them upscaled back to ``image_size`` (:class:`~clfw.benchmarks.ImageFolderStream`); ``None`` stores the
            exact images.
        scenario: Only ``"domain"`` is supported.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (seed, batch sizes, epochs ...).
    """

    def __init__(
        self,
        domains: list[str | dict[str, Any]],
        image_size: int = 224,
        resize: int | None = None,
        test_fraction: float = 0.2,
        split_seed: int = 42,
        augment: bool = True,
        normalize: bool = False,
        in_memory: bool = True,
        replay_image_size: int | None = None,
        scenario: ScenarioName = "domain",
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario=scenario, **kwargs)
        if scenario != "domain":
            raise ValueError(f"DomainStream supports only scenario='domain', got {scenario!r}")
        if not domains:
            raise ValueError("domains must list at least one image folder or data set (one per task)")
        if not 0.0 < test_fraction < 1.0 or image_size < 8:
            raise ValueError(f"need 0 < test_fraction < 1 and image_size >= 8, got {test_fraction}, {image_size}")
        if resize is not None and resize < image_size:
            raise ValueError(f"resize must be >= image_size={image_size} (or null), got {resize}")
        self.init_storage(in_memory, replay_image_size, image_size)
        self.domains = [self._checked(d, i) for i, d in enumerate(domains)]
        datasets = [i for i, d in enumerate(self.domains) if not isinstance(d, str)]
        if not in_memory and datasets:
            raise ValueError(
                f"in_memory=false reads image files from disk, but domains{datasets} are data sets (their items are "
                "not files); use image-folder domains only, or in_memory=true"
            )
        self.image_size, self.resize = image_size, resize
        self.test_fraction, self.split_seed = test_fraction, split_seed
        self.augment, self.normalize = augment, normalize
        self._names: dict[int, list[str]] = {}  # class names of each domain, once known
        self._datasets: dict[tuple[int, str], Any] = {}  # data sets built to learn their classes, reused by the build
        for i, domain in enumerate(self.domains):  # folders: check the classes now, before any image is decoded
            if isinstance(domain, str):
                self._match(i, self._folder_classes(i, domain))

    # ------------------------------------------------------------------------------------------------- domains
    @staticmethod
    def _checked(domain: str | Mapping[str, Any], i: int) -> str | dict[str, Any]:
        if isinstance(domain, str):
            if not os.path.isdir(domain):
                raise ValueError(f"domains[{i}]={domain!r} does not exist (expected an image folder: {FOLDER_LAYOUT})")
            return domain
        if not isinstance(domain, Mapping) or not isinstance(domain.get("dataset"), str):
            raise ValueError(
                f"domains[{i}] must be an image folder path or a mapping with a 'dataset' class path "
                f"(keys {list(SPEC_KEYS)}), got {domain!r}"
            )
        unknown = sorted(set(domain) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"domains[{i}] has unknown keys {unknown}; expected some of {list(SPEC_KEYS)}")
        try:
            dataset_class(domain["dataset"])
        except ValueError as err:
            raise ValueError(f"domains[{i}]: {err}") from None
        return dict(domain)

    @staticmethod
    def _folder_classes(i: int, root: str) -> list[str]:
        """The class names of folder domain ``i`` (checking its layout)."""
        top = _subfolders(root)
        if {"train", "test"} <= set(top):
            train, test = (_subfolders(os.path.join(root, s)) for s in ("train", "test"))
            if train != test:
                raise ValueError(
                    f"domains[{i}]={root!r}: train/ has classes {train} but test/ has {test}; both must hold the same "
                    "class subfolders"
                )
            top = train
        if not top:
            raise ValueError(f"domains[{i}]={root!r} has no class subfolders (expected {FOLDER_LAYOUT})")
        return top

    def _split_folders(self, root: str) -> tuple[str, str] | None:
        top = _subfolders(root)
        return (os.path.join(root, "train"), os.path.join(root, "test")) if {"train", "test"} <= set(top) else None

    def _dataset(self, i: int, split: str) -> Any:
        """The data set of domain ``i``'s ``split``, built once."""
        if (i, split) not in self._datasets:
            spec = self.domains[i]
            cls = dataset_class(spec["dataset"])  # importable: checked in __init__
            extra = spec.get(f"{split}_args", {"train": split == "train"})
            self._datasets[(i, split)] = cls(**{**spec.get("dataset_args", {}), **extra})
        return self._datasets[(i, split)]

    def _dataset_classes(self, i: int) -> list[str]:
        spec = self.domains[i]
        if spec.get("classes") is not None:
            return [str(c) for c in spec["classes"]]
        data = self._dataset(i, "train")
        names = getattr(data, "classes", None)
        if names is None:
            raise ValueError(
                f"domains[{i}]: {spec['dataset']} has no 'classes' attribute; name its classes in label order with "
                "'classes' in the domain's mapping"
            )
        return [str(c) for c in names]

    def class_names(self, i: int = 0) -> list[str]:
        """The class names of domain ``i``, in its label order (folders: sorted)."""
        if i not in self._names:
            domain = self.domains[i]
            names = self._folder_classes(i, domain) if isinstance(domain, str) else self._dataset_classes(i)
            self._match(i, names)
        return self._names[i]

    def _match(self, i: int, names: list[str]) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"domains[{i}] repeats class names: {names}")
        first = self._names.get(0) if i else names
        if first is None:
            first = self.class_names(0)
        if set(names) != set(first):
            lacks, adds = sorted(set(first) - set(names)), sorted(set(names) - set(first))
            raise ValueError(
                f"domains[{i}] ({self._describe(i)}) does not have domain 0's classes: it lacks {lacks} and adds "
                f"{adds}; every domain must hold the same classes"
            )
        self._names[i] = names

    def _describe(self, i: int) -> str:
        domain = self.domains[i]
        return domain if isinstance(domain, str) else domain["dataset"]

    @property
    @override
    def num_classes(self) -> int:
        return len(self.class_names(0))

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.domains)

    # -------------------------------------------------------------------------------------------------- loading
    def _labels(self, i: int, names: Sequence[str]) -> Tensor:
        """Domain ``i``'s class names mapped to the stream's labels (the first domain's order)."""
        label = {name: k for k, name in enumerate(self.class_names(0))}
        return torch.tensor([label[n] for n in names], dtype=torch.long)

    def _load_folder(self, i: int, root: str) -> tuple[Split, Split]:
        names = self.class_names(i)
        split = self._split_folders(root)
        parts = []
        for folder in split if split is not None else (root,):
            files = [(os.path.join(folder, c, f), c) for c in names for f in _images(os.path.join(folder, c))]
            if not files:
                raise ValueError(f"domains[{i}]: no images ({', '.join(EXTENSIONS)}) in the class folders of {folder}")
            paths = [p for p, _ in files]
            name = f"{type(self).__name__} domain {i}"
            x = image_inputs(paths, self.image_size, self.resize, name=name, in_memory=self.in_memory)
            parts.append((x, self._labels(i, [c for _, c in files])))
        if split is not None:
            return parts[0], parts[1]
        x, y = parts[0]
        perm = torch.randperm(len(y), generator=derived_generator(self.split_seed, i))
        n_test = round(self.test_fraction * len(y))
        test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
        return (take(x, train), y[train]), (take(x, test), y[test])

    def _load_dataset(self, i: int, split: str) -> Split:
        from torchvision.transforms import functional as TF  # noqa: N812

        data, names, start = self._dataset(i, split), self.class_names(i), time.perf_counter()
        x = torch.empty((len(data), 3, self.image_size, self.image_size), dtype=torch.uint8)
        y = []
        for k in range(len(data)):
            img, label = data[k]
            label = int(label)
            if not 0 <= label < len(names):
                raise ValueError(f"domains[{i}] {split} item {k} has label {label}, outside its {len(names)} classes")
            x[k] = fit_image(TF.to_pil_image(img) if isinstance(img, Tensor) else img, self.image_size, self.resize)
            y.append(names[label])
            if (k + 1) % 2000 == 0 or k + 1 == len(data):
                rank_zero_info(
                    f"{type(self).__name__} domain {i} ({split}): {k + 1}/{len(data)} images "
                    f"({time.perf_counter() - start:.0f} s)"
                )
        return x, self._labels(i, y)

    @override
    def build_stream(self) -> Stream:
        splits = []
        for i, domain in enumerate(self.domains):
            if isinstance(domain, str):
                splits.append(self._load_folder(i, domain))
            else:
                splits.append((self._load_dataset(i, "train"), self._load_dataset(i, "test")))
        self._datasets.clear()
        tasks = domain_tasks(splits, self.num_classes, self.val_fraction, self.seed)
        shape = (3, self.image_size, self.image_size)
        return Stream(tasks, "domain", self.num_classes, shape, self.task_boundaries_visible)

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

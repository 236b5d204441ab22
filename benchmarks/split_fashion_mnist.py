"""Split Fashion-MNIST: the ten Fashion-MNIST classes cut into tasks of disjoint classes."""

from __future__ import annotations

from typing import Any, Literal

from clfw.benchmarks.split_mnist import SplitMNIST
from clfw.data import ClassOrder

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


class SplitFashionMNIST(SplitMNIST):
    """Split Fashion-MNIST (Xiao et al. 2017's data set; class- or task-incremental): Split MNIST's protocol on
    Fashion-MNIST, 5 tasks of 2 classes in label order (T-shirt/top, trouser | pullover, dress | coat, sandal | shirt,
    sneaker | bag, ankle boot), as in Farquhar & Gal 2018 ("Towards Robust Evaluations of Continual Learning").

    The 60,000 / 10,000 images are read by torchvision's ``FashionMNIST`` from
    ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``download: true`` fetches them), through
    the MNIST streams' source code (:mod:`clfw.benchmarks.mnist`); there is no offline copy. Inputs are normalised
    with the training set's statistics (mean 0.2860, std 0.3530).

    Args:
        n_tasks: Number of tasks; must divide the number of classes unless ``classes_per_task`` is given.
        class_order: Order in which the classes are dealt to tasks: a list, ``"sorted"``, ``"random"`` (drawn from
            ``seed``) or ``"icarl"`` (:func:`~clfw.data.resolve_class_order`); default ``0..9``.
        classes_per_task: Uneven split, e.g. ``[5, 1, 1, 1, 1, 1]``.
        classes: Only these labels form the stream; the head keeps all 10 classes.
        root: Folder that holds (or will hold) ``FashionMNIST/raw/``.
        download: Let torchvision download Fashion-MNIST into ``root``.
        source: Only ``"torchvision"``.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (scenario, seed, batch sizes, epochs ...).
    """

    dataset = "FashionMNIST"
    mean_std = (FASHION_MNIST_MEAN, FASHION_MNIST_STD)

    def __init__(
        self,
        n_tasks: int | None = 5,
        class_order: ClassOrder = None,
        classes_per_task: list[int] | None = None,
        classes: list[int] | None = None,
        root: str = "data",
        download: bool = False,
        source: Literal["torchvision"] = "torchvision",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            n_tasks=n_tasks,
            class_order=class_order,
            classes_per_task=classes_per_task,
            classes=classes,
            source=source,
            root=root,
            download=download,
            offline_train_per_class=400,  # unused: the offline source has MNIST only
            **kwargs,
        )

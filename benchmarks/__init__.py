"""Task streams: one ``ContinualDataModule`` subclass per module."""

from clfw.benchmarks.image_folder import ImageFolderStream
from clfw.benchmarks.mnist import MNISTStream
from clfw.benchmarks.permuted_mnist import PermutedMNIST
from clfw.benchmarks.rotated_mnist import RotatedMNIST
from clfw.benchmarks.split_cifar10 import SplitCIFAR10
from clfw.benchmarks.split_cifar100 import SplitCIFAR100
from clfw.benchmarks.split_imagenet_r import SplitImageNetR
from clfw.benchmarks.split_mnist import SplitMNIST

__all__ = [
    "ImageFolderStream",
    "MNISTStream",
    "PermutedMNIST",
    "RotatedMNIST",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitImageNetR",
    "SplitMNIST",
]

"""Task streams: one ``ContinualDataModule`` subclass per module."""

from clfw.benchmarks.avalanche import AvalancheStream
from clfw.benchmarks.domain import DomainStream
from clfw.benchmarks.image_folder import ImageFolderStream
from clfw.benchmarks.mnist import MNISTStream
from clfw.benchmarks.permuted_mnist import PermutedMNIST
from clfw.benchmarks.rotated_mnist import RotatedMNIST
from clfw.benchmarks.split_cifar10 import SplitCIFAR10
from clfw.benchmarks.split_cifar100 import SplitCIFAR100
from clfw.benchmarks.split_cub200 import SplitCUB200
from clfw.benchmarks.split_fashion_mnist import SplitFashionMNIST
from clfw.benchmarks.split_imagenet_r import SplitImageNetR
from clfw.benchmarks.split_mnist import SplitMNIST
from clfw.benchmarks.split_tiny_imagenet import SplitTinyImageNet
from clfw.benchmarks.torchvision_stream import TorchvisionStream

__all__ = [
    "AvalancheStream",
    "DomainStream",
    "ImageFolderStream",
    "MNISTStream",
    "PermutedMNIST",
    "RotatedMNIST",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitCUB200",
    "SplitFashionMNIST",
    "SplitImageNetR",
    "SplitMNIST",
    "SplitTinyImageNet",
    "TorchvisionStream",
]

"""Task streams: one ``ContinualDataModule`` subclass per module."""

from benchmarks.mnist import MNISTStream
from benchmarks.permuted_mnist import PermutedMNIST
from benchmarks.rotated_mnist import RotatedMNIST
from benchmarks.split_mnist import SplitMNIST

__all__ = ["MNISTStream", "PermutedMNIST", "RotatedMNIST", "SplitMNIST"]

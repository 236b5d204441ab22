"""Continual-learning strategies, one per module: ``ContinualModule`` subclasses, and ``Plugin`` subclasses for the
behaviours that combine with any strategy (regularizers such as EWC)."""

from strategies.cumulative import Cumulative
from strategies.er import ER
from strategies.ewc import EWC
from strategies.joint import Joint
from strategies.lwf import LwF
from strategies.naive import Naive

__all__ = ["ER", "EWC", "Cumulative", "Joint", "LwF", "Naive"]

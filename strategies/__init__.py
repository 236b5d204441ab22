"""Continual-learning strategies: one ``ContinualModule`` subclass per module."""

from strategies.cumulative import Cumulative
from strategies.er import ER
from strategies.joint import Joint
from strategies.naive import Naive

__all__ = ["ER", "Cumulative", "Joint", "Naive"]

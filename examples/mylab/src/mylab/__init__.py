"""mylab: a continual-learning strategy and a plugin written outside clfw."""

from mylab.aligned_replay import AlignedReplay
from mylab.l2_anchor import L2Anchor

__all__ = ["AlignedReplay", "L2Anchor"]

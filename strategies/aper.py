"""APER: the pretrained model adapted on the first task, prototypes on both models' features."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from clfw.strategies.simplecil import SimpleCIL


class APER(SimpleCIL):
    """APER, "aggregate pre-trained model and adapted model" (Zhou, Cai, Ye & Zhan, IJCV 2024, "Revisiting
    Class-Incremental Learning with Pre-Trained Models: Generalizability and Adaptivity are All You Need"; ADAM in its
    first version).

    A frozen copy of the pretrained backbone is kept as it was before training. On the first task the backbone's
    trainable parameters are trained with cross-entropy through the linear head, then frozen
    (:class:`~clfw.frozen.FrozenFeatureModule`); from then on a sample's features are the concatenation of the
    pretrained copy's and the adapted backbone's, and classes are scored by cosine similarity to their prototypes
    (class means of those features), as :class:`~clfw.strategies.SimpleCIL` does.

    Deviations: the paper adapts with one of its parameter-efficient modules (adapter, SSF, VPT) or full fine-tuning;
    here whatever the given backbone leaves trainable is adapted (everything for a plain model: APER's fine-tuning
    variant). The copy is taken when the strategy meets the stream (before any training) and rides in checkpoints.

    Args:
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(adapt_first_task=True, **kwargs)

    @override
    def feature_dim(self) -> int:
        return 2 * self._num_features(self.backbone)

    @override
    def build_for_stream(self) -> None:
        super().build_for_stream()
        self.pretrained = copy.deepcopy(self.backbone).requires_grad_(False)  # before any training

    @override
    def frozen_features(self, x: Tensor) -> Tensor:
        with torch.no_grad():  # evaluators and task_features call it in eval mode
            frozen = self.pretrained(x)
        return torch.cat([frozen, self.features(x)], dim=1)

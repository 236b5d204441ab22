"""An L2 pull toward the previous task's weights, as a clfw plugin for any strategy."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from clfw import Batch, ContinualModule, Plugin
from clfw.plugins import flat_parameters


class L2Anchor(Plugin):
    """Adds ``weight * ||theta - theta*||^2``, ``theta*`` being the trainable weights at the end of the previous task
    (the "L2" baseline of Kirkpatrick et al., PNAS 2017). Logged as ``train/l2_anchor``.

    Args:
        weight: Weight of the penalty.
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = weight
        self.register_buffer("anchor", torch.empty(0))  # sized in on_setup, before a checkpoint is loaded into it
        self.register_buffer("anchored", torch.zeros((), dtype=torch.bool))

    @override
    def on_setup(self, module: ContinualModule) -> None:
        self.anchor = flat_parameters(module).detach().clone()

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        self.anchor.copy_(flat_parameters(module).detach())  # detached: else the anchor stays in the autograd graph
        self.anchored.fill_(True)

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.anchored:
            return {}
        return {"l2_anchor": self.weight * (flat_parameters(module) - self.anchor).pow(2).sum()}

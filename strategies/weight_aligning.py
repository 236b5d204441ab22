"""Weight Aligning (WA), as a plugin for any strategy with a linear head."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from clfw import ContinualModule, Plugin


class WeightAligning(Plugin):
    """Weight Aligning (Zhao, Xiao, Gan, Zhang & Xia, CVPR 2020, "Maintaining Discrimination and Fairness in Class
    Incremental Learning").

    At the end of every task after the first, the head rows of the task's new classes are rescaled by
    ``gamma = mean_old ||w_c|| / mean_new ||w_c||`` (the mean L2 norms of the old classes' and of the new classes'
    weight vectors), so the new classes' logits are no longer favoured for having larger weights; the biases and
    every other row are unchanged (as in PyCIL's ``weight_align``). Old classes are those of the earlier tasks; a task
    without new classes (domain-IL) is left as it is. The method WA is this plugin on a replay strategy with
    knowledge distillation of the previous model: ``configs/model/wa.yaml`` (ER + ``LwF`` with PyCIL's weight 2 and
    T = 2 + this plugin).

    Deviations: the paper's weight clipping (keeping the head's weights non-negative) is not applied, as in PyCIL's
    reference implementation; the alignment happens at the task's end, before the task's last evaluation, so the
    accuracy matrix measures the aligned model.
    """

    @staticmethod
    def align(weight: Tensor, old: Tensor, new: Tensor) -> float:
        """Rescales ``weight[new]`` in place by ``gamma`` (computed from the rows ``old`` and ``new``); returns it.

        >>> w = torch.tensor([[1.0, 0.0], [0.0, 3.0], [4.0, 0.0], [0.0, 4.0]])
        >>> WeightAligning.align(w, torch.tensor([0, 1]), torch.tensor([2, 3]))
        0.5
        >>> w.tolist()
        [[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 2.0]]
        """
        norms = weight.norm(dim=1)
        gamma = float(norms[old].mean() / norms[new].mean())
        weight[new] *= gamma
        return gamma

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        tasks = module.stream.tasks
        old = sorted({c for t in tasks[:task] for c in t.classes})
        new = sorted(set(tasks[task].classes) - set(old))
        if not old or not new:
            return
        weight = module.head.weight
        with torch.no_grad():
            self.align(weight, torch.tensor(old, device=weight.device), torch.tensor(new, device=weight.device))

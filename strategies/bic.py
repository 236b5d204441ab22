"""BiC's bias correction, as a plugin for any strategy."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import ContinualModule, Plugin
from clfw.buffers import ReservoirBuffer
from clfw.evaluation import eval_mode


class BiasCorrection(Plugin):
    """The bias correction of BiC (Wu, Chen, Wang, Ye, Liu, Guo & Fu, CVPR 2019, "Large Scale Incremental Learning").

    After each task ``t >= 1`` the logits of the task's new classes ``o_k`` are replaced, in prediction, by
    ``alpha_t o_k + beta_t`` (the other classes' logits unchanged; earlier tasks keep their own fitted pair). The two
    parameters are fitted at the task's end, with the model frozen, by minimising the cross-entropy (over the seen
    classes, earlier corrections applied) on held-out validation samples balanced over the classes: up to
    ``val_per_class`` samples of each new class from the task's validation split, and those kept from earlier tasks'
    validation splits (a memory of ``val_per_class`` per class). The fit is exact (L-BFGS to convergence on the two
    parameters, float64). The method BiC is this plugin on a replay strategy with distillation:
    ``configs/model/bic.yaml`` (ER + ``LwF`` + this plugin). Only class-IL streams are corrected (in task- and
    domain-IL there is no new-class bias to correct: the pairs stay ``(1, 0)``).

    The held-out samples come from the datamodule's validation split (``data.val_fraction > 0``, refused otherwise),
    so they are never trained on, as the paper requires. Deviations: the paper carves the validation samples out of
    the exemplar memory and the new data (1:9), and its distillation teacher includes the previous bias layers; here
    the teacher is the uncorrected model (the correction acts on predictions only) and the distillation weight is
    LwF's fixed one rather than the paper's ``n_old / (n_old + n_new)``.

    Args:
        val_per_class: Validation samples kept per class.
        max_iter: L-BFGS iterations of the fit.
    """

    needs_validation_split: ClassVar[bool] = True

    def __init__(self, val_per_class: int = 20, max_iter: int = 100) -> None:
        super().__init__()
        if val_per_class < 1 or max_iter < 1:
            raise ValueError(f"val_per_class and max_iter must be >= 1, got {val_per_class} and {max_iter}")
        self.val_per_class, self.max_iter = val_per_class, max_iter
        self.memory: ReservoirBuffer | None = None

    @override
    def on_setup(self, module: ContinualModule) -> None:
        stream = module.stream
        if stream.tasks[0].val is None:
            raise ValueError(
                "BiasCorrection fits its parameters on held-out data: set data.val_fraction > 0 (e.g. 0.1)"
            )
        if self.memory is None:
            self.memory = ReservoirBuffer(self.val_per_class * stream.num_classes, 0, "val_per_class")
            self.memory.replayable = False  # held out: no replay plugin may train on it
            self.register_buffer("pairs", torch.tensor([[1.0, 0.0]] * stream.n_tasks, device=module.device))

    @staticmethod
    def fit(logits: Tensor, y: Tensor, new: Tensor, max_iter: int = 100) -> tuple[float, float]:
        """``(alpha, beta)`` minimising the cross-entropy of ``logits`` with columns ``new`` mapped to
        ``alpha o + beta`` (unseen classes: ``-inf`` logits)."""
        logits = logits.double()
        params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                                      tolerance_change=1e-14, line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> Tensor:
            optimizer.zero_grad()
            corrected = logits.clone()
            corrected[:, new] = params[0] * logits[:, new] + params[1]
            loss = F.cross_entropy(corrected, y)
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        return float(params[0]), float(params[1])

    def correct(self, module: ContinualModule, scores: Tensor, upto: int) -> Tensor:
        """``scores`` with the fitted pairs of tasks ``1 .. upto`` applied to their new classes."""
        out = scores.clone()
        seen: set[int] = set(module.stream.tasks[0].classes)
        for t in range(1, upto + 1):
            new = [c for c in module.stream.tasks[t].classes if c not in seen]
            seen.update(new)
            if new:
                alpha, beta = self.pairs[t]
                out[:, new] = alpha * scores[:, new] + beta
        return out

    @override
    @torch.no_grad()
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        data = module.stream.tasks[task].val
        keep = torch.cat([(data.y == c).nonzero().flatten()[: self.val_per_class] for c in data.y.unique().tolist()])
        keep = keep.sort().values
        old = sorted({c for t in module.stream.tasks[:task] for c in t.classes})
        new = [c for c in module.stream.tasks[task].classes if c not in old]
        if task >= 1 and new and old and len(self.memory) and module.stream.scenario == "class":
            n = len(self.memory)
            x = torch.cat([module.stored_eval_inputs(self.memory.x[:n]), module.stored_eval_inputs(data.x[keep])])
            y = torch.cat([self.memory.y[:n], data.y[keep].to(self.memory.y.device)])
            t_ids = torch.full_like(y, task)
            with eval_mode(module):
                logits = module.masked(self.correct(module, module(x.to(module.device)), task - 1), t_ids)
            self.pairs[task] = torch.tensor(self.fit(logits.cpu(), y.cpu(), torch.tensor(new), self.max_iter))
        self.memory.add(gather=False, x=data.x[keep], y=data.y[keep])

    @override
    def predict(self, module: ContinualModule, x: Tensor, task_ids: Tensor, scores: Tensor) -> Tensor:
        return self.correct(module, scores, module.stream.n_tasks - 1)

"""Learning without Forgetting, as a plugin for any strategy."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from typing_extensions import override

from clfw import Batch, ContinualModule, Plugin
from clfw.evaluation import eval_mode


class LwF(Plugin):
    """Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017).

    At the end of each task it freezes a copy of the model as the teacher (:meth:`~clfw.ContinualModule.copy_model`:
    the whole network its ``forward`` uses, prompts included, so the teacher predicts exactly as the model did). While
    training later tasks it adds ``alpha * L_old``, the paper's knowledge-distillation loss on the current batch: the
    cross-entropy between the teacher's and the student's temperature-``T`` softmax over the old classes' logits,
    ``-sum_c softmax(z_teacher / T)_c log softmax(z_student / T)_c`` (it differs from the KL divergence only by the
    teacher's entropy, a constant). The old classes are those of the tasks before the current one (all classes in
    domain-IL). The teacher runs in eval mode without gradients. Logged as ``train/lwf``.

    A plugin, so it combines with any strategy (``--model ER --model.plugins+=clfw.strategies.LwF`` is ER + LwF). The
    strategy must return the current batch's raw ``logits`` from ``training_loss``, as clfw's strategies do; otherwise
    the student's logits are recomputed.

    ``weighting="balanced"`` is van de Ven et al.'s weighting ("Three scenarios for continual learning", 2019), whose
    class-IL numbers are the usual reference: the new-task loss weighted 1/t and the distillation (1 - 1/t) T^2 at the
    t-th task, i.e. up to the overall scale the distillation gets ``alpha (t - 1) T^2`` here.

    Args:
        alpha: Weight of the distillation loss (the paper's lambda_o).
        temperature: Softmax temperature T (the paper uses 2).
        weighting: ``"fixed"`` (the paper: ``alpha``) or ``"balanced"`` (``alpha (t - 1) T^2`` at the t-th task).
    """

    def __init__(
        self, alpha: float = 1.0, temperature: float = 2.0, weighting: Literal["fixed", "balanced"] = "fixed"
    ) -> None:
        super().__init__()
        if alpha < 0 or temperature <= 0:
            raise ValueError(f"alpha must be >= 0 and temperature > 0, got {alpha}, {temperature}")
        if weighting not in ("fixed", "balanced"):
            raise ValueError(f"weighting must be 'fixed' or 'balanced', got {weighting!r}")
        self.alpha, self.temperature, self.weighting = alpha, temperature, weighting
        self.teacher: ContinualModule | None = None

    @override
    def on_setup(self, module: ContinualModule) -> None:
        object.__setattr__(self, "_host", module)  # not a submodule: only to rebuild the teacher from checkpoints

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        self.teacher = module.copy_model(frozen=True)

    def old_classes(self, module: ContinualModule) -> Tensor:
        """Boolean mask of the classes distilled while training the current task."""
        stream = module.stream
        if stream.scenario == "domain":
            return torch.ones(stream.num_classes, dtype=torch.bool, device=module.device)
        return stream.seen_class_mask(range(module.current_task)).to(module.device)

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.teacher is None:
            return {}
        old = self.old_classes(module)
        student = outputs["logits"] if "logits" in outputs else module(batch.x)
        with torch.no_grad(), eval_mode(self.teacher):
            target = torch.softmax(self.teacher(batch.x)[:, old] / self.temperature, 1)
        log_p = torch.log_softmax(student[:, old] / self.temperature, dim=1)
        weight = self.alpha * (module.current_task * self.temperature**2 if self.weighting == "balanced" else 1.0)
        return {"lwf": weight * -(target * log_p).sum(1).mean()}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        if self.teacher is None and any(k.startswith(prefix + "teacher.") for k in state_dict):
            host = getattr(self, "_host", None)
            if host is None:
                raise RuntimeError("LwF can load a teacher only once attached to a module (after setup/attach_stream)")
            # the teacher is the model at the end of the last finished task
            self.teacher = host.copy_model(frozen=True, task=host.current_task - (not host.task_ended))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

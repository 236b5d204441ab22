"""The plug-in kit catches what it checks: strategies that break one rule each fail that check, naming it. (Every
clfw strategy passing the same checks is tests/test_contract.py; the kit on an outside package is
tests/test_example_plugin.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from typing_extensions import override

from clfw import Batch
from clfw.strategies import Naive
from clfw.testing import ContractError, check_strategy, model_config


class ForgetsItsStepCount(Naive):
    """Scales its loss by a step counter kept as a plain attribute: the counter is not in checkpoints."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = 0

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        self.steps += 1
        out = super().training_loss(batch)
        return {"loss": out["loss"] * (1 + self.steps / 10), "logits": out["logits"]}


class LeavesEvalMode(Naive):
    """Switches to eval mode at a task end and never back."""

    @override
    def on_task_end(self, task: int) -> None:
        self.eval()


class CountsPredictions(Naive):
    """Counts the samples it predicts in a buffer: evaluating changes the state."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("predicted", torch.zeros((), dtype=torch.long))

    @override
    def predict(self, x: Tensor, task_ids: Tensor) -> Tensor:
        self.predicted += len(x)
        return super().predict(x, task_ids)


class OwnTrainingStep(Naive):
    """Overrides ``training_step`` itself: the plugins' hooks never run."""

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        batch = Batch(*batch)
        return torch.nn.functional.cross_entropy(self.masked(self(batch.x), batch.task), batch.y)


class RankLocalState(Naive):
    """At each task end adds the sample indices of the last batch it trained on, its own rank's shard, to a buffer
    (DDP broadcasts buffers at each forward, not after a task end): under DDP the replicas drift apart (used by
    tests/test_ddp.py)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("indices_seen", torch.zeros((), dtype=torch.long))
        self.last_index = torch.zeros(0, dtype=torch.long)

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        self.last_index = batch.index
        return super().training_loss(batch)

    @override
    def on_task_end(self, task: int) -> None:
        self.indices_seen += self.last_index.sum()


@pytest.mark.parametrize(
    ("strategy", "check", "match"),
    [
        (  # the matrix or, where the tiny run's matrices coincide, the weights: which depends on float rounding
            ForgetsItsStepCount,
            "resume",
            r"\[resume\]: (resumed from step 15, the accuracy matrix .* differs|after a resume, state_dict entry .* "
            r"differs from the uninterrupted run's \(resumed from step 15\))",
        ),
        (LeavesEvalMode, "hygiene", r"\[hygiene\]: at training step \d+ .* train/eval flags differ"),
        (CountsPredictions, "hygiene", r"\[hygiene\]: evaluation changed the state: predicted"),
        (OwnTrainingStep, "composition", r"\[composition\]: .* loss_terms and before_optimizer_step ran \(0, 0, 4\)"),
    ],
)
def test_a_strategy_that_breaks_a_rule_fails_that_check(strategy: type, check: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=match):
        check_strategy(strategy, checks=[check], tmp_path=tmp_path)


def test_bad_input_gets_one_clear_line() -> None:
    with pytest.raises(ValueError, match=r"unknown checks \['speed'\]"):
        check_strategy("clfw.strategies.Naive", checks=["speed"])
    with pytest.raises(ValueError, match=r"neither a clfw\.ContinualModule nor a clfw\.Plugin"):
        model_config("torch.nn.Linear")
    with pytest.raises(ValueError, match=r"cannot import 'clfw\.strategies\.Nope'"):
        model_config("clfw.strategies.Nope")
    with pytest.raises(ValueError, match="must be JSON values"):
        model_config("clfw.strategies.ER", {"buffer_size": torch.tensor(3)})


def test_a_plugin_is_attached_to_the_host_with_the_tiny_defaults() -> None:
    config = model_config("clfw.strategies.EWC", {"ewc_lambda": 2.0})
    assert config["class_path"] == "clfw.strategies.Naive"
    assert config["init_args"]["plugins"] == [{"class_path": "clfw.strategies.EWC", "init_args": {"ewc_lambda": 2.0}}]
    assert config["init_args"]["backbone"]["class_path"] == "clfw.backbones.MLP"
    # a prompt strategy builds its own backbone: the tiny MLP is not offered to it
    assert "backbone" not in model_config("clfw.strategies.L2P")["init_args"]

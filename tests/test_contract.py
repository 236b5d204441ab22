"""Contract tests over every strategy in ``strategies.__all__``: one table of tiny arguments, parametrized.

A strategy without an entry in ``TINY_KWARGS`` fails ``test_every_strategy_has_an_entry``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

import strategies
from clfw import ContinualModule, Plugin
from clfw.backbones import MLP
from clfw.prompt import PromptModule
from tests.helpers import Interrupt, TinyStream, assert_same_state, fit, snapshot, tiny_vit

TINY_KWARGS: dict[str, dict[str, Any]] = {
    "Naive": {},
    "Cumulative": {},
    "Joint": {},
    "ER": {"buffer_size": 20, "replay_batch_size": 4},
    "ERACE": {"buffer_size": 20, "replay_batch_size": 4},
    "DER": {"buffer_size": 20, "replay_batch_size": 4, "alpha": 0.3},
    "DERPP": {"buffer_size": 20, "replay_batch_size": 4, "alpha": 0.2, "beta": 0.5},
    "AGEM": {"buffer_size": 20, "sample_size": 8},
    "ICaRL": {"memory_size": 20, "replay_batch_size": 4},
    "GDumb": {"buffer_size": 20, "epochs": 3, "batch_size": 8},
    "EWC": {"ewc_lambda": 10.0},  # a Plugin: tested on Naive
    "LwF": {"alpha": 1.0, "temperature": 2.0},  # a Plugin: tested on Naive
    "SI": {"c": 1.0, "xi": 0.1},  # a Plugin: tested on Naive
    "MAS": {"mas_lambda": 1.0},  # a Plugin: tested on Naive
    "Refresh": {"delta": 0.01},  # a Plugin: tested on Naive (delta large enough to matter in a tiny run)
    "L2P": {"pool_size": 4, "prompt_length": 2, "top_k": 2},  # prompt strategies: on tests.helpers.tiny_vit
    "DualPrompt": {"g_length": 2, "g_layers": [0], "e_pool_size": 2, "e_length": 2, "e_layers": [1, 2]},
    "CODAPrompt": {"pool_size": 4, "prompt_length": 2, "layers": [0, 1], "ortho_weight": 0.1},
    "ViTBaseline": {"finetune": True},
    # a Plugin: tested on Naive (delta large enough to matter in a tiny run)
}
NAMES = sorted(strategies.__all__)


def make(name: str) -> ContinualModule:
    """The strategy ``name`` with its tiny arguments; a plugin (e.g. EWC) is attached to Naive."""
    cls = getattr(strategies, name)
    common: dict[str, Any] = {
        "backbone": MLP(in_features=16, hidden=(16,), dropout=0.2),
        "optimizer": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    }
    if issubclass(cls, Plugin):
        return strategies.Naive(plugins=[cls(**TINY_KWARGS[name])], **common)
    if issubclass(cls, PromptModule):
        return cls(vit=tiny_vit(), optimizer=common["optimizer"], **TINY_KWARGS[name])
    return cls(**common, **TINY_KWARGS[name])


def test_every_strategy_has_an_entry() -> None:
    missing = [n for n in NAMES if n not in TINY_KWARGS]
    assert not missing, f"add tiny kwargs for {missing} to TINY_KWARGS"


@pytest.mark.parametrize("name", NAMES)
def test_trains_and_resumes_bit_identically_mid_task(name: str, tmp_path: Path) -> None:
    def stream() -> TinyStream:
        return TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2)  # 6 steps per epoch, task 1 = steps 13..24

    torch.manual_seed(0)
    reference = make(name)
    _, ref_matrix = fit(reference, stream())
    assert len(ref_matrix.rows) == 2

    torch.manual_seed(0)
    interrupted = make(name)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=-1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(interrupted, stream(), callbacks=[ckpt, Interrupt(17)], enable_checkpointing=True)

    torch.manual_seed(123)  # resuming must not depend on the global RNG state at restart
    resumed = make(name)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 15 and last["clfw"]["task"] == 1, "resume from the middle of task 1"
    _, matrix = fit(resumed, stream(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert matrix.rows == ref_matrix.rows
    assert_same_state(snapshot(reference), snapshot(resumed), name)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("AGEM", {"buffer_size": 1}, "buffer_size=1"),
        ("ICaRL", {"memory_size": 3}, "memory_size=3"),
        ("ER", {"replay_batch_size": 0}, "replay_batch_size"),
        ("DERPP", {"beta": -1.0}, "beta"),
        ("GDumb", {"epochs": 0}, "epochs"),
    ],
)
def test_bad_arguments_fail_before_training(name: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        m = getattr(strategies, name)(backbone=MLP(in_features=16, hidden=(8,)), **kwargs)
        m.attach_stream(TinyStream(n_tasks=2))

"""Contract tests over every strategy in ``clfw.strategies.__all__``: one table of tiny arguments, parametrized, run
through the plug-in kit ``clfw.testing`` (the same checks a researcher runs on an outside strategy).

A strategy without an entry in ``TINY_KWARGS`` fails ``test_every_strategy_has_an_entry``. The DDP check of the same
table runs in tests/test_ddp.py (one launch for every strategy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import clfw.strategies
from clfw import ContinualModule
from clfw.backbones import MLP
from clfw.testing import build_model, check_strategy, model_config
from tests.helpers import TinyStream

TINY_VIT: dict[str, Any] = {  # a random-weight timm ViT for TinyStream's [1, 4, 4] inputs (tests.helpers.tiny_vit)
    "vit": "vit_tiny_patch16_224",
    "pretrained": False,
    "vit_kwargs": {"img_size": 4, "patch_size": 2, "in_chans": 1, "embed_dim": 16, "depth": 3, "num_heads": 2},
}
TINY_KWARGS: dict[str, dict[str, Any]] = {  # init_args as in a config file; clfw.testing adds a tiny MLP and SGD
    "Naive": {},
    "Cumulative": {},
    "Joint": {},
    "ER": {"buffer_size": 20, "replay_batch_size": 4},
    "ERACE": {"buffer_size": 20, "replay_batch_size": 4},
    "LUCIR": {"buffer_size": 20, "replay_batch_size": 4},
    "PODNet": {"buffer_size": 20, "replay_batch_size": 4, "proxies_per_class": 2},
    "ERAML": {"buffer_size": 20, "replay_batch_size": 4},
    "MIR": {"buffer_size": 20, "replay_batch_size": 4, "subsample": 8},
    "DER": {"buffer_size": 20, "replay_batch_size": 4, "alpha": 0.3},
    "DERPP": {"buffer_size": 20, "replay_batch_size": 4, "alpha": 0.2, "beta": 0.5},
    "XDER": {"buffer_size": 20, "replay_batch_size": 4, "supcon_batch_size": 4, "eta": 0.1, "m": 0.3},
    "AGEM": {"buffer_size": 20, "sample_size": 8},
    "GEM": {"buffer_size": 20, "memory_strength": 0.5},
    "ICaRL": {"memory_size": 20, "replay_batch_size": 4},
    "GDumb": {"buffer_size": 20, "epochs": 3, "batch_size": 8},
    "EWC": {"ewc_lambda": 10.0},  # a Plugin: tested on Naive
    "LwF": {"alpha": 1.0, "temperature": 2.0},  # a Plugin: tested on Naive
    "SI": {"c": 1.0, "xi": 0.1},  # a Plugin: tested on Naive
    "MAS": {"mas_lambda": 1.0},  # a Plugin: tested on Naive
    "Refresh": {"delta": 0.01},  # a Plugin: tested on Naive (delta large enough to matter in a tiny run)
    "L2P": {**TINY_VIT, "pool_size": 4, "prompt_length": 2, "top_k": 2},  # prompt strategies: on the tiny ViT
    "DualPrompt": {**TINY_VIT, "g_length": 2, "g_layers": [0], "e_pool_size": 2, "e_length": 2, "e_layers": [1, 2]},
    "CODAPrompt": {**TINY_VIT, "pool_size": 4, "prompt_length": 2, "layers": [0, 1], "ortho_weight": 0.1},
    "EASE": {**TINY_VIT, "bottleneck": 4},
    "ViTBaseline": {**TINY_VIT, "finetune": True},
    "InfLoRA": {**TINY_VIT, "rank": 2, "threshold": 0.9},
    "CLSER": {"buffer_size": 20, "replay_batch_size": 4, "consistency_weight": 0.5, "stable_update_freq": 0.7},
    "GradientProjection": {"sample_size": 8},  # a Plugin: tested on ER (needs its memory)
    "LRWarmup": {"warmup_steps": 3},  # a Plugin: tested on Naive
    "NearestMeanHead": {"source": "memory"},  # a Plugin: tested on ER (needs its memory)
    "LayerwiseProximalReplay": {"omega_0": 1.0, "every_n_steps": 2},  # a Plugin: tested on ER (needs its memory)
    "WeightAligning": {},  # a Plugin: tested on Naive
    "BiasCorrection": {"val_per_class": 4},  # a Plugin: tested on Naive (streams with a validation split)
    "RanPAC": {"projection_dim": 16},
    "SimpleCIL": {},
    "SLCA": {"ca_epochs": 1, "samples_per_class": 8},
    "APER": {},
}
NAMES = sorted(clfw.strategies.__all__)
ER_HOST: dict[str, Any] = {"class_path": "clfw.strategies.ER", "init_args": TINY_KWARGS["ER"]}
PLUGIN_HOSTS: dict[str, dict[str, Any]] = {  # plugins that need a replay memory: on ER (default host: Naive)
    "GradientProjection": ER_HOST,
    "LayerwiseProximalReplay": ER_HOST,
    "NearestMeanHead": ER_HOST,
}
SINGLE_PROCESS_CHECKS = ("resume", "scenarios", "hygiene", "composition")  # "ddp": tests/test_ddp.py


def config(name: str) -> dict[str, Any]:
    """The model config of ``name`` with its tiny arguments (a plugin such as EWC is attached to Naive, one that needs
    a replay memory to ER)."""
    return model_config(f"clfw.strategies.{name}", TINY_KWARGS[name], plugin_host=host(name))


def host(name: str) -> str | dict[str, Any]:
    """The strategy the plugin ``name`` is attached to in the checks."""
    return PLUGIN_HOSTS.get(name, "clfw.strategies.Naive")


def make(name: str) -> ContinualModule:
    """The strategy ``name`` with its tiny arguments, built from :func:`config` as ``clfw fit`` builds a model."""
    return build_model(config(name))


def test_every_strategy_has_an_entry() -> None:
    missing = [n for n in NAMES if n not in TINY_KWARGS]
    assert not missing, f"add tiny kwargs for {missing} to TINY_KWARGS"


@pytest.mark.parametrize("name", NAMES)
def test_strategy_passes_the_contract_checks(name: str, tmp_path: Path) -> None:
    """Every supported scenario, train/eval hygiene, composition with Refresh and a replay memory, and a bit-identical
    resume from the middle of task 1 (clfw.testing.check_strategy)."""
    check_strategy(
        f"clfw.strategies.{name}",
        TINY_KWARGS[name],
        checks=SINGLE_PROCESS_CHECKS,
        tmp_path=tmp_path,
        plugin_host=host(name),
    )


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("AGEM", {"buffer_size": 1}, "buffer_size=1"),
        ("GEM", {"buffer_size": 1}, "buffer_size=1"),
        ("ICaRL", {"memory_size": 3}, "memory_size=3"),
        ("ER", {"replay_batch_size": 0}, "replay_batch_size"),
        ("DERPP", {"beta": -1.0}, "beta"),
        ("XDER", {"num_views": 1}, "num_views"),
        ("GDumb", {"epochs": 0}, "epochs"),
    ],
)
def test_bad_arguments_fail_before_training(name: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        m = getattr(clfw.strategies, name)(backbone=MLP(in_features=16, hidden=(8,)), **kwargs)
        m.attach_stream(TinyStream(n_tasks=2))

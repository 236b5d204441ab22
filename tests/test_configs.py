"""Configs that never rot: every YAML under ``configs/`` parses through the CLI, and every strategy and plugin config
trains a few steps on the offline stream.

A fragment (a ``data/``, ``model/`` or ``plugins/`` file) is composed with what it lacks, as README.md composes it:
``trainer/cpu.yaml``, ``data/split_mnist.yaml``, ``model/naive.yaml`` (``prompt_digits/`` methods with their
``base.yaml``). The tiny budget is ``--data.n_tasks 2 --data.epochs_per_task 1 --trainer.limit_train_batches 2``
(clfw refuses ``max_steps``: the stream fixes the length of training).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clfw.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
TINY = ["--data.n_tasks=2", "--data.epochs_per_task=1", "--trainer.limit_train_batches=2"]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")


def composed(config: str) -> list[str]:
    """``--config`` arguments: ``config`` after the files that complete it."""
    top = yaml.safe_load((ROOT / config).read_text()) or {}
    base = []
    if config.startswith("configs/prompt_digits/") and config != "configs/prompt_digits/base.yaml":
        base.append("configs/prompt_digits/base.yaml")
    else:
        if "trainer" not in top:
            base.append("configs/trainer/cpu.yaml")
        if "data" not in top:
            base.append("configs/data/split_mnist.yaml")
    if "class_path" not in (top.get("model") or {}) and "model" not in _keys(base):
        base.append("configs/model/naive.yaml")
    return [arg for path in [*base, config] for arg in ("--config", str(ROOT / path))]


def _keys(paths: list[str]) -> set[str]:
    return {k for p in paths for k in (yaml.safe_load((ROOT / p).read_text()) or {})}


def test_every_config_directory_is_in_the_repository() -> None:
    for folder in ("trainer", "data", "model", "plugins"):
        assert any(c.startswith(f"configs/{folder}/") for c in CONFIGS), folder


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses_through_the_cli(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *composed(config), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


RUNNABLE = [c for c in CONFIGS if c.startswith(("configs/model/", "configs/plugins/"))]


@pytest.mark.parametrize("config", RUNNABLE)
def test_every_strategy_and_plugin_config_trains_a_few_steps(config: str, tmp_path: Path) -> None:
    main(["fit", *composed(config), *TINY, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    metrics = yaml.safe_load((tmp_path / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 2

"""The ``clfw`` CLI end to end: composed configs, short names, plug-ins by class path, and clear errors."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import clfw.strategies
from clfw import Plugin
from clfw.cli import ContinualCLI, main

ROOT = Path(__file__).resolve().parents[1]

TRAINER = """
seed_everything: 1
trainer:
  accelerator: cpu
  devices: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
"""
DATA = """
data:
  class_path: tests.helpers.TinyStream
  init_args: {n_tasks: 2, batch_size: 8, epochs_per_task: 2}
"""
MODEL = """
model:
  class_path: clfw.strategies.Naive
  init_args:
    backbone: {class_path: clfw.backbones.MLP, init_args: {in_features: 16, hidden: [8]}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}
"""


def configs(tmp_path: Path, **texts: str) -> list[str]:
    args = []
    for name, text in texts.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        args += ["--config", str(tmp_path / f"{name}.yaml")]
    return args


def test_fit_with_composed_config_files(tmp_path: Path) -> None:
    cli = ContinualCLI(
        args=[
            "fit",
            *configs(tmp_path, trainer=TRAINER, data=DATA, model=MODEL),
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.model.head.out_features == 4, "the head size is linked from the datamodule"
    assert cli.trainer.max_epochs == 4, "max_epochs is derived from the stream"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 2 and len(metrics["accuracy_matrix"]) == 2
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] is None and saved["data"]["init_args"]["epochs_per_task"] == 2


def test_short_names_and_outside_strategy_with_plugin(tmp_path: Path) -> None:
    args = [
        "fit",
        *configs(tmp_path, trainer=TRAINER),
        f"--trainer.default_root_dir={tmp_path}",
        "--data=tests.helpers.TinyStream",
        "--data.batch_size=8",
        "--model=Naive",
        "--model.backbone=clfw.backbones.MLP",
        "--model.backbone.in_features=16",
    ]
    main(args)
    assert json.loads((tmp_path / "metrics.json").read_text())["tasks_completed"] == 2
    main(
        [
            *args[:-4],
            f"--trainer.default_root_dir={tmp_path / 'second'}",  # a run per directory
            "--model=tests.helpers.ScaledLoss",
            "--model.factor=0.5",
            "--model.backbone=clfw.backbones.MLP",
            "--model.backbone.in_features=16",
            "--model.plugins+=tests.helpers.L2Plugin",
            "--model.plugins.weight=0.1",
        ]
    )
    assert json.loads((tmp_path / "second" / "metrics.json").read_text())["tasks_completed"] == 2


def test_unknown_class_path_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs(tmp_path, trainer=TRAINER, data=DATA), "--model=mylab.NoSuchStrategy"])
    assert exit_info.value.code == 2
    assert "Problem with given class_path 'mylab.NoSuchStrategy'" in capsys.readouterr().err


def test_max_epochs_by_hand_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs(tmp_path, trainer=TRAINER, data=DATA, model=MODEL), "--trainer.max_epochs=7"])
    assert exit_info.value.code == 2
    assert re.search(r"trainer.max_epochs=7, but the stream takes .* = 4 epochs", capsys.readouterr().err)


def test_console_script_is_installed() -> None:
    out = subprocess.run(["clfw", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fit" in out.stdout


def test_progress_bar_names_the_task(tmp_path: Path) -> None:
    from clfw import ContinualProgressBar

    cli = ContinualCLI(
        args=[
            "fit",
            *configs(tmp_path, trainer=TRAINER, data=DATA, model=MODEL),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=true",
        ]
    )
    bars = [c for c in cli.trainer.callbacks if isinstance(c, ContinualProgressBar)]
    assert len(bars) == 1
    assert bars[0].train_progress_bar.desc.startswith("Task 1 (2/2), epoch 2/2")


@pytest.mark.parametrize("plugin", ["EWC", "clfw.strategies.LwF"])
def test_model_help_on_a_plugin_says_it_is_a_plugin(plugin: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", plugin])
    assert exit_info.value.code == 2
    name = plugin.rsplit(".", 1)[-1]
    assert f"{name} is a plugin, not a strategy" in capsys.readouterr().err


def test_plugin_help_lists_the_plugins_arguments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--model", "Naive", "--model.plugins.help", "EWC"])
    assert "--plugins.ewc_lambda" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(clfw.strategies.__all__))
def test_help_works_for_every_strategy_and_plugin(name: str, capsys: pytest.CaptureFixture) -> None:
    """``--model.help S`` for a strategy, ``--model.plugins.help P`` for a plugin: each lists every argument."""
    cls = getattr(clfw.strategies, name)
    is_plugin = issubclass(cls, Plugin)
    args = ["fit", "--model", "Naive", "--model.plugins.help", name] if is_plugin else ["fit", "--model.help", name]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    prefix = "--plugins." if is_plugin else "--model."
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    missing = [p for p in params if f"{prefix}{p}" not in out]
    assert not missing, f"{name}'s help lacks {missing}"

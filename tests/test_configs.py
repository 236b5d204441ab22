"""Configs that never rot: every YAML under ``configs/`` parses through the CLI, and every strategy and plugin config
trains a few steps on the offline stream.

A fragment (a ``data/``, ``model/`` or ``plugins/`` file) is composed with what it lacks, as README.md composes it:
``trainer/cpu.yaml``, ``data/split_mnist.yaml``, ``model/naive.yaml`` (``prompt_digits/`` methods with their
``base.yaml``). The tiny budget is ``--data.n_tasks 2 --data.epochs_per_task 1 --trainer.limit_train_batches 2``
(clfw refuses ``max_steps``: the stream fixes the length of training).

``configs/experiments/`` are complete runs: each trains a few steps too (the CIFAR ones on small files in CIFAR's format
written by ``tests.helpers.write_cifar``, with a slim ResNet). ``configs/sweeps/`` holds W&B sweep files, not clfw
configs: ``tests/test_sweeps.py`` renders and parses their commands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clfw.cli import main

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "configs" / "sweeps"
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml") if SWEEPS not in p.parents)
TINY = ["--data.n_tasks=2", "--data.epochs_per_task=1", "--trainer.limit_train_batches=2"]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")


NEEDS_MEMORY = {f"configs/plugins/{name}.yaml" for name in ("gradient_projection", "nearest_mean", "lpr")}  # on ER


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
        base.append("configs/model/er.yaml" if config in NEEDS_MEMORY else "configs/model/naive.yaml")
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
    top = yaml.safe_load((ROOT / config).read_text()) or {}
    # task-end work (Fisher, importances, GDumb's retraining) runs over a task's whole data: keep it small here
    small = [] if "data" in top else ["--data.init_args.offline_train_per_class=20"]
    if config.endswith("gdumb.yaml"):
        small.append("--model.init_args.epochs=2")
    if "BiasCorrection" in (ROOT / config).read_text():
        small.append("--data.init_args.val_fraction=0.2")  # BiC fits on held-out data
    if config.endswith("slca.yaml"):
        small += ["--model.init_args.samples_per_class=16", "--model.init_args.ca_epochs=1"]  # keep the alignment short
    if config.endswith("podnet.yaml"):  # its 3-block CNN over the test split costs a minute: not the point here
        small.append("--model.init_args.backbone.init_args.channels=[8, 8, 8]")
    if config.endswith(("ease.yaml", "inflora.yaml")):  # a one-block ViT: evaluating the test split is the cost here
        vit = "{img_size: 28, patch_size: 7, in_chans: 1, embed_dim: 64, depth: 1, num_heads: 4}"
        small.append(f"--model.init_args.vit_kwargs={vit}")
    if config.endswith("ranpac.yaml"):
        small.append("--model.init_args.projection_dim=64")  # its 2000x2000 float64 Gram sums are not the point here
    args = [*composed(config), *TINY, *small, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    main(["fit", *args])
    metrics = yaml.safe_load((tmp_path / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 2


EXPERIMENTS = [c for c in CONFIGS if c.startswith("configs/experiments/")]


def _resolved(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    return yaml.safe_load(out)


@pytest.mark.parametrize("config", EXPERIMENTS)
def test_every_experiment_trains_a_few_steps(config: str, tmp_path: Path) -> None:
    from tests.helpers import write_cifar

    top = yaml.safe_load((ROOT / config).read_text())
    args = [*composed(config), *TINY, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    stream = top["data"]["class_path"].rsplit(".", 1)[-1]
    if stream in ("SplitCIFAR10", "SplitCIFAR100"):
        write_cifar(tmp_path / "data", stream[5:].lower(), per_class=2)
        args.append(f"--data.init_args.root={tmp_path / 'data'}")
    if top["model"]["init_args"]["backbone"]["class_path"].endswith("ResNet18"):
        args.append("--model.init_args.backbone.init_args.nf=4")
    main(["fit", *args, "--trainer.enable_progress_bar=false"])
    metrics = yaml.safe_load((tmp_path / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 2


def test_the_er_experiment_is_the_composition_behind_the_mnist_results(capsys: pytest.CaptureFixture[str]) -> None:
    """configs/experiments/er_split_mnist.yaml reproduces a row of docs/results_split_mnist.md, whose runs
    (scripts/results_split_mnist.py) compose trainer/cpu.yaml, data/split_mnist.yaml and model/er.yaml."""
    experiment = _resolved(["--config", str(ROOT / "configs/experiments/er_split_mnist.yaml")], capsys)
    parts = ["configs/trainer/cpu.yaml", "configs/data/split_mnist.yaml", "configs/model/er.yaml"]
    composition = _resolved([a for p in parts for a in ("--config", str(ROOT / p))], capsys)
    for c in (experiment, composition):
        c["trainer"]["logger"]["init_args"].pop("name")
    assert experiment == composition


def test_the_derpp_experiment_has_the_der_papers_settings_for_cifar10_buffer_500(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Buzzega et al. 2020, best values for Seq-CIFAR-10 with 500 samples (Mammoth's best_args: seq-cifar10, derpp,
    500): plain SGD (no momentum, no weight decay, no schedule), lr 0.03, batch 32, minibatch 32, alpha 0.2, beta 0.5,
    50 epochs; reduced ResNet-18 with nf 64; 5 tasks of 2 classes, class-IL."""
    config = _resolved(["--config", str(ROOT / "configs/experiments/derpp_split_cifar10_buffer500.yaml")], capsys)
    data, model = config["data"], config["model"]
    assert data["class_path"] == "clfw.benchmarks.SplitCIFAR10" and model["class_path"] == "clfw.strategies.DERPP"
    expected_data = {"n_tasks": 5, "scenario": "class", "batch_size": 32, "epochs_per_task": 50, "augment": True}
    assert {k: data["init_args"][k] for k in expected_data} == expected_data
    args = model["init_args"]
    expected = {"buffer_size": 500, "replay_batch_size": 32, "alpha": 0.2, "beta": 0.5, "lr_scheduler": None}
    assert {k: args[k] for k in expected} == expected
    assert args["backbone"] == {"class_path": "clfw.backbones.ResNet18", "init_args": {"in_channels": 3, "nf": 64}}
    optimizer = args["optimizer"]
    assert optimizer["class_path"] == "torch.optim.SGD"
    sgd = {k: optimizer["init_args"][k] for k in ("lr", "momentum", "weight_decay", "nesterov")}
    assert sgd == {"lr": 0.03, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}


@pytest.mark.parametrize("stream", ["split_mnist", "rotated_mnist"])
@pytest.mark.parametrize("split", ["test", "val"])
def test_the_stability_gap_lab_configs_train_on_their_split(stream: str, split: str, tmp_path: Path) -> None:
    """scripts/stability_gap_lab.py's runs: the stream config, with eval_on_val.yaml for the selection runs."""
    args = ["--config", str(ROOT / f"configs/stability_gap/{stream}.yaml")]
    if split == "val":
        args += ["--config", str(ROOT / "configs/stability_gap/eval_on_val.yaml")]
    tiny = ["--data.init_args.n_tasks=2"] if stream == "split_mnist" else ["--data.init_args.angles=[0, 80]"]
    tiny += ["--data.init_args.epochs_per_task=1", "--trainer.limit_train_batches=3"]
    main(["fit", *args, *tiny, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    metrics = yaml.safe_load((tmp_path / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 2 and metrics["continual"]["split"] == split
    assert metrics["continual"]["steps"] == list(range(7)), "evaluated before training and after every step"
    assert metrics["run"]["config"]["model"]["init_args"]["buffer_size"] == 120


def test_the_stability_gap_lab_streams_hold_what_docs_stability_gap_md_says() -> None:
    from clfw.benchmarks import RotatedMNIST, SplitMNIST

    split = SplitMNIST(n_tasks=5, scenario="class", source="offline", val_fraction=0.1).stream
    rotated = RotatedMNIST(angles=[0, 80, 160], source="offline", val_fraction=0.1).stream
    assert [(len(t.train), len(t.val), len(t.test)) for t in split.tasks] == [(720, 80, 200)] * 5
    assert [(len(t.train), len(t.val), len(t.test)) for t in rotated.tasks] == [(3600, 400, 1000)] * 3

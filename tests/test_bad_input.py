"""Bad input, one line each: the ``clfw`` CLI reports a wrong argument as ``clfw: error: <key>: <reason>`` on stderr
with exit code 2, naming the value and what is expected; ``--debug`` / ``CLFW_DEBUG=1`` and crashes during training
keep the traceback.

Most cases run in-process (``clfw.cli.main`` under ``capsys``) on a tiny stream, so each fails in parsing, in a
constructor or in ``setup``, before any training step; two run the console entry point in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import override

from clfw import Batch
from clfw.cli import ContinualCLI, main
from clfw.strategies import Naive
from tests.test_cli import TRAINER

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")

BASE = (
    TRAINER
    + """data:
  class_path: tests.helpers.TinyStream
  init_args: {batch_size: 8, epochs_per_task: 2}  # TinyStream: 2 tasks of 2 classes
model:
  class_path: clfw.strategies.Naive
  init_args:
    backbone: {class_path: clfw.backbones.MLP, init_args: {in_features: 16, hidden: [8]}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}
"""
)

VIT = {
    "vit": "vit_tiny_patch16_224",
    "pretrained": False,
    "vit_kwargs": {"img_size": 4, "patch_size": 2, "in_chans": 1, "embed_dim": 16, "depth": 3, "num_heads": 2},
}


def prompt_model(name: str, **init_args: Any) -> str:
    """``--model`` as a whole (no base backbone): a prompt strategy over a random-weight ViT for TinyStream's inputs."""
    return "--model=" + json.dumps({"class_path": f"clfw.strategies.{name}", "init_args": {**VIT, **init_args}})


MNIST = ["--data=clfw.benchmarks.SplitMNIST"]
CE = ["--trainer.callbacks+=clfw.ContinualEvaluation"]

# (arguments after the base config, fragments the one line must contain). "{tmp}" is the test's tmp_path.
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    # --- strategy hyperparameters (strategies/*.py, clfw/module.py, clfw/backbones.py)
    "er_buffer_size": (
        ["--model=clfw.strategies.ER", "--model.buffer_size=0"],
        ("model.init_args.buffer_size: buffer_size must be >= 1, got 0",),
    ),
    "er_replay_batch_size": (
        ["--model=clfw.strategies.ER", "--model.replay_batch_size=0"],
        ("model.init_args.replay_batch_size: replay_batch_size must be >= 1, got 0",),
    ),
    "der_alpha": (
        ["--model=clfw.strategies.DER", "--model.alpha=-1"],
        ("model (clfw.strategies.der.DER)", "alpha >= 0", "-1.0"),
    ),
    "derpp_beta": (["--model=clfw.strategies.DERPP", "--model.beta=-2"], ("model.init_args.beta:", "got -2.0")),
    "agem_sample_size": (
        ["--model=clfw.strategies.AGEM", "--model.sample_size=0"],
        ("model.init_args.sample_size:", "got 0"),
    ),
    "agem_buffer_per_task": (
        ["--model=clfw.strategies.AGEM", "--model.buffer_size=1"],
        ("model.init_args.buffer_size: buffer_size=1 leaves no memory for each of 2 tasks",),
    ),
    "icarl_memory_size_zero": (
        ["--model=clfw.strategies.ICaRL", "--model.memory_size=0"],
        ("model.init_args.memory_size: memory_size must be >= 1", "got 0"),
    ),
    "icarl_memory_below_classes": (
        ["--model=clfw.strategies.ICaRL", "--model.memory_size=3"],
        ("model.init_args.memory_size: memory_size=3 is less than one exemplar per class",),
    ),
    "icarl_domain": (
        ["--model=clfw.strategies.ICaRL", "--data.scenario=domain"],
        ("ICaRL does not support the 'domain' scenario",),
    ),
    "gdumb_epochs": (
        ["--model=clfw.strategies.GDumb", "--model.epochs=0"],
        ("model (clfw.strategies.gdumb.GDumb)", "got 0,"),
    ),
    "gdumb_clip": (
        ["--model=clfw.strategies.GDumb", "--model.clip=-1"],
        ("model (clfw.strategies.gdumb.GDumb)", "-1.0"),
    ),
    "ewc_lambda": (
        ["--model.plugins+=clfw.strategies.EWC", "--model.plugins.ewc_lambda=-1"],
        ("model.init_args.plugins[0] (clfw.strategies.ewc.EWC)", "got -1.0"),
    ),
    "ewc_gamma": (
        ["--model.plugins+=clfw.strategies.EWC", "--model.plugins.gamma=2"],
        ("model.init_args.plugins[0] (clfw.strategies.ewc.EWC)", "gamma in [0, 1]", "2.0"),
    ),
    "ewc_fisher": (
        ["--model.plugins+=clfw.strategies.EWC", "--model.plugins.fisher=exact"],
        ("fisher", "one of 'empirical', 'sampled', 'weighted'", "got exact"),
    ),
    "si_c": (
        ["--model.plugins+=clfw.strategies.SI", "--model.plugins.c=-1"],
        ("model.init_args.plugins[0].init_args.c: c must be >= 0, got -1.0",),
    ),
    "si_xi": (
        ["--model.plugins+=clfw.strategies.SI", "--model.plugins.xi=0"],
        ("model.init_args.plugins[0].init_args.xi: xi must be > 0, got 0.0",),
    ),
    "mas_lambda": (
        ["--model.plugins+=clfw.strategies.MAS", "--model.plugins.mas_lambda=-3"],
        ("model.init_args.plugins[0].init_args.mas_lambda:", "got -3.0"),
    ),
    "lwf_temperature": (
        ["--model.plugins+=clfw.strategies.LwF", "--model.plugins.temperature=0"],
        ("model.init_args.plugins[0] (clfw.strategies.lwf.LwF)", "temperature > 0", "0.0"),
    ),
    "second_plugin_index": (
        [
            "--model.plugins+=clfw.strategies.SI",
            "--model.plugins+=clfw.strategies.MAS",
            "--model.plugins.mas_lambda=-1",
        ],
        ("model.init_args.plugins[1].init_args.mas_lambda:", "got -1.0"),
    ),
    "refresh_unlearn_lr": (
        ["--model.plugins+=clfw.strategies.Refresh", "--model.plugins.unlearn_lr=0"],
        ("model.init_args.plugins[0] (clfw.strategies.refresh.Refresh)", "unlearn_lr > 0", "'unlearn_lr': 0.0"),
    ),
    "l2p_top_k": (
        [prompt_model("L2P", top_k=20)],
        ("model (clfw.strategies.l2p.L2P)", "top_k <= pool_size", "top_k=20"),
    ),
    "dualprompt_pool": (
        [prompt_model("DualPrompt", e_pool_size=1, g_layers=[0], e_layers=[1])],
        ("model.init_args.e_pool_size: e_pool_size=1 is less than the stream's 2 tasks",),
    ),
    "coda_prompt_length": (
        [prompt_model("CODAPrompt", prompt_length=3, layers=[0])],
        ("model (clfw.strategies.coda_prompt.CODAPrompt)", "prompt_length even", "prompt_length=3"),
    ),
    "mlp_hidden": (["--model.backbone.hidden=[0]"], ("model.init_args.backbone (clfw.backbones.MLP)", "[0]")),
    "mlp_dropout": (
        ["--model.backbone.dropout=1.5"],
        ("model.init_args.backbone.init_args.dropout: dropout must be in [0, 1), got 1.5",),
    ),
    "mlp_in_features": (
        ["--model.backbone.in_features=10"],
        ("inputs of shape (1, 4, 4)", "MLP expects 10 input features per sample, got 16"),
    ),
    "optimizer_lr": (["--model.optimizer.lr=-1"], ("Invalid learning rate: -1.0",)),
    # --- stream arguments (clfw/datamodule.py, benchmarks/*.py)
    "batch_size": (["--data.batch_size=0"], ("data.init_args.batch_size: batch_size must be positive, got 0",)),
    "eval_batch_size": (["--data.eval_batch_size=-1"], ("data.init_args.eval_batch_size:", "got -1")),
    "epochs_per_task": (["--data.epochs_per_task=0"], ("data.init_args.epochs_per_task:", "got 0")),
    "num_workers": (["--data.num_workers=-2"], ("data.init_args.num_workers: num_workers must be >= 0, got -2",)),
    "val_fraction": (["--data.val_fraction=1.0"], ("data.init_args.val_fraction:", "[0, 1)", "got 1.0")),
    "scenario_literal": (
        ["--data.scenario=online"],
        ("data.init_args.scenario:", "'class', 'task', 'domain'", "online"),
    ),
    "split_mnist_n_tasks_20": (
        [*MNIST, "--data.n_tasks=20"],
        ("data.init_args.n_tasks: n_tasks=20", "10 classes cannot be cut into 20 tasks", "use n_tasks 1, 2, 5 or 10"),
    ),
    "split_mnist_three_classes": (
        [*MNIST, "--data.classes=[1,2,3]"],
        ("n_tasks=5", "3 classes cannot be cut into 5 tasks", "use n_tasks 1 or 3", "classes=[1, 2, 3]"),
    ),
    "split_mnist_uneven": (
        [*MNIST, "--data.n_tasks=3"],
        ("data.init_args.n_tasks: n_tasks=3 does not divide the 10 classes", "[4, 3, 3]"),
    ),
    "split_mnist_classes_repeat": (
        [*MNIST, "--data.classes=[1,1]"],
        ("classes must be distinct digits in 0..9, got [1, 1]",),
    ),
    "split_mnist_classes_per_task": (
        [*MNIST, "--data.n_tasks=null", "--data.classes_per_task=[5,4]"],
        ("classes_per_task [5, 4] must be positive and sum to the 10 classes",),
    ),
    "split_mnist_class_order": (
        [*MNIST, "--data.class_order=[0,1,2,3,4,5,6,7,8,8]"],
        ("not a permutation", "repeats [8]"),
    ),
    "split_mnist_domain": ([*MNIST, "--data.scenario=domain"], ("SplitMNIST", "'domain'", "PermutedMNIST")),
    "mnist_source": ([*MNIST, "--data.source=internet"], ("data.init_args.source:", "'offline'", "got internet")),
    "mnist_offline_train": (
        [*MNIST, "--data.offline_train_per_class=500"],
        ("data.init_args.offline_train_per_class:", "[1, 499]", "got 500"),
    ),
    "mnist_torchvision_missing": (
        [*MNIST, "--data.source=torchvision", "--data.root={tmp}/nomnist"],
        ("MNIST not found under root=", "nomnist", "download=True"),
    ),
    "permuted_mnist_scenario": (
        ["--data=clfw.benchmarks.PermutedMNIST", "--data.scenario=class"],
        ("PermutedMNIST supports only scenario='domain', got 'class'",),
    ),
    "permuted_mnist_n_tasks": (
        ["--data=clfw.benchmarks.PermutedMNIST", "--data.n_tasks=0"],
        ("data.init_args.n_tasks: n_tasks must be positive, got 0",),
    ),
    "rotated_mnist_angles": (
        ["--data=clfw.benchmarks.RotatedMNIST", "--data.angles=[]"],
        ("data.init_args.angles: angles must name at least one angle, got []",),
    ),
    "cifar_missing": (
        ["--data=clfw.benchmarks.SplitCIFAR10", "--data.root={tmp}/nocifar"],
        ("cifar10 files", "nocifar", "download=True"),
    ),
    "cifar_image_size": (
        ["--data=clfw.benchmarks.SplitCIFAR10", "--data.image_size=0"],
        ("data.init_args.image_size: image_size must be a positive size or None, got 0",),
    ),
    "image_folder_missing": (
        ["--data=clfw.benchmarks.ImageFolderStream", "--data.root={tmp}/nowhere"],
        ("data.init_args.root: root=", "nowhere' does not exist", "root/<class>/<image>"),
    ),
    "image_folder_test_fraction": (
        ["--data=clfw.benchmarks.ImageFolderStream", "--data.root={tmp}/folder", "--data.test_fraction=1.5"],
        ("data (clfw.benchmarks.image_folder.ImageFolderStream)", "0 < test_fraction < 1", "1.5"),
    ),
    "image_folder_too_many_tasks": (
        ["--data=clfw.benchmarks.ImageFolderStream", "--data.root={tmp}/folder"],
        ("n_tasks=10: 2 classes cannot be cut into 10 tasks", "use n_tasks 1 or 2"),
    ),
    "tiny_imagenet_train_folder": (
        ["--data=clfw.benchmarks.ImageFolderStream", "--data.root={tmp}/tiny-imagenet-200/train"],
        ("data.init_args.root:", "tiny-imagenet-200/train", "Tiny-ImageNet layout", "root/<class>/<image>"),
    ),
    "tiny_imagenet_top_folder": (
        ["--data=clfw.benchmarks.ImageFolderStream", "--data.root={tmp}/tiny-imagenet-200"],
        ("tiny-imagenet-200'", "Tiny-ImageNet layout (root/train/<wnid>/images/*.JPEG)", "does not read"),
    ),
    # --- callbacks (clfw/continual_eval.py, clfw/evaluation.py)
    "ce_every_n_steps": (
        [*CE, "--trainer.callbacks.every_n_steps=0"],
        ("trainer.callbacks[0].init_args.every_n_steps: every_n_steps must be >= 1, got 0",),
    ),
    "ce_samples_per_task": (
        [*CE, "--trainer.callbacks.samples_per_task=0"],
        ("trainer.callbacks[0].init_args.samples_per_task:", "got 0"),
    ),
    "ce_batch_size": ([*CE, "--trainer.callbacks.batch_size=-4"], ("trainer.callbacks[0].init_args.batch_size:", "-4")),
    "ce_tasks": ([*CE, "--trainer.callbacks.tasks=some"], ("tasks", "'seen', 'all'", "got some")),
    "accuracy_matrix_tasks": (["--evaluation.tasks=some"], ("evaluation.tasks:", "'all', 'seen'", "got some")),
    # --- the trainer (clfw/cli.py _instantiate_trainer, clfw/datamodule.py setup)
    "max_epochs": (
        ["--trainer.max_epochs=7"],
        ("trainer.max_epochs=7", "= 4 epochs", "leave trainer.max_epochs unset"),
    ),
    "max_steps": (["--trainer.max_steps=5"], ("max_steps=5 is not supported", "leave trainer.max_steps unset")),
    "ckpt_path": (["--ckpt_path={tmp}/no/last.ckpt"], ("no/last.ckpt",)),
    # --- class paths, options and types (jsonargparse)
    "unknown_module": (["--model=mylab.NoSuchStrategy"], ("model:", "'mylab.NoSuchStrategy'", "No module named")),
    "unknown_class": (
        ["--model=clfw.strategies.NoSuch"],
        ("model:", "'clfw.strategies.NoSuch'", "has no attribute 'NoSuch'"),
    ),
    "unknown_stream": (["--data=clfw.benchmarks.NoStream"], ("data:", "'clfw.benchmarks.NoStream'")),
    "unknown_option": (["--trainer.no_such_option=3"], ("--trainer.no_such_option", "3")),
    "unknown_init_arg": (["--model.no_such_arg=3"], ("model:", "'no_such_arg'", "not accepted")),
    "type_int": (["--data.batch_size=many"], ("data.init_args.batch_size: expected int, got many",)),
    "type_float": (["--data.val_fraction=half"], ("data.init_args.val_fraction: expected float, got half",)),
    "type_nested_list": (
        ["--model.backbone.hidden=wide"],
        ("model.init_args.backbone.init_args.hidden:", "got wide"),
    ),
    "type_trainer": (["--trainer.max_epochs=forever"], ("trainer.max_epochs", "got forever")),
    "missing_config_file": (["--config={tmp}/nothing.yaml"], ("nothing.yaml",)),
}


def write_folders(tmp: Path) -> None:
    """An image folder with two classes, and Tiny-ImageNet's layout (``train/<wnid>/images/*.JPEG``)."""
    for cls in ("cat", "dog"):
        (tmp / "folder" / cls).mkdir(parents=True)
        (tmp / "folder" / cls / "a.png").write_bytes(b"")
    for wnid in ("n01443537", "n01629819"):
        images = tmp / "tiny-imagenet-200" / "train" / wnid / "images"
        images.mkdir(parents=True)
        (images / f"{wnid}_0.JPEG").write_bytes(b"")
        (images.parent / f"{wnid}_boxes.txt").write_text("")
    (tmp / "tiny-imagenet-200" / "val" / "images").mkdir(parents=True)
    (tmp / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG").write_bytes(b"")


@pytest.fixture
def base(tmp_path: Path) -> list[str]:
    (tmp_path / "base.yaml").write_text(BASE)
    write_folders(tmp_path)
    return ["fit", f"--config={tmp_path / 'base.yaml'}", f"--trainer.default_root_dir={tmp_path}"]


def one_line_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Runs ``clfw`` in-process; asserts exit code 2 and exactly one line on stderr, which it returns."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("clfw: error: "), err
    return lines[0]


@pytest.mark.parametrize(("extra", "fragments"), list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_naming_the_value(
    extra: list[str], fragments: tuple[str, ...], base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    line = one_line_error([*base, *(a.replace("{tmp}", str(tmp_path)) for a in extra)], capsys)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert "Traceback" not in line and "Does not validate against any of the Union subtypes" not in line


def test_split_mnist_suggests_no_empty_tasks(base: list[str], capsys: pytest.CaptureFixture) -> None:
    line = one_line_error([*base, *MNIST, "--data.n_tasks=20"], capsys)
    assert ", 0" not in line and "classes_per_task (e.g." not in line, line


def test_icarl_memory_size_is_named_not_capacity(base: list[str], capsys: pytest.CaptureFixture) -> None:
    line = one_line_error([*base, "--model=clfw.strategies.ICaRL", "--model.memory_size=0"], capsys)
    assert "capacity" not in line, line


@pytest.mark.parametrize("fast_dev_run", [True, 2])
def test_fast_dev_run_runs_every_task_with_n_batches_per_epoch(
    fast_dev_run: bool | int, base: list[str], tmp_path: Path
) -> None:
    cli = ContinualCLI(
        args=[
            *base,
            f"--trainer.fast_dev_run={str(fast_dev_run).lower()}",
            "--model=tests.helpers.ScaledLoss",
            "--trainer.enable_progress_bar=false",
        ]
    )
    batches = int(fast_dev_run)
    assert cli.model.task_end_calls == [0, 1], "the task lifecycle runs for every task"
    assert cli.trainer.current_epoch == 4 and cli.trainer.global_step == 4 * batches, "2 tasks x 2 epochs x N batches"
    assert json.loads((tmp_path / "metrics.json").read_text())["tasks_completed"] == 2


def test_debug_flag_and_env_keep_the_traceback(
    base: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        main([*base, "--debug", "--data.batch_size=0"])
    with pytest.raises(ArgumentError, match="many"):
        main([*base, "--data.batch_size=many", "--debug"])
    monkeypatch.setenv("CLFW_DEBUG", "1")
    with pytest.raises(ValueError, match="got 0"):
        main([*base, "--model=clfw.strategies.ER", "--model.replay_batch_size=0"])
    monkeypatch.setenv("CLFW_DEBUG", "0")
    assert "replay_batch_size" in one_line_error(
        [*base, "--model=clfw.strategies.ER", "--model.replay_batch_size=0"], capsys
    )


class CrashesInTraining(Naive):
    """A strategy with a bug: its loss raises a ValueError at the third training step."""

    @override
    def training_loss(self, batch: Batch) -> Any:
        if self.trainer.global_step == 2:
            raise ValueError(f"a bug at step 2 with a batch of {len(batch.y)}")
        return super().training_loss(batch)


class BugInSetup(Naive):
    """A strategy with a bug that is no bad input: a KeyError before training."""

    @override
    def attach_stream(self, dm: Any) -> None:
        raise KeyError("a bug in attach_stream")


def test_errors_during_training_and_other_errors_keep_their_traceback(base: list[str]) -> None:
    with pytest.raises(ValueError, match="a bug at step 2 with a batch of 8"):
        main([*base, "--model=tests.test_bad_input.CrashesInTraining"])
    with pytest.raises(KeyError, match="a bug in attach_stream"):
        main([*base, "--model=tests.test_bad_input.BugInSetup"])


def test_good_input_still_runs(base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main([*base, "--data.epochs_per_task=1"])
    assert "clfw: error" not in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.json").read_text())["tasks_completed"] == 2


def run_console(code: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -c code fit --config base.yaml *args``; ``tests.helpers`` is found through PYTHONPATH, since the
    parser reads a config file from within its folder (so ``-c``'s relative ``''`` path would not find it)."""
    (tmp_path / "base.yaml").write_text(BASE)
    return subprocess.run(
        [sys.executable, "-c", code, "fit", f"--config={tmp_path / 'base.yaml'}", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_console_entry_point_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    out = run_console("from clfw.cli import main; main()", ["--model=mylab.NoSuchStrategy"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        "clfw: error: model: Problem with given class_path 'mylab.NoSuchStrategy': No module named 'mylab'"
    ]


def test_debug_flag_is_taken_from_sys_argv(base: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["clfw", *base, "--debug", "--data.batch_size=0"])
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        main()
    assert sys.argv == ["clfw", *base, "--data.batch_size=0"], "--debug is removed before Lightning's parser runs"


# wandb made unimportable whether or not it is installed (other extras pull it in): a finder that refuses the import,
# and no distribution metadata, which is what Lightning's WandbLogger checks first.
BLOCK_WANDB = """
import importlib.abc, importlib.metadata, sys

class NoWandb(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "wandb":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoWandb())
real_version = importlib.metadata.version

def version(name):
    if name == "wandb":
        raise importlib.metadata.PackageNotFoundError(name)
    return real_version(name)

importlib.metadata.version = version
from clfw.cli import main
main()
"""


@pytest.mark.slow
def test_wandb_missing_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    out = run_console(BLOCK_WANDB, ["--trainer.logger=pytorch_lightning.loggers.WandbLogger"], tmp_path)
    assert out.returncode == 2, out.stderr
    # Lightning logs the seed on stderr before the classes are instantiated; everything else is the one error line
    lines = [line for line in out.stderr.splitlines() if not line.startswith("Seed set to")]
    assert lines == [
        "clfw: error: trainer.logger (pytorch_lightning.loggers.wandb.WandbLogger): wandb is not installed; install it "
        'with: pip install "clfw[wandb]"'
    ], out.stderr


def test_bad_input_line_unit(tmp_path: Path) -> None:
    """The parameter is named only when the message is about one argument alone."""
    from clfw.cli import _named_parameter

    class Stream:
        def __init__(self, n_tasks: int = 1, classes: list | None = None, alpha: float = 0, **kwargs: Any) -> None:
            pass

    assert _named_parameter("n_tasks=20 does not divide the 10 classes evenly", Stream) == "n_tasks"
    assert _named_parameter("alpha must be >= 0 and n_tasks > 0, got -1, 0", Stream) is None
    assert _named_parameter("need 0 < alpha", Stream) is None
    assert _named_parameter("kwargs must be positive", Stream) is None

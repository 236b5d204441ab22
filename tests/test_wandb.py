"""Weights & Biases runs through ``clfw fit`` (offline): what the run holds is read back from its ``.wandb`` transaction
log with wandb's own reader (``wandb leet inspect``), not only that the run did not crash."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clfw.backbones import MLP
from clfw.benchmarks import SplitMNIST
from clfw.cli import main
from clfw.strategies import ER, EWC, Naive
from clfw.tracking import SUMMARY_METRICS, default_name_and_group
from tests.test_readme import documented_clfw_commands

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data.n_tasks=2", "--data.epochs_per_task=1", "--trainer.limit_train_batches=2"]
WITH_CHECKPOINT = ["--trainer.callbacks+=clfw.WandbTracking", "--trainer.callbacks.log_checkpoint=true"]

# A tiny ER run on the synthetic stream, logged to W&B (2 tasks x 6 batches: the run ends at step 12).
TINY_CONFIG = """
seed_everything: 1
trainer:
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: pytorch_lightning.loggers.WandbLogger
    init_args: {save_dir: runs, project: tiny}
  callbacks:
    - class_path: clfw.ContinualEvaluation
      init_args: {samples_per_task: 10, windows: [3], plot: false}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 1, save_last: true, save_top_k: 1}
evaluation: {plot: false}
data:
  class_path: tests.helpers.TinyStream
  init_args: {n_tasks: 2, batch_size: 8}
model:
  class_path: clfw.strategies.ER
  init_args:
    buffer_size: 16
    backbone: {class_path: clfw.backbones.MLP, init_args: {in_features: 16, hidden: [16]}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}
"""


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline, every W&B folder in ``tmp_path``, which is the working directory."""
    monkeypatch.chdir(tmp_path)
    for name in ("WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for name, folder in (("WANDB_DIR", "wandb_dir"), ("WANDB_DATA_DIR", "wandb_data"), ("WANDB_CACHE_DIR", "cache")):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    return tmp_path


def inspect(log: Path, *flags: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(log)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def read_run(offline_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of an offline run's transaction log, and wandb's consolidated view of it (config, summary, name)."""
    (log,) = offline_dir.glob("run-*.wandb")
    records = [json.loads(line) for line in inspect(log).splitlines() if line.strip()]
    return records, json.loads(inspect(log, "--summary"))


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r[kind] for r in records if r["type"] == kind]


def history_keys(records: list[dict[str, Any]]) -> set[str]:
    return {k for h in of_type(records, "history") for k in h["item"]}


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def results_artifact(records: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    (artifact,) = [a for a in of_type(records, "artifact") if a["type"] == "results"]
    assert artifact["name"] == f"results-{run_id}"
    return artifact


def test_a_wandb_run_holds_the_config_series_summary_table_and_metrics_artifact(offline: Path) -> None:
    (offline / "configs").symlink_to(ROOT / "configs")
    (args,) = [a for _, a in documented_clfw_commands() if "configs/trainer/wandb.yaml" in a]  # README's W&B run
    assert args[1::2] == [f"configs/{c}.yaml" for c in ("trainer/cpu", "trainer/wandb", "data/split_mnist", "model/er")]
    main(["fit", *args, *TINY, "--model.init_args.buffer_size=37", "--trainer.enable_progress_bar=false"])

    (run,) = (offline / "runs" / "clfw").iterdir()  # the run's own directory: save_dir/project/<run id>
    (offline_dir,) = (offline / "runs" / "wandb").glob(f"offline-run-*-{run.name}")
    metrics = json.loads((run / "metrics.json").read_text())
    records, view = read_run(offline_dir)

    # the resolved config, nested as the CLI names its keys
    config = view["config"]
    assert config["model"]["class_path"] == "clfw.strategies.ER"
    assert config["model"]["init_args"]["buffer_size"] == 37
    assert config["data"]["init_args"]["n_tasks"] == 2 and config["seed_everything"] == 0
    assert config["trainer"]["logger"]["class_path"] == "pytorch_lightning.loggers.WandbLogger"
    assert config["trainer"]["callbacks"][0]["class_path"] == "clfw.ContinualEvaluation"

    # default name and group: strategy, stream, seed; the group hashes the config without the seed
    (start,) = of_type(records, "run")
    assert start["run_id"] == run.name and start["project"] == "clfw"
    assert start["display_name"] == view["name"] == "ER-SplitMNIST-s0"
    assert re.fullmatch(r"ER-SplitMNIST-[0-9a-f]{8}", start["run_group"])

    # the series and the plots
    keys = history_keys(records)
    for key in ("cl/acc", "cl/min_acc", "cl/wc_acc", "cl/task_1/acc", "task_end/acc", "task_end/task_1/acc"):
        assert key in keys, key
    assert {"plots/accuracy_matrix._type", "plots/stability_gap._type"} <= keys

    # the summary: every defined value of metrics.json, equal to it; FWT is undefined in class-IL, so absent
    summary = view["summary"]
    expected = {
        "final/acc": metrics["summary"]["average_accuracy"],
        "final/forgetting": metrics["summary"]["forgetting"],
        "final/bwt": metrics["summary"]["backward_transfer"],
        "final/avalanche_forgetting": metrics["summary"]["avalanche_forgetting"],
        "final/min_acc": metrics["continual"]["last"]["min_acc"],
        "final/wc_acc": metrics["continual"]["last"]["wc_acc"],
    }
    assert None not in expected.values() and metrics["summary"]["forward_transfer"] is None
    assert {k: v for k, v in summary.items() if k.startswith("final/")} == expected
    assert set(SUMMARY_METRICS) - set(expected) == {"final/fwt"}

    # the accuracy matrix as a wandb.Table: its file, written by wandb, holds the matrix of metrics.json
    table = summary["tables/accuracy_matrix"]
    assert table["_type"] == "table-file" and table["nrows"] == 2 and table["ncols"] == 3
    content = json.loads((offline_dir / "files" / table["path"]).read_text())
    assert content["columns"] == ["after_task", "task_0", "task_1"]
    assert content["data"] == [[i, *row] for i, row in enumerate(metrics["accuracy_matrix"])]

    # the artifact: metrics.json and config.yaml of the run, byte for byte (wandb's digest), no checkpoint by default
    artifact = results_artifact(records, run.name)
    files = {f["path"]: f["digest"] for f in artifact["manifest"]["contents"]}
    assert files == {"metrics.json": md5_b64(run / "metrics.json"), "config.yaml": md5_b64(run / "config.yaml")}
    assert json.loads(artifact["metadata"]) == expected
    assert view["state"] == "finished" and view["exit_code"] == 0


def test_the_default_group_is_one_per_config_and_seeds_share_it() -> None:
    er = ER(backbone=MLP(in_features=784, hidden=(8,)), num_classes=10, buffer_size=10)
    ewc = Naive(backbone=MLP(in_features=784, hidden=(8,)), num_classes=10, plugins=[EWC()])
    dm = SplitMNIST(n_tasks=2)
    config = {"seed_everything": 0, "model.init_args.buffer_size": 10, "data.init_args.seed": 0}
    name, group = default_name_and_group(er, dm, 0, config)
    name1, group1 = default_name_and_group(er, dm, 1, {**config, "seed_everything": 1})
    _, other = default_name_and_group(er, dm, 0, {**config, "model.init_args.buffer_size": 20})
    _, data_seed = default_name_and_group(er, dm, 0, {**config, "data.init_args.seed": 1})
    assert (name, name1) == ("ER-SplitMNIST-s0", "ER-SplitMNIST-s1")
    assert group == group1 and len({group, other, data_seed}) == 3
    assert re.fullmatch(r"ER-SplitMNIST-[0-9a-f]{8}", group)
    assert default_name_and_group(ewc, dm, None, config)[0] == "Naive+EWC-SplitMNIST"


def test_a_given_name_and_group_are_kept_and_the_checkpoint_can_join_the_artifact(offline: Path) -> None:
    (offline / "run.yaml").write_text(TINY_CONFIG)
    given = ["--trainer.logger.name=my-run", "--trainer.logger.group=my-group"]
    main(["fit", "--config=run.yaml", *given, *WITH_CHECKPOINT])
    (run,) = (offline / "runs" / "tiny").iterdir()
    (offline_dir,) = (offline / "runs" / "wandb").glob(f"offline-run-*-{run.name}")
    records, view = read_run(offline_dir)
    (start,) = of_type(records, "run")
    assert (start["display_name"], start["run_group"]) == ("my-run", "my-group")
    assert view["config"]["trainer"]["logger"]["init_args"]["name"] == "my-run"
    # the callback given by the user replaces the CLI's default one: one artifact, with the last checkpoint
    files = {f["path"]: f["digest"] for f in results_artifact(records, run.name)["manifest"]["contents"]}
    assert sorted(files) == ["config.yaml", "last.ckpt", "metrics.json"]
    assert files["last.ckpt"] == md5_b64(run / "checkpoints" / "last.ckpt")


def test_log_checkpoint_without_a_last_checkpoint_is_one_line(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (offline / "run.yaml").write_text(TINY_CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config=run.yaml", "--trainer.callbacks.save_last=false", *WITH_CHECKPOINT])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "log_checkpoint=True, but no ModelCheckpoint has save_last=True" in err


def test_a_resumed_run_is_the_same_wandb_run_with_the_final_results(offline: Path) -> None:
    (offline / "run.yaml").write_text(TINY_CONFIG)
    with pytest.raises(RuntimeError, match="interrupted after step 8"):
        main(["fit", "--config=run.yaml", "--trainer.callbacks+=tests.helpers.Interrupt", "--trainer.callbacks.step=8"])
    time.sleep(1.1)  # W&B names offline run folders by the second: a resume within the same second shares the folder
    main(["fit", "--config=run.yaml", "--resume=auto"])

    (run,) = (offline / "runs" / "tiny").iterdir()
    first, second = sorted((offline / "runs" / "wandb").glob(f"offline-run-*-{run.name}"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 2
    (records1, view1), (records2, view2) = read_run(first), read_run(second)
    assert view1["exit_code"] == 1, "the failed fit finished its run as failed"
    assert not [k for k in view1["summary"] if k.startswith("final/")]
    (start1,), (start2,) = of_type(records1, "run"), of_type(records2, "run")
    assert start2["run_id"] == start1["run_id"] == run.name, "resumed by its id"
    assert (start2["display_name"], start2["run_group"]) == (start1["display_name"], start1["run_group"])
    assert start2["display_name"] == "ER-TinyStream-s1"
    assert view2["config"]["model"]["init_args"]["buffer_size"] == 16
    assert view2["summary"]["final/acc"] == metrics["summary"]["average_accuracy"]
    assert view2["summary"]["final/min_acc"] == metrics["continual"]["last"]["min_acc"]
    assert "task_end/task_1/acc" in history_keys(records2)
    artifact = results_artifact(records2, run.name)
    assert {f["path"]: f["digest"] for f in artifact["manifest"]["contents"]}["metrics.json"] == md5_b64(
        run / "metrics.json"
    )


@pytest.mark.slow
def test_under_ddp_only_rank_zero_logs_one_wandb_run(offline: Path) -> None:
    (offline / "run.yaml").write_text(TINY_CONFIG)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.callbacks.every_n_train_steps=100"]
    out = subprocess.run(
        [sys.executable, "-m", "clfw", "fit", "--config=run.yaml", *ddp],
        cwd=offline, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    (run,) = (offline / "runs" / "tiny").iterdir()
    (offline_dir,) = (offline / "runs" / "wandb").glob("offline-run-*")  # one W&B run for both processes
    metrics = json.loads((run / "metrics.json").read_text())
    records, view = read_run(offline_dir)
    assert metrics["run"]["world_size"] == 2 and view["run_id"] == run.name
    assert view["config"]["trainer"]["strategy"] == "ddp"
    assert view["summary"]["final/acc"] == metrics["summary"]["average_accuracy"]
    assert len([a for a in of_type(records, "artifact") if a["type"] == "results"]) == 1

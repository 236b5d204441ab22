"""README.md opens with the two commands a new user needs, and .ci/run runs exactly the test command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mylab" / "src"  # docs/writing-a-strategy.md runs it, as a reader does once installed


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[:2]


def test_readme_opens_with_install_and_test_commands() -> None:
    install, tests = readme_commands()
    assert "pip install -e" in install and "clfw fit --config configs/quickstart.yaml" in install
    assert "pytest" in tests


def test_ci_runs_the_readme_commands() -> None:
    install, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the last README command must appear verbatim in .ci/run"
    assert any(line.startswith(install) for line in ci), "the README install command must start a line of .ci/run"


def documented_clfw_commands() -> list[tuple[str, list[str]]]:
    """Every ``clfw fit ...`` command in a fenced bash block of README.md and docs/*.md: ``(file, arguments)``."""
    import shlex

    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words[:2] == ["clfw", "fit"]:
                        found.append((path.name, words[2:]))
    return found


def test_every_documented_clfw_command_parses(monkeypatch: Any, capsys: Any) -> None:
    """A README command can never point at a missing file or option again (parsed with --print_config, from the
    repository root as a user would type it; the quickstart itself runs in CI)."""
    import pytest

    from clfw.cli import main

    commands = documented_clfw_commands()
    assert len(commands) >= 6
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name, args in commands:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args, "--print_config"])
        assert exit_info.value.code in (0, None), f"{name}: clfw fit {' '.join(args)}: {capsys.readouterr().err}"


def test_every_documented_offline_clfw_command_trains_with_a_tiny_budget(tmp_path: Path, monkeypatch: Any) -> None:
    """Each documented command that trains offline runs, in order, from a folder holding the repository's configs,
    with ``--data.n_tasks 2 --data.epochs_per_task 1 --trainer.limit_train_batches 2`` appended. Resume commands
    (``--ckpt_path``, ``--resume``) stay parse-only here: tests/test_resume_cli.py runs the resume policy. W&B commands
    (``configs/trainer/wandb.yaml``) too: tests/test_wandb.py runs the README's offline and reads the run back. And GPU
    commands: tests/test_launch.py runs a multi-process launch on the CPU."""
    import json

    from clfw.cli import main

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    tiny = ["--data.n_tasks=2", "--data.epochs_per_task=1", "--trainer.limit_train_batches=2"]
    ran = 0
    for _, args in documented_clfw_commands():
        if any(a.startswith(("--ckpt_path", "--resume")) or "trainer/wandb.yaml" in a for a in args):
            continue
        if "gpu" in args or "--trainer.accelerator=gpu" in args:  # no GPU here: tests/test_launch.py runs DDP
            continue
        before = set(tmp_path.rglob("metrics.json"))
        main(["fit", *args, *tiny, "--trainer.enable_progress_bar=false"])
        (new,) = set(tmp_path.rglob("metrics.json")) - before
        assert json.loads(new.read_text())["tasks_completed"] == 2, args
        ran += 1
    assert ran >= 4

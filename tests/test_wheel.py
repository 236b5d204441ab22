"""clfw installed from its wheel (not the editable clone) runs the quickstart through the packaged config.

The wheel is built offline from a copy of the sources (so nothing is written into the repository) and installed with
``--no-deps`` into a fresh virtual environment, which sees the test environment's dependencies (torch, Lightning, ...)
through a ``.pth`` path entry. That entry is a plain path: the editable install's finder in the test environment is not
activated there, so ``import clfw`` must find the wheel's copy, which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("clfw", "strategies", "benchmarks", "configs", "pyproject.toml", "README.md")
TINY = ["--data.n_tasks=2", "--data.epochs_per_task=1", "--trainer.limit_train_batches=2"]


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, tmp / "src" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", str(tmp / "src")], cwd=tmp)
    (built,) = (tmp / "dist").glob("clfw-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_the_packages_and_every_config(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"clfw", next(t for t in tops if t.endswith(".dist-info"))}, tops  # no strategies/, benchmarks/
    installed_as = {"clfw": "clfw", "strategies": "clfw/strategies", "benchmarks": "clfw/benchmarks"}
    installed_as["configs"] = "clfw/configs"
    for folder, package in installed_as.items():  # every module of the sources, subpackages (clfw.testing) included
        for module in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{module.relative_to(ROOT / folder).as_posix()}" in names, f"{module} is not in the wheel"
    assert "clfw/strategies/er.py" in names and "clfw/configs/__init__.py" in names
    shipped = sorted(n.removeprefix("clfw/configs/") for n in names if n.startswith("clfw/configs/") and ".yaml" in n)
    assert shipped == sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


@pytest.mark.slow
def test_installed_wheel_runs_the_packaged_quickstart_from_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=tmp_path)
    python = env / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python)]
    run([*pip, "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path)
    Path(purelib.stdout.strip(), "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    # where the new environment imports clfw from (found without importing it, which would take seconds)
    spec = "import importlib.util as u; print(u.find_spec('clfw').submodule_search_locations[0])"
    package = Path(run([str(python), "-c", spec], cwd=tmp_path).stdout.strip())
    assert package.resolve().is_relative_to(env.resolve()), f"clfw is not imported from the new environment: {package}"
    assert (package / "configs" / "quickstart.yaml").is_file() and (package / "strategies" / "er.py").is_file()

    work = tmp_path / "empty"
    work.mkdir()
    clfw = str(env / "bin" / "clfw")
    run([clfw, "fit", "--config", "clfw:quickstart.yaml", *TINY, "--trainer.enable_progress_bar=false"], cwd=work)
    metrics = json.loads((work / "runs" / "quickstart" / "version_0" / "metrics.json").read_text())
    assert metrics["tasks_completed"] == 2
    assert metrics["run"]["config"]["model"]["class_path"] == "clfw.strategies.ER"  # the packaged quickstart's strategy

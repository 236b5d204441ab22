"""W&B sweeps that cannot ship broken: every file under ``configs/sweeps/`` is loaded as ``wandb sweep`` loads it, its
structure is checked (method, metric ``val/acc`` maximised, parameter specs), parameter values are sampled from it,
its command is rendered by the W&B agent's own code for those values, and the rendered command is parsed by clfw's CLI
(``--print_config``: class paths and ``init_args`` resolved, nothing trained), where every swept key must hold the
sampled value at its full CLI path and the stream must hold out a validation split (``val_fraction > 0``).

A sweep needs a W&B server, so only rendering and parsing are tested here. The values W&B's sweep controller would
propose are drawn by :func:`assignments` from the parameter specs these files use (the ``sweeps`` package that
implements the controller pins ``numpy<2``, so it is not a test dependency).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs" / "sweeps").glob("*.yaml"))
METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform")
PROGRAM = ["${env}", "clfw", "fit"]  # the agent's ${env} is /usr/bin/env, so `clfw` is looked up on PATH
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")


def load(path: str) -> dict[str, Any]:
    """The sweep file as ``wandb sweep`` reads it (``wandb.sdk.launch.sweeps.utils.load_sweep_config``)."""
    from wandb.sdk.launch.sweeps.utils import load_sweep_config

    config = load_sweep_config(str(ROOT / path))
    assert isinstance(config, dict), f"{path}: not a sweep config"
    return config


def _draw(spec: dict[str, Any], rng: random.Random) -> Any:
    """One value of a parameter spec, as W&B's random and Bayesian controllers can propose it."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    low, high = spec["min"], spec["max"]
    kind = spec["distribution"]
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if kind == "int_uniform":
        return rng.randint(low, high)
    raise ValueError(f"distribution {kind!r} has no sampler here: expected one of {DISTRIBUTIONS}")


def _edge(spec: dict[str, Any], end: int) -> Any:
    """The first (``end=0``) or last (``end=-1``) value a spec allows: its bounds or list ends."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][end]
    return spec["min"] if end == 0 else spec["max"]


def assignments(sweep: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Parameter values to render and parse: for a grid, combinations that together use every value of every
    parameter; for random and Bayesian search, every parameter at its lower bound, at its upper bound, and one random
    draw."""
    params: dict[str, dict[str, Any]] = sweep["parameters"]
    if sweep["method"] == "grid":
        lists = {k: s["values"] if "values" in s else [s["value"]] for k, s in params.items()}
        width = max(len(v) for v in lists.values())
        return [{k: v[i % len(v)] for k, v in lists.items()} for i in range(width)]
    rng = random.Random(seed)
    return [
        {k: _edge(s, 0) for k, s in params.items()},
        {k: _edge(s, -1) for k, s in params.items()},
        {k: _draw(s, rng) for k, s in params.items()},
    ]


def render(sweep: dict[str, Any], values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The command line the W&B agent starts for a run with ``values``, built by the agent's own code
    (``wandb.wandb_agent.Agent._command_run``: ``create_sweep_command``, ``create_sweep_command_args`` and the macro
    expansion), with the process start replaced by a recorder."""
    import wandb
    from wandb import wandb_agent

    started: list[list[str]] = []

    class Recorder:
        def __init__(self, command: list[str] | None = None, **kwargs: Any) -> None:
            started.append(command or [])

    monkeypatch.setattr(wandb_agent, "AgentProcess", Recorder)
    # the agent writes the run's parameters under WANDB_DIR and sets these variables: keep them inside the test
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for name in (wandb.env.SWEEP_ID, wandb.env.RUN_ID, wandb.env.SWEEP_PARAM_PATH):
        monkeypatch.setenv(name, "sweep-test")
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id="sweep-test")
    agent._sweep_command = list(sweep["command"])  # what Agent.run takes from the sweep's config
    run = {"type": "run", "run_id": "run-test", "program": sweep.get("program")}
    agent._command_run({**run, "args": {k: {"value": v} for k, v in values.items()}})
    (command,) = started
    return command


def lookup(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted CLI key of a resolved config. A key through a list of classes (``model.init_args.plugins.
    init_args.delta``) reaches its last element, where jsonargparse applies it."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, list):
            node = node[-1]
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{key}: no {part!r} in the resolved config")
        node = node[part]
    return node


def parse(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cwd: Path
) -> dict[str, Any]:
    """``clfw fit ARGS --print_config`` run from an empty directory (the sweeps name packaged configs, so the agent
    may run anywhere): the resolved config."""
    from clfw.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"clfw fit {' '.join(args)}: {err}"
    return yaml.safe_load(out)


def test_the_sweeps_cover_grid_random_and_bayes_and_one_varies_the_seed() -> None:
    sweeps = [load(p) for p in SWEEPS]
    assert {s["method"] for s in sweeps} >= set(METHODS), SWEEPS
    assert any("seed_everything" in s["parameters"] for s in sweeps), "show how a sweep varies seed_everything"


@pytest.mark.parametrize("path", SWEEPS)
def test_sweep_structure(path: str) -> None:
    sweep = load(path)
    assert sweep["method"] in METHODS, f"{path}: method {sweep['method']!r}"
    assert sweep["metric"] == {"name": "val/acc", "goal": "maximize"}, f"{path}: optimise val/acc, never a test metric"
    params = sweep["parameters"]
    assert params, f"{path}: no parameters"
    for key, spec in params.items():
        kinds = [k for k in ("value", "values", "distribution") if k in spec]
        assert len(kinds) == 1, f"{path}: {key} must have exactly one of value, values, distribution; got {spec}"
        if sweep["method"] == "grid":
            assert "distribution" not in spec, f"{path}: a grid takes value or values only, {key} has {spec}"
        if "values" in spec:
            assert isinstance(spec["values"], list) and spec["values"], f"{path}: {key}: values must be a list"
        if "distribution" in spec:
            low, high = spec["min"], spec["max"]
            # YAML reads 1e-5 as a string (write 1.0e-05): W&B would refuse it
            assert all(isinstance(v, (int, float)) for v in (low, high)), f"{path}: {key}: min/max {low!r} {high!r}"
            assert spec["distribution"] in DISTRIBUTIONS and low < high, f"{path}: {key}: {spec}"
            assert spec["distribution"] != "log_uniform_values" or low > 0, f"{path}: {key}: log scale needs min > 0"
    if sweep["method"] == "bayes":
        assert "seed_everything" not in params, f"{path}: a Bayesian search would model the seed as a hyperparameter"
    command = sweep["command"]
    assert command[:3] == PROGRAM and command[-1] == "${args}", f"{path}: command {command}"
    assert not any("${args" in c for c in command[:-1]), f"{path}: LightningCLI takes --key=value, i.e. ${{args}}"
    configs = [command[i + 1] for i, c in enumerate(command) if c == "--config"]
    assert "clfw:trainer/wandb.yaml" in configs, f"{path}: sweeps log to W&B (clfw:trainer/wandb.yaml)"
    assert all(c.startswith("clfw:") for c in configs), f"{path}: name packaged configs (clfw:...), {configs}"
    missing = [c for c in configs if not (ROOT / "configs" / c.removeprefix("clfw:")).is_file()]
    assert not missing, f"{path}: missing config files {missing}"


def test_assignments_use_every_grid_value_and_the_bounds() -> None:
    grid = {"method": "grid", "parameters": {"a": {"values": [1, 2, 3]}, "b": {"values": [0.5]}, "c": {"value": 7}}}
    assert assignments(grid) == [{"a": 1, "b": 0.5, "c": 7}, {"a": 2, "b": 0.5, "c": 7}, {"a": 3, "b": 0.5, "c": 7}]
    spec = {"distribution": "log_uniform_values", "min": 1e-6, "max": 1e-2}
    low, high, draw = assignments({"method": "random", "parameters": {"x": spec}})
    assert (low["x"], high["x"]) == (1e-6, 1e-2) and 1e-6 <= draw["x"] <= 1e-2
    with pytest.raises(ValueError, match="'normal' has no sampler"):
        _draw({"distribution": "normal", "min": 0, "max": 1}, random.Random(0))


@pytest.mark.parametrize("path", SWEEPS)
def test_sweep_command_renders_and_parses_with_the_sampled_values(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = load(path)
    for values in assignments(sweep):
        command = render(sweep, values, tmp_path, monkeypatch)
        assert command[:3] == ["/usr/bin/env", "clfw", "fit"], command
        assert command[-len(values) :] == [f"--{k}={v}" for k, v in values.items()], command
        config = parse(command[3:], monkeypatch, capsys, tmp_path)
        for key, value in values.items():
            assert lookup(config, key) == value, f"{path}: {key}={value} did not reach the config"
        assert lookup(config, "data.init_args.val_fraction") > 0, f"{path}: val/acc needs a validation split"
        assert "WandbLogger" in str(lookup(config, "trainer.logger")), f"{path}: the runs must log to W&B"


def test_a_grid_renders_one_distinct_command_per_combination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (path,) = [p for p in SWEEPS if load(p)["method"] == "grid"][:1]
    sweep = load(path)
    params = sweep["parameters"]
    combos = [dict(zip(params, c, strict=True)) for c in itertools.product(*(s["values"] for s in params.values()))]
    commands = {tuple(render(sweep, values, tmp_path, monkeypatch)) for values in combos}
    assert len(commands) == len(combos) == math.prod(len(s["values"]) for s in params.values())

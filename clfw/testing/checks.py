"""The contract checks clfw runs on its own strategies, callable on any strategy or plugin by its class path.

A strategy (or plugin) is described as a model config, exactly as in a ``clfw fit`` YAML file: ``class_path`` and
``init_args``, nested objects as ``class_path``/``init_args`` too. It is built with jsonargparse, the parser behind the
CLI, so a strategy that passes the checks also builds from a config. Configs are plain JSON values, which lets the DDP
check hand them to its own launch script in a fresh process.

clfw's core never imports ``clfw.strategies``: the plugin host (``clfw.strategies.Naive``) and the Refresh companion
(``clfw.strategies.Refresh``) are named here by class path and imported only when a check builds a model. Pass other
class paths to ``plugin_host`` or ``compose_with`` to use other ones.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import math
import os
import site
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from clfw.datamodule import ContinualDataModule
from clfw.evaluation import AccuracyMatrix, evaluate
from clfw.module import ContinualModule
from clfw.plugins import Plugin
from clfw.testing.fixtures import Interrupt, ReplayPlugin, TinyStream, assert_same_state, fit, snapshot

CHECKS: tuple[str, ...] = ("scenarios", "hygiene", "composition", "resume", "ddp")
"""The checks :func:`check_strategy` runs, in order; pass a subset as ``checks`` (e.g. one per pytest parameter)."""

PLUGIN_HOST = "clfw.strategies.Naive"
"""The strategy a plugin under test is attached to."""

COMPANIONS: tuple[dict[str, Any], ...] = (
    {"class_path": "clfw.strategies.Refresh", "init_args": {"delta": 0.01}},  # large enough to matter in a tiny run
    {"class_path": "clfw.testing.ReplayPlugin", "init_args": {"capacity": 20, "batch_size": 4}},
)
"""The plugins appended to the strategy's own for the composition, resume and DDP checks."""

TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "backbone": {"class_path": "clfw.backbones.MLP", "init_args": {"in_features": 16, "hidden": [16], "dropout": 0.2}},
    "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
}
"""Added to a model's ``init_args`` when its class takes the argument and the caller did not give it: a one-layer MLP
with dropout (so the resume check covers the dropout draws) for :class:`TinyStream`'s 16-pixel inputs, and SGD with
momentum (so the optimizer state must ride in checkpoints)."""

SCENARIO_ORDER: tuple[str, ...] = ("class", "task", "domain")


class ContractError(AssertionError):
    """A strategy broke the contract; the message names the strategy, the check and what differed."""


# ----------------------------------------------------------------------------------------------------------- configs
def _class_path(obj: str | type) -> str:
    return obj if isinstance(obj, str) else f"{obj.__module__}.{obj.__qualname__}"


def import_class(class_path: str) -> type:
    """The class named by a dotted ``class_path``.

    Args:
        class_path: Module path and class name, e.g. ``"mylab.MyStrategy"``.
    """
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class path {class_path!r} is not a dotted path such as 'mylab.MyStrategy'")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {class_path!r}: {err}") from err
    if not isinstance(cls, type):
        raise ValueError(f"{class_path!r} is a {type(cls).__name__}, expected a class")
    return cls


@functools.cache
def _accepted_arguments(cls: type) -> frozenset[str]:
    """The ``init_args`` keys jsonargparse accepts for ``cls`` (``**kwargs`` followed into the base classes)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, "model", sub_configs=True)
    return frozenset(a.dest.split(".")[1] for a in parser._actions if a.dest.startswith("model."))


def model_config(
    strategy: str | type,
    init_args: Mapping[str, Any] | None = None,
    *,
    plugin_host: str | type | Mapping[str, Any] = PLUGIN_HOST,
) -> dict[str, Any]:
    """The model config (``class_path``, ``init_args``) the checks build for ``strategy``.

    Args:
        strategy: Class path (or class) of a :class:`~clfw.ContinualModule` subclass, or of a :class:`~clfw.Plugin`
            subclass, which is then attached to ``plugin_host``.
        init_args: The strategy's (or plugin's) tiny arguments as in a config file (JSON values; nested objects as
            ``{"class_path": ..., "init_args": ...}``). :data:`TINY_DEFAULTS` fills ``backbone`` and ``optimizer``
            when the model takes them and they are not given.
        plugin_host: Class path (or class) of the strategy a plugin is attached to, or its model config
            (``class_path``, ``init_args``: a replay strategy with tiny arguments for a plugin that needs a memory).
    """
    path, args = _class_path(strategy), dict(init_args or {})
    try:
        json.dumps(args)
    except TypeError as err:
        raise ValueError(f"init_args of {path} must be JSON values as in a config file, got {args!r}: {err}") from err
    cls = import_class(path)
    if issubclass(cls, Plugin):
        plugin = {"class_path": path, "init_args": args}
        if isinstance(plugin_host, Mapping):
            host_args = copy.deepcopy(dict(plugin_host.get("init_args") or {}))
            config = {"class_path": plugin_host["class_path"], "init_args": {**host_args, "plugins": [plugin]}}
        else:
            config = {"class_path": _class_path(plugin_host), "init_args": {"plugins": [plugin]}}
        cls = import_class(config["class_path"])
    elif issubclass(cls, ContinualModule):
        config = {"class_path": path, "init_args": args}
    else:
        raise ValueError(f"{path} is neither a clfw.ContinualModule nor a clfw.Plugin subclass")
    if not issubclass(cls, ContinualModule):
        raise ValueError(f"plugin_host {config['class_path']} is not a clfw.ContinualModule subclass")
    accepted = _accepted_arguments(cls)
    for key, value in TINY_DEFAULTS.items():
        if key in accepted and key not in config["init_args"]:
            config["init_args"][key] = copy.deepcopy(value)
    return config


def compose(config: Mapping[str, Any], plugins: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of ``config`` with ``plugins`` appended to its ``init_args.plugins``.

    Args:
        config: A model config (see :func:`model_config`).
        plugins: Plugin configs (``class_path``, ``init_args``).
    """
    out = copy.deepcopy(dict(config))
    init_args = out.setdefault("init_args", {})
    init_args["plugins"] = [*(init_args.get("plugins") or []), *copy.deepcopy(list(plugins))]
    return out


def build_model(config: Mapping[str, Any]) -> ContinualModule:
    """Instantiates a model config with jsonargparse, as ``clfw fit`` does with the ``model`` section of a config.

    Args:
        config: A model config (see :func:`model_config`).
    """
    from argparse import ArgumentError

    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=ContinualModule)
    try:
        cfg = parser.parse_object({"model": dict(config)})
    except (ArgumentError, TypeError, ValueError) as err:
        what = f"{config.get('class_path')} from init_args {config.get('init_args')}"
        raise ValueError(f"cannot build {what}: {err}") from err
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return instantiate(cfg).model


def preferred_scenario(cls: type[ContinualModule]) -> str:
    """The scenario the single-scenario checks use: class-IL when supported, else the first supported one.

    Args:
        cls: The strategy class (its ``supported_scenarios``).
    """
    supported = [s for s in SCENARIO_ORDER if s in cls.supported_scenarios]
    if not supported:
        names = f"{cls.__name__}.supported_scenarios={cls.supported_scenarios!r}"
        raise ValueError(f"{names} names none of {list(SCENARIO_ORDER)}")
    return supported[0]


def tiny_stream(scenario: str, epochs_per_task: int = 1, small: bool = False, validation: bool = False) -> TinyStream:
    """The checks' stream: 2 tasks of 48 training samples (6 batches of 8), or of 16 (2 batches) when ``small``.

    Args:
        scenario: ``"class"``, ``"task"`` or ``"domain"``.
        epochs_per_task: Epochs of each task.
        small: 16 training samples per task instead of 48.
        validation: Also hold out a validation split (a fifth of each class, on top of the same training samples),
            for strategies and plugins that declare ``needs_validation_split``.
    """
    per_class = (16 if small else 48) // (4 if scenario == "domain" else 2)
    if validation:
        per_class, extra = round(per_class / (1 - VALIDATION_FRACTION)), {"val_fraction": VALIDATION_FRACTION}
    else:
        extra = {}
    return TinyStream(
        n_tasks=2, scenario=scenario, train_per_class=per_class, batch_size=8, epochs_per_task=epochs_per_task,
        **extra,
    )  # fmt: skip


VALIDATION_FRACTION = 0.2


def needs_validation(model: ContinualModule | Mapping[str, Any]) -> bool:
    """Whether a model (or a model config) or one of its plugins declares ``needs_validation_split`` (BiC's bias
    correction fits on held-out data)."""
    if isinstance(model, Mapping):
        paths = [model["class_path"], *(p["class_path"] for p in (model.get("init_args") or {}).get("plugins") or [])]
        parts: list[Any] = [import_class(p) for p in paths]
    else:
        parts = [model, *model.plugins]
    return any(getattr(p, "needs_validation_split", False) for p in parts)


# -------------------------------------------------------------------------------------------------------- fitting
def _flags(module: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in module.named_modules()}


class _Watch(pl.Callback):
    """Counts training batches and records, at each of them, a module left in eval mode or a submodule whose
    train/eval flag changed since the first batch."""

    resume_neutral = True

    def __init__(self) -> None:
        self.batches = 0
        self.first: dict[str, bool] | None = None
        self.problems: list[str] = []

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        flags = _flags(pl_module)
        if self.first is None:
            self.first = flags
        first = self.first
        changed = sorted(n or "the module itself" for n in flags.keys() & first.keys() if flags[n] != first[n])
        if not pl_module.training and "the module itself" not in changed:
            changed.insert(0, "the module itself (in eval mode)")
        if changed:
            changed.sort(key=lambda n: not n.startswith("the module itself"))
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            self.problems.append(
                f"at training step {trainer.global_step} (epoch {trainer.current_epoch}) the train/eval flags differ "
                f"from the first step's for {changed[:4]}{more}: a hook (on_task_end?) switched modes and did not "
                "restore them (use clfw.evaluation.eval_mode)"
            )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.batches += 1


@dataclass
class _Run:
    module: ContinualModule
    dm: ContinualDataModule
    trainer: pl.Trainer
    matrix: AccuracyMatrix
    watch: _Watch = field(default_factory=_Watch)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seeds Python, NumPy and torch (``pl.seed_everything``) without leaving ``PL_GLOBAL_SEED`` behind."""
    saved = os.environ.get("PL_GLOBAL_SEED")
    pl.seed_everything(seed, verbose=False)
    if saved is None:
        os.environ.pop("PL_GLOBAL_SEED", None)
    else:
        os.environ["PL_GLOBAL_SEED"] = saved
    yield


def _fit(config: Mapping[str, Any], dm: ContinualDataModule, root: Path, seed: int = 0, **kwargs: Any) -> _Run:
    with _seeded(seed):
        module = build_model(config)
    watch = _Watch()
    callbacks = [watch, *kwargs.pop("callbacks", [])]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        trainer, matrix = fit(module, dm, callbacks, plot=False, root=str(root), **kwargs)
    return _Run(module, dm, trainer, matrix, watch)


def _fail(label: str, message: str) -> ContractError:
    return ContractError(f"{label}: {message}")


def _check_matrix(rows: list[list[float]], initial: list[float] | None, n: int, label: str) -> None:
    if len(rows) != n or any(len(r) != n for r in rows) or initial is None or len(initial) != n:
        raise _fail(label, f"the accuracy matrix is incomplete: {len(rows)} rows {rows} and initial row {initial}, "
                    f"expected {n} rows of {n}")  # fmt: skip
    if not all(math.isfinite(a) for r in [initial, *rows] for a in r):
        raise _fail(label, f"the accuracy matrix holds non-finite values: {rows} (initial {initial})")


# --------------------------------------------------------------------------------------------------------- checks
def _check_scenarios(
    config: dict[str, Any], scenarios: Sequence[str], root: Path, label: str, done: Mapping[str, _Run]
) -> dict[str, _Run]:
    """Fits 2 small tasks in each scenario (reusing the runs of ``done``); each must give a complete, finite matrix."""
    runs = dict(done)
    for scenario in scenarios:
        if scenario not in runs:
            runs[scenario] = _fit(
                config,
                tiny_stream(scenario, small=True, validation=needs_validation(config)),
                root / f"scenario_{scenario}",
            )
        run = runs[scenario]
        _check_matrix(run.matrix.rows, run.matrix.initial, 2, f"{label} [{scenario}-IL]")
    return runs


def _check_refused(config: dict[str, Any], scenarios: Sequence[str], label: str) -> None:
    for scenario in scenarios:
        module = build_model(config)
        try:
            module.attach_stream(tiny_stream(scenario, small=True, validation=needs_validation(config)))
        except ValueError as err:
            if scenario not in str(err):
                raise _fail(label, f"refused the {scenario}-IL stream without naming it: {err}") from err
        else:
            raise _fail(label, f"{scenario!r} is not in supported_scenarios, yet a {scenario}-IL stream was accepted")


def _check_hygiene(run: _Run, label: str) -> None:
    if run.watch.problems:
        raise _fail(label, run.watch.problems[0])
    module, dm = run.module, run.dm
    tasks = list(range(dm.stream.n_tasks))
    module.train()
    first_child = next(iter(module.children()), None)
    if first_child is not None:
        first_child.eval()  # mixed flags: evaluation must restore each submodule's own flag
    flags, state = _flags(module), snapshot(module)
    acc, _ = evaluate(module, dm, tasks)
    if _flags(module) != flags:
        changed = sorted(k for k, v in _flags(module).items() if flags.get(k) != v)
        raise _fail(label, f"evaluation did not restore the train/eval flags of {changed}")
    try:
        assert_same_state(state, snapshot(module), "evaluation changed the state:")
    except AssertionError as err:
        raise _fail(label, str(err)) from None
    again, _ = evaluate(module, dm, tasks)
    if again != acc:
        raise _fail(label, f"two evaluations of the same model differ ({acc} then {again}): predict is not "
                    "deterministic in eval mode")  # fmt: skip
    if acc != run.matrix.rows[-1]:
        raise _fail(label, f"the accuracy matrix's last row {run.matrix.rows[-1]} differs from an evaluation of the "
                    f"final model {acc}: the model changed after its last task end")  # fmt: skip
    module.eval()
    flags = _flags(module)
    batch = dm.stream.tasks[-1].test.batch(torch.arange(8), dm.eval_transform())
    with torch.no_grad():
        scores = [module.class_scores(batch.x, batch.task) for _ in range(2)]
    if _flags(module) != flags:
        raise _fail(label, "predict switched train/eval flags: it must leave the modes as the caller set them")
    if scores[0].shape != (8, dm.stream.num_classes) or torch.isnan(scores[0]).any():
        got = f"shape {tuple(scores[0].shape)}, NaN: {bool(torch.isnan(scores[0]).any())}"
        raise _fail(label, f"predict gave scores of {got}, expected shape (8, {dm.stream.num_classes}) without NaN")
    if not torch.equal(scores[0], scores[1]):
        raise _fail(label, "predict gave different scores for the same inputs in eval mode")
    try:
        assert_same_state(state, snapshot(module), "predict changed the state:")
    except AssertionError as err:
        raise _fail(label, str(err)) from None
    module.train()


def _check_resume(config: dict[str, Any], scenario: str, root: Path, label: str) -> _Run:
    """Fits 2 tasks of 2 epochs (6 steps each: task 1 is steps 13..24) uninterrupted; then stops a second run after
    step 17 and resumes it from its last checkpoint (step 15, mid-task 1) under another global seed; both must end with
    the same accuracy matrix and every state_dict entry equal bit for bit."""
    reference = _fit(
        config, tiny_stream(scenario, epochs_per_task=2, validation=needs_validation(config)), root / "reference"
    )
    _check_matrix(reference.matrix.rows, reference.matrix.initial, 2, label)
    ckpt_dir = root / "checkpoints"
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_last=True, save_top_k=-1)
    try:
        stream = tiny_stream(scenario, epochs_per_task=2, validation=needs_validation(config))
        stopped = _fit(config, stream, root / "interrupted", callbacks=[ckpt, Interrupt(17)], enable_checkpointing=True)
    except RuntimeError as err:
        if "interrupted after step 17" not in str(err):
            raise
    else:
        end = stopped.trainer.global_step
        raise _fail(label, f"the run was to stop after optimizer step 17, but it ended at step {end}: the resume "
                    "check needs an optimizer step per training batch")  # fmt: skip
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    if last["clfw"]["task"] != 1 or last["clfw"]["task_ended"]:
        raise _fail(label, f"the last checkpoint (step {last['global_step']}) is not in the middle of task 1")
    # under another global seed: resuming must not depend on it
    stream = tiny_stream(scenario, epochs_per_task=2, validation=needs_validation(config))
    resumed = _fit(config, stream, root / "resumed", seed=123, ckpt_path=str(ckpt_dir / "last.ckpt"))
    if resumed.matrix.rows != reference.matrix.rows:
        step = last["global_step"]
        raise _fail(label, f"resumed from step {step}, the accuracy matrix {resumed.matrix.rows} differs "
                    f"from the uninterrupted run's {reference.matrix.rows}")  # fmt: skip
    try:
        assert_same_state(snapshot(reference.module), snapshot(resumed.module), "after a resume, state_dict entry")
    except AssertionError as err:
        step = last["global_step"]
        raise _fail(label, f"{err} differs from the uninterrupted run's (resumed from step {step})") from None
    return reference


def _check_composition(run: _Run, label: str) -> None:
    replays = [p for p in run.module.plugins if isinstance(p, ReplayPlugin)]
    if not replays:
        raise _fail(label, "the composition check needs a clfw.testing.ReplayPlugin among compose_with")
    n, steps = run.dm.stream.n_tasks, run.trainer.global_step
    for p in replays:
        if p.tasks_started != list(range(n)) or p.tasks_ended != list(range(n)):
            heard = f"task starts {p.tasks_started} and ends {p.tasks_ended}"
            raise _fail(label, f"the plugins heard {heard}, expected {list(range(n))} for both: a hook that starts or "
                        "ends tasks is overridden without calling super()")  # fmt: skip
        counts = (p.calls["before_training_step"], p.calls["loss_terms"], p.calls["before_optimizer_step"])
        if counts != (run.watch.batches, steps, steps):
            raise _fail(label, f"over {run.watch.batches} training batches and {steps} optimizer steps the plugins' "
                        f"before_training_step, loss_terms and before_optimizer_step ran {counts} times: leave "
                        "training_step and on_before_optimizer_step to ContinualModule (or call super())")  # fmt: skip
        if steps and not len(p.memory):
            raise _fail(label, "the replay plugin's memory stayed empty")


def check_strategy(
    strategy: str | type,
    init_args: Mapping[str, Any] | None = None,
    *,
    checks: Sequence[str] = CHECKS,
    plugin_host: str | type | Mapping[str, Any] = PLUGIN_HOST,
    compose_with: Sequence[Mapping[str, Any]] = COMPANIONS,
    tmp_path: str | os.PathLike[str] | None = None,
) -> None:
    """Runs clfw's contract checks on a strategy (or plugin) and raises :class:`ContractError` at the first breach.

    Checks (a subset may be chosen with ``checks``; each run starts from ``seed_everything(0)``, and torch runs on one
    thread meanwhile, see :func:`single_threaded`):

    - ``"scenarios"``: 2 tiny tasks in every supported scenario (class-, task-, domain-IL, from
      ``supported_scenarios``) give a complete, finite accuracy matrix; other scenarios are refused naming them.
    - ``"hygiene"``: during training the module stays in train mode and no submodule's train/eval flag changes between
      steps; an evaluation restores every flag, changes no state, repeats exactly and equals the matrix's last row;
      ``predict`` in eval mode keeps the flags and the state and repeats exactly.
    - ``"composition"``: with ``compose_with`` appended to its plugins (Refresh and a
      :class:`~clfw.testing.ReplayPlugin` by default) it trains to a complete, finite matrix, and the plugins hear
      every task start and end, every training step and every optimizer step.
    - ``"resume"``: 2 tasks of 2 epochs (6 steps each) stopped after step 17 and resumed, under another global seed,
      from the checkpoint of step 15 (the middle of task 1) end with the same accuracy matrix and the same
      state_dict, bit for bit, as an uninterrupted run (whose run also serves ``"scenarios"`` and ``"hygiene"``).
    - ``"ddp"``: the model composed with ``compose_with``, trained on 2 CPU processes (gloo) by :func:`check_ddp`,
      keeps identical replicas.

    Args:
        strategy: Class path (or class) of the strategy, or of a plugin (attached to ``plugin_host``). It must be
            importable by that path (for ``"ddp"``, in a fresh process from the same ``sys.path``).
        init_args: Its tiny arguments, as in a config file (see :func:`model_config`).
        checks: Which checks to run (names from :data:`CHECKS`).
        plugin_host: The strategy a plugin under test is attached to (class path, class, or model config).
        compose_with: Plugin configs appended for the composition and DDP checks (``()``: the bare model under DDP).
        tmp_path: Folder for run directories and checkpoints (default: a temporary folder, deleted afterwards).
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}, expected names from {list(CHECKS)}")
    if "composition" in checks and not compose_with:
        raise ValueError("the composition check needs plugins in compose_with")
    config = model_config(strategy, init_args, plugin_host=plugin_host)
    composed = compose(config, compose_with)
    cls = import_class(config["class_path"])
    label = _class_path(strategy)
    scenario = preferred_scenario(cls)
    supported = [s for s in SCENARIO_ORDER if s in cls.supported_scenarios]
    with _directory(tmp_path) as root, single_threaded():
        runs: dict[str, _Run] = {}
        if "resume" in checks:  # its uninterrupted run also serves the scenario and hygiene checks
            runs[scenario] = _check_resume(config, scenario, root / "resume", f"{label} [resume]")
        if "scenarios" in checks or "hygiene" in checks:
            runs = _check_scenarios(config, supported if "scenarios" in checks else [scenario], root, label, runs)
        if "scenarios" in checks:
            _check_refused(config, [s for s in SCENARIO_ORDER if s not in supported], label)
        if "hygiene" in checks:
            _check_hygiene(runs[scenario], f"{label} [hygiene]")
        if "composition" in checks:
            run = _fit(
                composed, tiny_stream(scenario, small=True, validation=needs_validation(composed)), root / "composition"
            )
            _check_matrix(run.matrix.rows, run.matrix.initial, 2, f"{label} [composition]")
            _check_composition(run, f"{label} [composition]")
        if "ddp" in checks:
            check_ddp({label: composed}, root / "ddp")


@contextmanager
def single_threaded() -> Iterator[None]:
    """Runs torch's CPU operations on one thread, then restores the thread count. The checks' models are tiny: threads
    cost more to wake than they save, and on a machine busy with other processes they wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _directory(path: str | os.PathLike[str] | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="clfw-testing-") as tmp:
        yield Path(tmp)


# ------------------------------------------------------------------------------------------------------------ DDP
def _child_pythonpath() -> str:
    """This process's ``sys.path`` entries that a fresh interpreter would not have (pytest's rootdir, the current
    folder, ``PYTHONPATH``), so the launch script imports the same classes."""
    own = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    own |= {*site.getsitepackages(), site.getusersitepackages()}
    own = {os.path.realpath(p) for p in own if p}
    entries: list[str] = []
    for p in sys.path:
        real = os.path.realpath(p or os.getcwd())
        inside = any(real == o or real.startswith(o + os.sep) for o in own)
        if not inside and os.path.isdir(real) and real not in entries:
            entries.append(real)
    return os.pathsep.join(entries)


def run_ddp(
    configs: Mapping[str, Mapping[str, Any]], tmp_path: str | os.PathLike[str], timeout: float = 600
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Trains each model config on the checks' 2-task stream under Lightning's DDP on 2 CPU processes (gloo), one
    after the other in one launch of ``python -m clfw.testing.ddp``, and returns what each rank ended with.

    The launch script runs in a subprocess because Lightning's DDP launcher starts rank 1 by re-running the command
    line, which inside pytest would be the whole test session. The classes are imported by their class paths, with
    this process's extra ``sys.path`` entries on the subprocess's ``PYTHONPATH``.

    Args:
        configs: Model configs (see :func:`model_config`) by name.
        tmp_path: Folder for the configs file, the run directories and each rank's results.
        timeout: Seconds the launch may take.

    Returns:
        Each name's results of rank 0 and rank 1: ``state_dict``, ``rows`` (the accuracy matrix), ``initial`` and
        ``world`` (the world size).
    """
    out = Path(tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    names = list(configs)
    (out / "configs.json").write_text(json.dumps([configs[n] for n in names]))
    extra = _child_pythonpath()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "clfw.testing.ddp", str(out / "configs.json"), str(out)],
        cwd=out, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ContractError(f"the 2-process DDP run of {names} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return ddp_results(out, names)


def ddp_results(outdir: str | os.PathLike[str], names: list[str]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """What each rank of a finished ``python -m clfw.testing.ddp`` launch in ``outdir`` ended with, by name (the
    configs' names in the order of its configs file); :func:`run_ddp` returns it."""
    out = Path(outdir)
    return {
        name: (
            torch.load(out / f"{i}_rank0.pt", weights_only=False),
            torch.load(out / f"{i}_rank1.pt", weights_only=False),
        )
        for i, name in enumerate(names)
    }


def check_replicas(name: str, rank0: Mapping[str, Any], rank1: Mapping[str, Any]) -> None:
    """Raises :class:`ContractError` unless both ranks' results (from :func:`run_ddp`) come from a world of 2 and hold
    the same complete, finite accuracy matrix and the same state_dict, bit for bit.

    Args:
        name: The model's name in messages.
        rank0: Rank 0's results.
        rank1: Rank 1's results.
    """
    label = f"{name} [ddp]"
    if rank0["world"] != 2 or rank1["world"] != 2:
        raise _fail(label, f"world sizes {rank0['world']}, {rank1['world']}, expected 2")
    _check_matrix(rank0["rows"], rank0["initial"], 2, label)
    if (rank0["rows"], rank0["initial"]) != (rank1["rows"], rank1["initial"]):
        raise _fail(label, f"the ranks measured different accuracy matrices: {rank0['rows']} and {rank1['rows']}")
    try:
        assert_same_state(rank0["state_dict"], rank1["state_dict"], "the replicas differ in")
    except AssertionError as err:
        raise _fail(label, str(err)) from None


def check_ddp(
    configs: Mapping[str, Mapping[str, Any]], tmp_path: str | os.PathLike[str], timeout: float = 600
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """:func:`run_ddp`, then :func:`check_replicas` for each config; returns the results.

    Args:
        configs: Model configs (see :func:`model_config`) by name.
        tmp_path: Folder for the configs file, the run directories and each rank's results.
        timeout: Seconds the launch may take.
    """
    results = run_ddp(configs, tmp_path, timeout)
    for name, (rank0, rank1) in results.items():
        check_replicas(name, rank0, rank1)
    return results

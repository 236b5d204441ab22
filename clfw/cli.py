"""The ``clfw`` command: Lightning's CLI over any strategy and any stream, one ``fit`` for the whole stream.

``clfw fit --model Naive --data SplitMNIST`` (or the class paths ``clfw.strategies.Naive``,
``clfw.benchmarks.SplitMNIST``) or ``clfw fit --config configs/quickstart.yaml``.
Any importable ``ContinualModule`` / ``ContinualDataModule`` subclass works by its ``class_path``; clfw's own
strategies and benchmarks are imported here (and only here in the core) so their short names resolve too.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from argparse import ArgumentError
from types import FrameType
from typing import Any, Literal

import yaml
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from typing_extensions import override

import clfw.benchmarks
import clfw.strategies  # registers the short names of the built-in strategies (and names plugins for --model.help)
from clfw import packaged_configs
from clfw.callbacks import ContinualProgressBar
from clfw.checkpoint import RENAMED_PACKAGES, canonical_paths, read_checkpoint
from clfw.datamodule import ContinualDataModule
from clfw.evaluation import AccuracyMatrix
from clfw.module import ContinualModule
from clfw.plugins import Plugin
from clfw.preemption import EXIT_PREEMPTED, PreemptedError, Preemption
from clfw.resume import RunConfig, prepare_resume
from clfw.runs import claim_run_dir, run_dir
from clfw.tracking import WandbTracking, default_name_and_group, finish_runs, log_config, set_run_defaults


class ContinualCLI(LightningCLI):
    """LightningCLI in subclass mode for strategies (``--model``) and streams (``--data``).

    - ``model.init_args.num_classes`` is linked from the datamodule, so the head covers every class of the stream;
    - ``trainer.max_epochs`` is derived from the stream (``n_tasks * epochs_per_task``): setting another value is an
      error;
    - the :class:`~clfw.AccuracyMatrix` callback is always on, configured under ``evaluation``;
    - the progress bar names the task (:class:`~clfw.callbacks.ContinualProgressBar`) unless another bar is given;
    - ``--resume auto|require|never`` (:mod:`clfw.resume`): a resumed run is the same run, in the same directory, with
      the same config (checked before training), or it does not start; ``--ckpt_path last`` means ``require``;
    - :class:`~clfw.preemption.Preemption` is added unless given: on SIGUSR1 (SLURM's ``--signal=SIGUSR1@90``) the
      run writes an exact checkpoint into its own checkpoint directory at the end of the step, requeues the SLURM
      job and exits with status 75, and ``--resume auto`` continues it;
    - the resolved config is saved as ``config.yaml`` in the run's own directory (:func:`clfw.runs.run_dir`), and a
      new run into a directory that holds another run's ``metrics.json`` is refused;
    - with a ``WandbLogger`` (:mod:`clfw.tracking`): the resolved config becomes the W&B run config, the run is named
      and grouped from strategy, stream and seed unless given, :class:`~clfw.tracking.WandbTracking` is added unless
      given (summary, accuracy-matrix table, ``metrics.json`` artifact), and the W&B run is finished after the fit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self.run_config = RunConfig()
        super().__init__(
            ContinualModule,
            ContinualDataModule,
            *args,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            **kwargs,
        )

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(AccuracyMatrix, "evaluation")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--resume",
            type=Literal["auto", "require", "never"] | None,
            default=None,
            help="auto: resume this run's last.ckpt if there is one; require: resume it or fail; never: a new run "
            "(default: require with --ckpt_path, else never)",
        )

    @override
    def _parse_ckpt_path(self) -> None:
        """Lightning reads the checkpoint while parsing: a corrupt one must fail here with one line, not a traceback."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path != "last":
            read_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        """Applies the resume policy before training (:func:`clfw.resume.prepare_resume`)."""
        section = self.config[self.subcommand] if self.subcommand else self.config
        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        ckpt = prepare_resume(
            self.trainer,
            self.datamodule,
            section.get("resume"),
            section.get("ckpt_path"),
            section.as_dict(),
            self.run_config,
        )
        init["ckpt_path"] = ckpt
        if ckpt is None:
            claim_run_dir(self.trainer)
        seed = section.get("seed_everything")
        name, group = default_name_and_group(
            self.model, self.datamodule, seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            self.run_config.config or {},
        )  # fmt: skip
        set_run_defaults(self.trainer, name, group)  # before the W&B run starts (a resumed one keeps its id)

    def after_fit(self) -> None:
        """Finishes the W&B run, so that a next fit in this process gets its own (:func:`clfw.tracking.finish_runs`)."""
        finish_runs(self.trainer)

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        dm = self.datamodule
        if isinstance(dm, ContinualDataModule):
            if config.get("max_epochs") not in (None, dm.total_epochs):
                raise ValueError(
                    f"trainer.max_epochs={config['max_epochs']}, but the stream takes n_tasks * epochs_per_task = "
                    f"{dm.total_epochs} epochs; leave trainer.max_epochs unset (set data.epochs_per_task instead)"
                )
            config["max_epochs"] = dm.total_epochs
            config["reload_dataloaders_every_n_epochs"] = 1
        given = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, ContinualProgressBar()]
        loggers = config.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        if any(isinstance(lg, WandbLogger) for lg in loggers) and not any(isinstance(c, WandbTracking) for c in given):
            callbacks = [*callbacks, WandbTracking()]
        if not any(isinstance(cb, Preemption) for cb in given):
            callbacks = [*callbacks, Preemption()]
        return super()._instantiate_trainer(config, [*callbacks, self.run_config])


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run's own directory (:func:`clfw.runs.run_dir`), not in
    ``trainer.log_dir``, which for W&B is the ``save_dir`` that all runs share."""

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            directory = run_dir(trainer)
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The resolved config, nested as the CLI names its keys, becomes the W&B run config (rank 0 only)."""
        log_config(trainer, yaml.safe_load(self.parser.dump(self.config, skip_none=False)))


# ------------------------------------------------------------------------------------------ bad input, one line
DEBUG_ENV = "CLFW_DEBUG"
"""Environment variable that, set to anything but ``""`` or ``"0"``, makes :func:`main` show full tracebacks."""

EXTRAS = {"wandb": "wandb", "avalanche": "avalanche", "quadprog": "gem"}
"""Optional dependencies that a clfw extra installs: module name -> extra (``pip install "clfw[extra]"``)."""

_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given class_path", 'Parser key "')


def exception_chain(err: BaseException) -> list[BaseException]:
    """``err``, then what it was raised from or during (``__cause__``, else ``__context__``), outermost first."""
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _frames(chain: list[BaseException]) -> list[FrameType]:
    """The frames of every traceback in ``chain``, outermost first, each once."""
    frames: list[FrameType] = []
    for err in chain:
        tb = err.__traceback__
        while tb is not None:
            if all(tb.tb_frame is not f for f in frames):
                frames.append(tb.tb_frame)
            tb = tb.tb_next
    return frames


def _parameters(cls: type) -> set[str]:
    """Names of the arguments of ``cls``'s constructor, including those its ``**kwargs`` pass to its bases."""
    names: set[str] = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names |= {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names


def _named_parameter(message: str, cls: type) -> str | None:
    """The constructor argument of ``cls`` that ``message`` is about: its first word, when that is an argument and no
    other argument is constrained in the same message (``"a must be >= 0 and b > 0"`` names no single one)."""
    params = _parameters(cls)
    first = re.match(r"\s*(\w+)\s*(=|must\b|is\b|should\b|has\b|does\b|cannot\b)", message)
    if first is None or first.group(1) not in params:
        return None
    others = params - {first.group(1)}
    constrained = re.findall(r"\b(\w+)\s*(?:>=|<=|>|<|=|!=|must\b|in \[|in \()", message[first.end() :])
    return None if any(name in others for name in constrained) else first.group(1)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _instantiation_key(frames: list[FrameType]) -> tuple[str, type | None] | None:
    """Where jsonargparse was instantiating when the error came: the config key (``model``,
    ``model.init_args.backbone``, ``trainer.callbacks[1]``) and the class, read from jsonargparse's frames."""
    key, cls, indexed = "", None, False
    for frame in frames:
        name, local = frame.f_code.co_name, frame.f_locals
        if "jsonargparse" not in frame.f_code.co_filename:
            continue
        owner = local.get("self")
        if name == "instantiate_classes" and isinstance(getattr(owner, "dest", None), str):
            key = owner.dest if not key else f"{key}.init_args.{owner.dest}"
            cls, indexed = None, False
        elif name == "adapt_typehints" and isinstance(local.get("n"), int) and key and cls is None and not indexed:
            key, indexed = f"{key}[{local['n']}]", True  # the element of a list argument (callbacks, plugins)
        elif name == "adapt_class_type" and isinstance(local.get("val_class"), type) and key:
            cls = local["val_class"]
    return (key, cls) if key else None


def _setup_key(frames: list[FrameType], error_frames: list[FrameType]) -> tuple[str, type] | None:
    """The config key of the object (strategy, plugin, stream, callback) whose method raised the error after
    instantiation, e.g. in ``setup``, found by identity among the objects the CLI instantiated."""
    cli = next((f.f_locals["self"] for f in frames if isinstance(f.f_locals.get("self"), LightningCLI)), None)
    config = getattr(cli, "config_init", None)
    if cli is None or config is None:
        return None
    section = config.get(getattr(cli, "subcommand", None) or "", config)
    owners: list[tuple[Any, str]] = [(getattr(cli, "model", None), "model"), (getattr(cli, "datamodule", None), "data")]
    for i, plugin in enumerate(getattr(getattr(cli, "model", None), "plugins", None) or []):
        owners.append((plugin, f"model.init_args.plugins[{i}]"))
    for key in ("evaluation", "trainer.callbacks", "trainer.logger"):
        value = section.get(key) if hasattr(section, "get") else None
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            owners.append((item, f"{key}[{i}]" if isinstance(value, list) else key))
    for frame in reversed(error_frames):
        owner = frame.f_locals.get("self")
        for obj, key in owners:
            if owner is not None and owner is obj:
                return key, type(obj)
    return None


def _missing_extra(err: BaseException) -> tuple[str, str] | None:
    """``(module, extra)`` when ``err`` says an optional dependency that a clfw extra installs is missing."""
    if not isinstance(err, ImportError):
        return None
    names = [err.name or "", *re.findall(r"(?:No module named|Requirement) '([\w.]+)", str(err))]
    for module in names:
        top = module.split(".")[0]
        if top in EXTRAS:
            return top, EXTRAS[top]
    return None


def _pretty(message: str) -> str:
    """jsonargparse's type wording made short: ``Expected a <class 'int'>. Got value: x`` -> ``expected int, got x``."""
    message = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", message)
    message = re.sub(r"typing\.Literal\[(.*?)\]", r"one of \1", message)
    return re.sub(r"^Expected an? (.+?)\. Got value: (.*)$", r"expected \1, got \2", message, flags=re.S)


def _parse_error_line(chain: list[BaseException]) -> str:
    """One line from a jsonargparse parsing error: the nested ``Parser key`` path and the innermost reason."""
    path, last = "", None
    nested = False
    reason = str(chain[-1])
    for err in chain:
        text = str(err).strip()
        key = re.match(r'Parser key "([^"]+)"', text)
        if key:
            if key.group(1) != last:  # each key is re-raised a few times on its way up
                path = key.group(1) if not path else f"{path}{'.init_args' if nested else ''}.{key.group(1)}"
                last, nested = key.group(1), False
        elif text.startswith("Problem with given class_path"):
            nested = True
            if 'Parser key "' not in text:
                reason = text  # e.g. "Problem with given class_path 'x.Y': No module named 'x'"
                break
    line = _pretty(" ".join(reason.split()))
    return f"{path}: {line}" if path else line


def bad_input_line(err: BaseException) -> str | None:
    """The one line :func:`main` prints for ``err`` when it is bad input, else ``None`` (a crash keeps its traceback).

    Bad input is: a parsing error; a ``ValueError`` raised while the CLI instantiates the classes or the Trainer, or
    while ``trainer.fit`` sets up (datamodule ``setup``, ``attach_stream``, callbacks' ``setup``), before any training
    or evaluation loop runs; or a missing optional dependency that a clfw extra installs. A ``ValueError`` raised
    inside the loops is a crash. The line names the config key (``model.init_args.buffer_size``) where it is known.
    """
    chain = exception_chain(err)
    if isinstance(err, ArgumentError):
        return _parse_error_line(chain)
    frames = _frames(chain)
    if any(f.f_code.co_name == "_run_stage" and "pytorch_lightning" in f.f_code.co_filename for f in frames):
        return None  # raised while training or evaluating
    real = next((e for e in chain if not str(e).lstrip().startswith(_WRAPPERS)), chain[-1])
    extra = _missing_extra(real) or _missing_extra(chain[-1])
    if extra is not None:
        module, name = extra
        message = f'{module} is not installed; install it with: pip install "clfw[{name}]"'
    elif isinstance(real, ValueError):
        message = " ".join(str(real).split())
    else:
        return None
    real_frames = _frames([real])
    where = _instantiation_key(frames)
    if where is not None:
        key, cls = where
        param = _named_parameter(message, cls) if cls is not None and extra is None else None
        if param is not None:
            return f"{key}.init_args.{param}: {message}"
        return f"{key} ({_class_path(cls)}): {message}" if cls is not None else f"{key}: {message}"
    found = _setup_key(frames, real_frames)
    if found is not None:
        param = _named_parameter(message, found[1])
        if param is not None:
            return f"{found[0]}.init_args.{param}: {message}"
    return message


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _plugin_asked_as_model(argv: list[str]) -> str | None:
    """The name of a plugin given to ``--model.help`` (``--model.help EWC``), which takes strategies only."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--model.help=") else None
        if arg == "--model.help" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            cls = getattr(clfw.strategies, value.rsplit(".", 1)[-1], None)
            if isinstance(cls, type) and issubclass(cls, Plugin):
                return cls.__name__
    return None


def _old_class_paths(argv: list[str]) -> list[tuple[str, str]]:
    """``(old, new)`` for every class path in the old top-level names (``strategies.ER``, ``benchmarks.SplitMNIST``)
    in the arguments or in the ``--config`` files they name. The top-level names are not installed any more (they are
    unrelated packages on PyPI), so such a path would fail to import, or import someone else's package."""
    values: list[Any] = []
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        values.append(value)
        is_config = arg == "--config" or arg.endswith(".config") or arg.startswith("--config=")
        path = value if arg.startswith("--config=") else argv[i + 1] if is_config and i + 1 < len(argv) else None
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    values.append(yaml.safe_load(f))
            except (OSError, yaml.YAMLError):
                pass  # the parser reports it
    found: list[tuple[str, str]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.split(".", 1)[0] in RENAMED_PACKAGES and "." in value:
            new = canonical_paths(value)
            module, _, name = new.rpartition(".")
            try:
                exists = hasattr(importlib.import_module(module), name)
            except ImportError:
                exists = False
            if exists and (value, new) not in found:
                found.append((value, new))

    walk(values)
    return found


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``clfw`` console script and ``python -m clfw``.

    Bad input (a parsing error, a ``ValueError`` from a constructor or from the checks before training, a missing
    optional dependency) is reported as one line, ``clfw: error: <key>: <reason>``, on stderr with exit code 2. With
    ``--debug`` (taken out of the arguments before Lightning's parser sees them) or ``CLFW_DEBUG=1`` the error is
    raised with its full traceback instead. Errors raised while training keep their traceback.

    Args:
        args: Command-line arguments without the program name; ``None`` reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = _debug_requested(argv)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["configs"]:
        packaged_configs.main(argv[1:])
        return
    try:
        argv = packaged_configs.resolve_args(argv)  # --config clfw:quickstart.yaml -> the packaged file
    except ValueError as err:
        if debug:
            raise
        print(f"clfw: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args is None:
        sys.argv[1:] = argv  # LightningCLI (and DDP's relaunch) read sys.argv
    plugin = _plugin_asked_as_model(argv)
    if plugin is not None:
        print(
            f"clfw: error: model.help: {plugin} is a plugin, not a strategy: add it to any strategy with "
            f"--model.plugins+=clfw.strategies.{plugin}, and see its arguments with --model Naive --model.plugins.help "
            f"{plugin}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    old = _old_class_paths(argv)
    if old:
        renamed = ", ".join(f"{a} is now {b}" for a, b in old)
        print(
            f"clfw: error: {renamed} (clfw's strategies and streams install as clfw.strategies and clfw.benchmarks; "
            "short names such as --model ER keep working)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    no_exit = {"exit_on_error": False}
    parser_kwargs = {**no_exit, **{name: dict(no_exit) for name in ContinualCLI.subcommands()}}
    try:
        ContinualCLI(args=None if args is None else argv, parser_kwargs=parser_kwargs)
    except PreemptedError as err:  # the checkpoint is written and the job requeued: one line, no traceback
        print(f"clfw: {err}", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    except Exception as err:
        line = None if debug else bad_input_line(err)
        if line is None:
            raise
        print(f"clfw: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

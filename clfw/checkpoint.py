"""Checkpoints that cannot silently resume the wrong run: atomic writes, a format number, a fingerprint of the run.

- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file beside its target and renames it (an interrupted
  write never leaves a truncated checkpoint, and nothing is staged on another filesystem), and refuses to write
  non-finite parameters. :class:`~clfw.ContinualModule` installs it in place of Lightning's default.
- :func:`read_checkpoint` loads a file or fails with one line: ``corrupt or incomplete checkpoint: PATH``.
- :func:`stream_fingerprint` describes what a checkpoint's state means (strategy, stream, task/epoch mapping, global
  batch); :func:`config_differences` compares flattened configs. A resume with any difference is refused before
  training, naming the key and both values.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from clfw.module import ContinualModule

#: Bumped whenever the meaning of a checkpoint's clfw state changes; other format numbers are refused on resume.
CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, from another format, or from another run."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, but written atomically in the target's own directory, and never with
    non-finite parameters.

    The checkpoint is serialised to ``.<name>.tmp-<pid>-<random>`` beside the target, flushed, then renamed over it
    (``os.replace`` is atomic within one filesystem). A process killed mid-write leaves the previous file intact and
    at most a hidden temporary file, which the next checkpoint written into that directory deletes (its process is
    gone; one run writes into a directory at a time).
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = os.fspath(path)
        if "://" in path:  # remote storage: Lightning's fsspec path
            super().save_checkpoint(checkpoint, path)
            return
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise FloatingPointError(f"not writing checkpoint {path}: non-finite values in {', '.join(bad[:5])}")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        _remove_orphans(directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = os.fspath(path)
        if "://" in path:
            return super().load_checkpoint(path, weights_only=weights_only)
        return read_checkpoint(path)


def _remove_orphans(directory: str) -> None:
    """Deletes the temporary checkpoint files in ``directory`` whose writing process no longer exists."""
    for tmp in glob.glob(os.path.join(glob.escape(directory), ".*.ckpt.tmp-*")):
        pid = tmp.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            os.unlink(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an infinity.

    >>> nonfinite_tensors({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]), "c": torch.arange(3)})
    ['b']
    """
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint at ``path`` on the CPU, or :class:`CheckpointError` naming it when it is missing, empty, corrupt
    or truncated."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"corrupt or incomplete checkpoint: {path} (0 bytes)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # EOFError, zip reader RuntimeError, UnpicklingError ...
        raise CheckpointError(f"corrupt or incomplete checkpoint: {path} ({type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"corrupt or incomplete checkpoint: {path} (no state_dict)")
    return checkpoint


def stream_fingerprint(module: ContinualModule, trainer: pl.Trainer) -> dict[str, Any]:
    """What a checkpoint's state means: the strategy and plugin classes, the stream (class, scenario, tasks, the
    classes and sizes of each task, data seed), the task/epoch mapping and the global batch (per-rank batch x world
    size; the world size alone may change). Equal fingerprints resume the same run.
    """
    dm = module.datamodule
    stream = module.stream
    return {
        "strategy": _qualname(module),
        "plugins": [_qualname(p) for p in module.plugins],
        "stream": _qualname(dm),
        "scenario": stream.scenario,
        "n_tasks": stream.n_tasks,
        "num_classes": stream.num_classes,
        "task_classes": [sorted(int(c) for c in t.classes) for t in stream.tasks],
        "task_train_sizes": [len(t.train) for t in stream.tasks],
        "data_seed": dm.seed,
        "epochs_per_task": dm.epochs_per_task,
        "training_data": module.training_data,
        "global_batch_size": dm.batch_size * trainer.world_size * trainer.accumulate_grad_batches,
        "task_boundaries_visible": stream.boundaries_visible,
    }


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


#: Top-level import names of clfw's strategies and streams before they became ``clfw.strategies`` / ``clfw.benchmarks``.
RENAMED_PACKAGES = ("strategies", "benchmarks")


def canonical_paths(value: Any) -> Any:
    """``value`` (a fingerprint or config read from an older checkpoint) with the class paths of the old top-level
    packages mapped to their canonical names; everything else unchanged.

    >>> canonical_paths({"strategy": "strategies.er.ER", "plugins": ["strategies.ewc.EWC"], "lr": 0.1})
    {'strategy': 'clfw.strategies.er.ER', 'plugins': ['clfw.strategies.ewc.EWC'], 'lr': 0.1}
    >>> canonical_paths("mylab.strategies.Mine")
    'mylab.strategies.Mine'
    """
    if isinstance(value, str):
        head = value.split(".", 1)[0]
        return f"clfw.{value}" if head in RENAMED_PACKAGES and "." in value else value
    if isinstance(value, dict):
        return {k: canonical_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical_paths(v) for v in value]
    return value


class _Absent:
    """Marks a key that one of two configurations lacks."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (dicts and lists) as ``{dotted key: leaf value}``; list items are keyed by their index.

    Empty dicts and lists are leaves, so ``{}`` and ``[]`` stay distinct from an absent key.

    >>> flatten_config({"a": {"b": 1, "c": [2, {"d": None}]}, "e": {}})
    {'a.b': 1, 'a.c.0': 2, 'a.c.1.d': None, 'e': {}}
    """
    if isinstance(config, dict) and config:
        items: Iterable[tuple[Any, Any]] = config.items()
    elif isinstance(config, list) and config:
        items = enumerate(config)
    else:
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def ignored(key: str, patterns: Sequence[str]) -> bool:
    """Whether ``key`` or one of its dotted prefixes matches a glob pattern."""
    parts = key.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes for pattern in patterns)


def config_differences(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """The leaves where two nested configs differ, as sorted ``(dotted key, value in a, value in b)``.

    A key missing on one side has the value ``ABSENT`` there. ``ignore`` holds glob patterns (:mod:`fnmatch`, where
    ``*`` also matches dots) over dotted keys; a key is ignored when it or one of its dotted prefixes matches, so
    ``"trainer.logger"`` ignores the whole logger subtree.

    >>> a = {"seed_everything": 0, "model": {"lr": 0.1, "hidden": [8, 8]}, "trainer": {"logger": False}}
    >>> b = {"seed_everything": 1, "model": {"lr": 0.01, "hidden": [8]}, "trainer": {"logger": {"version": 1}}}
    >>> config_differences(a, b, ignore=["seed_everything", "trainer.logger"])
    [('model.hidden.1', 8, <absent>), ('model.lr', 0.1, 0.01)]
    >>> config_differences(a, a)
    []
    """
    patterns = list(ignore)
    flat_a, flat_b = flatten_config(a), flatten_config(b)
    out = []
    for key in sorted(flat_a.keys() | flat_b.keys()):
        va, vb = flat_a.get(key, ABSENT), flat_b.get(key, ABSENT)
        if va != vb and not ignored(key, patterns):
            out.append((key, va, vb))
    return out


def describe_differences(diffs: list[tuple[str, Any, Any]], what: str = "checkpoint", now: str = "this run") -> str:
    """One line naming the first differences: ``key: A (checkpoint) != B (this run)``."""
    shown = "; ".join(f"{k}: {va!r} ({what}) != {vb!r} ({now})" for k, va, vb in diffs[:4])
    more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
    return shown + more

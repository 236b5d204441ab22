"""The YAML configs shipped with clfw (the ``clfw.configs`` package data, the repository's ``configs/`` folder).

An installed wheel has no ``configs/`` folder beside the user's work, so the CLI names a packaged file
``clfw:<path under configs/>``:

    clfw fit --config clfw:quickstart.yaml
    clfw fit --config clfw:trainer/cpu.yaml --config clfw:data/split_mnist.yaml --config clfw:model/er.yaml
    clfw configs list               # every packaged config, as clfw:<name>
    clfw configs copy my_configs    # copies them into my_configs/ to edit (never overwrites a file)
"""

from __future__ import annotations

import argparse
import importlib.resources
import shutil
from pathlib import Path

PREFIX = "clfw:"
"""How a command-line argument names a packaged config: ``clfw:quickstart.yaml``."""

SUFFIXES = (".yaml", ".yml")


def root() -> Path:
    """The folder that holds the packaged configs (``clfw/configs`` in a wheel, ``configs/`` in an editable clone)."""
    folder = importlib.resources.files("clfw.configs")
    if not isinstance(folder, Path):
        raise RuntimeError(f"clfw's configs are not files on disk ({folder!r}); install clfw unzipped")
    return folder


def names() -> list[str]:
    """Every packaged config, as a path relative to :func:`root` with ``/`` separators, sorted.

    >>> "quickstart.yaml" in names() and "model/er.yaml" in names()
    True
    """
    base = root()
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.suffix in SUFFIXES and p.is_file())


def path(name: str) -> Path:
    """The file of a packaged config.

    Args:
        name: ``clfw:quickstart.yaml`` or ``quickstart.yaml``; a path under ``configs/`` with ``/`` separators.

    Raises:
        ValueError: If clfw ships no config of that name.
    """
    relative = name.removeprefix(PREFIX)
    if relative not in names():
        raise ValueError(
            f"{name!r} is not a config shipped with clfw: expected clfw:<path under configs/>, such as "
            "clfw:quickstart.yaml; `clfw configs list` lists them"
        )
    return root() / relative


def resolve_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``clfw:<name>`` argument (alone, or as the value of ``--key=clfw:<name>``) replaced by the
    path of that packaged config, so ``--config clfw:quickstart.yaml`` reaches the parser as a file.

    Raises:
        ValueError: If an argument names a config that clfw does not ship.
    """
    resolved = []
    for arg in argv:
        key, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if value.startswith(PREFIX):
            arg = f"{key}{sep}{path(value)}"
        resolved.append(arg)
    return resolved


def copy(destination: str | Path) -> list[Path]:
    """Copies every packaged config into ``destination`` (created if needed), keeping the subfolders.

    Args:
        destination: The folder to copy into; ``configs`` makes the repository's commands (``--config
            configs/quickstart.yaml``) work from the current folder.

    Returns:
        The files written.

    Raises:
        ValueError: If one of the files already exists there (nothing is copied then).
    """
    base, destination = root(), Path(destination)
    pairs = [(base / name, destination / name) for name in names()]
    existing = [str(target) for _, target in pairs if target.exists()]
    if existing:
        raise ValueError(
            f"{existing[0]} already exists ({len(existing)} of the {len(pairs)} files would be overwritten); expected "
            "a new or empty folder, nothing was copied"
        )
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [target for _, target in pairs]


def main(argv: list[str]) -> None:
    """``clfw configs list`` and ``clfw configs copy DEST``.

    Args:
        argv: The arguments after ``configs``.
    """
    parser = argparse.ArgumentParser(
        prog="clfw configs", description="The YAML configs shipped with clfw; name one as --config clfw:<name>."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print every packaged config as clfw:<name>")
    copier = commands.add_parser("copy", help="copy the packaged configs into DEST to edit them")
    copier.add_argument("destination", metavar="DEST", help="folder to copy into (created if needed)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in names():
            print(f"{PREFIX}{name}")
        return
    try:
        written = copy(args.destination)
    except ValueError as err:
        parser.exit(2, f"clfw: error: {err}\n")
    example = Path(args.destination) / "quickstart.yaml"
    print(f"copied {len(written)} configs to {args.destination}; e.g. clfw fit --config {example}")

"""The configs ship as ``clfw.configs``: ``clfw:<name>`` on the command line, ``clfw configs list`` and ``copy``.

The installed wheel itself is built and run in tests/test_wheel.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clfw import packaged_configs
from clfw.cli import main

ROOT = Path(__file__).resolve().parents[1]


def repository_configs() -> list[str]:
    return sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


def test_every_yaml_under_configs_is_packaged() -> None:
    assert packaged_configs.root().resolve() == (ROOT / "configs").resolve()  # the editable install maps configs/
    assert packaged_configs.names() == repository_configs()
    assert "quickstart.yaml" in packaged_configs.names() and "model/er.yaml" in packaged_configs.names()


def test_clfw_prefix_resolves_alone_and_after_equals() -> None:
    argv = ["fit", "--config", "clfw:quickstart.yaml", "--config=clfw:model/er.yaml", "--model.lr=clfw", "clfwx"]
    resolved = packaged_configs.resolve_args(argv)
    assert resolved[2] == str(ROOT / "configs" / "quickstart.yaml")
    assert resolved[3] == f"--config={ROOT / 'configs' / 'model' / 'er.yaml'}"
    assert resolved[:2] == argv[:2] and resolved[4:] == argv[4:]


@pytest.mark.parametrize("name", ["clfw:nope.yaml", "clfw:../pyproject.toml", "clfw:"])
def test_an_unknown_packaged_config_is_one_line(name: str, capsys: Any) -> None:
    with pytest.raises(ValueError, match="is not a config shipped with clfw"):
        packaged_configs.path(name)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", name])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clfw: error: {name!r} is not a config shipped with clfw") and "\n" not in err


def test_fit_parses_a_packaged_config(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "clfw:quickstart.yaml", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: clfw.strategies.ER" in capsys.readouterr().out


def test_configs_list_and_copy(tmp_path: Path, capsys: Any) -> None:
    main(["configs", "list"])
    assert capsys.readouterr().out.split() == [f"clfw:{name}" for name in repository_configs()]
    main(["configs", "copy", str(tmp_path / "mine")])
    assert "copied" in capsys.readouterr().out
    copied = sorted(p.relative_to(tmp_path / "mine").as_posix() for p in (tmp_path / "mine").rglob("*.yaml"))
    assert copied == repository_configs()
    assert (tmp_path / "mine" / "model" / "er.yaml").read_text() == (ROOT / "configs" / "model" / "er.yaml").read_text()
    (tmp_path / "mine" / "quickstart.yaml").write_text("# mine\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["configs", "copy", str(tmp_path / "mine")])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "mine" / "quickstart.yaml").read_text() == "# mine\n"  # nothing overwritten

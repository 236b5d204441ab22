"""README.md opens with the two commands a new user needs, and .ci/run runs exactly the test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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

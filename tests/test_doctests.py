"""The doctests of ``clfw.strategies`` and ``clfw.benchmarks``, imported by their installed names.

pytest's ``--doctest-modules`` would import ``strategies/agem.py`` as ``strategies.agem`` (the source folder's bare
name), a second copy of the package; so those folders are not in ``testpaths`` and their doctests run here.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import clfw.benchmarks
import clfw.strategies

MODULES = sorted(
    info.name
    for package in (clfw.strategies, clfw.benchmarks)
    for info in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}.")
)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests failed in {name}"


def test_the_doctests_are_found() -> None:
    """The runner sees the doctests (A-GEM's projection has one), so an empty run cannot pass for a green one."""
    attempted = sum(doctest.testmod(importlib.import_module(n), report=False).attempted for n in MODULES)
    assert attempted >= 1

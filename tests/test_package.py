"""Package hygiene: every module compiles without warnings (e.g. a stray ``\\t`` in a TeX docstring)."""

import warnings
from pathlib import Path

import pytest

MODULES = sorted((Path(__file__).resolve().parents[1] / "nbsupport").glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_compiles_cleanly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile(path.read_text(), str(path), "exec")

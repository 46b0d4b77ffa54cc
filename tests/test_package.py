"""Package hygiene: modules compile without warnings, and no docstring holds a control character
(a ``\\t`` or ``\\b`` from TeX like ``\\top`` or ``\\beta`` written in a non-raw string)."""

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbsupport"
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_compiles_cleanly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile(path.read_text(), str(path), "exec")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_docstrings_have_no_control_characters(path):
    tree = ast.parse(path.read_text())
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    for node in nodes:
        doc = ast.get_docstring(node, clean=False) or ""
        bad = sorted({repr(c) for c in doc if ord(c) < 32 and c != "\n"})
        assert not bad, f"{path.name}: docstring of {getattr(node, 'name', 'module')} contains {bad}"

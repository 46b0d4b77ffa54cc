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


def test_api_page_lists_every_module_and_no_stale_one():
    """book/api.md documents each top-level module and package of nbsupport, and names only modules
    that exist (a moved module left on the page would fail the build's autodoc only at build time)."""
    import re

    page = (PACKAGE.parent / "book" / "api.md").read_text()
    documented = set(re.findall(r"\.\. automodule:: (nbsupport(?:\.\w+)+)", page))
    top = {f"nbsupport.{p.stem}" for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    top |= {f"nbsupport.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert top <= documented, sorted(top - documented)
    for name in documented:
        parts = name.split(".")[1:]
        path = PACKAGE.joinpath(*parts)
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), name

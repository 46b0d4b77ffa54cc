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


def _imported_distributions():
    """Top-level names of the third-party modules nbsupport's files import, with the files."""
    import sys

    found = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("nbsupport", "__future__"):
                    found.setdefault(top, set()).add(path.relative_to(PACKAGE).as_posix())
    return found


def test_dependencies_are_what_the_package_imports_and_one_module_extras_are_extras():
    """Issue 25: pyproject's core dependencies are exactly the distributions nbsupport imports from
    more than one module (or from models' training loop); a distribution that serves one module is an
    extra, and nothing listed is unused."""
    import re
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]

    def names(specs):
        return {re.match(r"[A-Za-z0-9_.-]+", s).group(0).lower() for s in specs if not s.startswith("nbsupport")}
    core, extras = names(project["dependencies"]), project["optional-dependencies"]
    module_of = {"sklearn": "scikit-learn"}
    imported = {module_of.get(k, k): v for k, v in _imported_distributions().items()}
    # the page helpers' kernel-side imports (inside functions that run in a notebook) come with the
    # book extra's kernel and Jupyter Book
    kernel = {"IPython": "ipykernel", "matplotlib_inline": "ipykernel", "myst_nb": "jupyter-book"}
    for module, dist in kernel.items():
        assert imported.pop(module) <= {"plotting.py", "report.py"} and dist in names(extras["book"])
    assert core | names(extras["plotting"] + extras["moons"] + extras["captum"]) == set(imported), imported
    for extra in ("plotting", "moons", "captum"):
        (dist,) = names(extras[extra])
        assert dist not in core and len(imported[dist]) == 1, (dist, imported[dist])
        assert "nbsupport[plotting,moons,captum]" in extras["book"] and "nbsupport[plotting,moons,captum]" in extras["test"]
    assert "pandas" not in core and "threadpoolctl" not in core  # never imported by the package


@pytest.mark.parametrize("module, call, extra", [
    ("seaborn", "import nbsupport.plotting", "nbsupport[plotting]"),
    ("sklearn", "from nbsupport.data import make_moons; make_moons(10, 0.1, 0)", "nbsupport[moons]")])
def test_a_missing_extra_is_named(module, call, extra):
    import subprocess
    import sys

    code = f"import sys; sys.modules[{module!r}] = None\n{call}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert proc.returncode != 0 and extra in proc.stderr, proc.stderr[-500:]

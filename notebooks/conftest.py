"""pytest hook for the chapters that ``make test`` hands to nbval (those without a current
execution in the build's cache).

Every executed cell's text outputs (stdout, and the plain-text, HTML, LaTeX and Markdown forms of
what it displays) must hold no memory address and no random pandas Styler table id (issue 25):
such text differs in every run, so two builds could not be compared. The build's own executions
get the same check in tests/test_notebooks.py, so every execution ``make test`` sees is checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from book_cache import unstable_parts  # noqa: E402

KINDS = ("text/plain", "text/html", "text/latex", "text/markdown")


def run_dependent_outputs(outputs) -> list[str]:
    """Run-dependent parts of a cell's outputs, as nbval collects them (dicts with ``output_type``
    ``stream``, ``display_data`` or ``execute_result``)."""
    found = []
    for j, out in enumerate(outputs or ()):
        texts = []
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            texts.append(("stdout", out.get("text", "")))
        elif out.get("output_type") in ("display_data", "execute_result"):
            texts += [(kind, out["data"][kind]) for kind in KINDS if kind in out.get("data", {})]
        found += [f"output {j} ({kind}): {', '.join(unstable_parts(text))}"
                  for kind, text in texts if unstable_parts(text)]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    found = run_dependent_outputs(getattr(item, "test_outputs", None))
    if found:
        raise AssertionError(f"{item.name}: run-dependent text in the outputs (show tables with "
                             f"nbsupport.report.show_table, never leave an object's repr as a cell's "
                             f"output): {'; '.join(found[:5])}")
    return result

"""The chapters as executed by the book build.

* Every chapter with a current execution in the build's cache ran without an error output (the
  chapters without one are executed by nbval in ``make test``; see tests/book_cache.py).
* Two executions print the same text (issue 15): with ``NBSUPPORT_DETERMINISM`` set to chapter
  numbers (``"01 05"``, or ``all``), each such chapter is executed again here, from an empty weight
  cache, and its text outputs must equal the build's. CI sets it; it is off by default because it
  executes the chapter a second time.
* The machinery that decides what is current (issue 25): ``make test`` fails when its helper
  crashes, and the cache stamp changes with the package's files, the installed versions and the data.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess

import pytest

import book_cache
from book_cache import CHAPTERS, ROOT, cached_execution, error_outputs, read_chapter, text_outputs


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_build_execution_has_no_errors(md):
    nb, record = cached_execution(md)
    if nb is None:
        pytest.skip("no current execution in _build/.jupyter_cache: make test hands this chapter to nbval")
    assert error_outputs(nb) == []


def _selected():
    chosen = os.environ.get("NBSUPPORT_DETERMINISM", "").split()
    return [md for md in CHAPTERS if "all" in chosen or md.stem[:2] in chosen]


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_two_executions_print_the_same(md, tmp_path, monkeypatch):
    if md not in _selected():
        pytest.skip("set NBSUPPORT_DETERMINISM (e.g. '01 05' or 'all') to execute this chapter again")
    first, _ = cached_execution(md)
    if first is None:
        pytest.skip("no execution of this chapter in _build/.jupyter_cache: run make book first")
    from nbclient import NotebookClient

    monkeypatch.setenv("NBSUPPORT_WEIGHTS", str(tmp_path / "weights"))  # a cold weight cache
    second = read_chapter(md)
    NotebookClient(second, timeout=600, resources={"metadata": {"path": str(md.parent)}}).execute()
    a, b = text_outputs(first), text_outputs(second)
    diff = "\n".join(difflib.unified_diff([f"[{i}] {t}" for i, t in a], [f"[{i}] {t}" for i, t in b],
                                          "build", "again", lineterm="", n=1))
    assert a == b, f"{md.name}: text outputs differ between two executions:\n{diff[:4000]}"


def test_chapters_found():
    assert [p.stem[:2] for p in CHAPTERS] == ["01", "02", "03", "04", "05"]
    assert ROOT.joinpath("_config.yml").exists()


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for .venv/bin/python in make test: pytest passes; the stale helper crashes, or prints $STALE_OUT
case "$*" in
  "-m pytest tests") exit 0 ;;
  "tests/book_cache.py --stale") [ -z "${STALE_OUT:-}" ] || { echo "$STALE_OUT"; exit 0; }
                                 echo "Traceback: a crash" >&2; exit 3 ;;
  "-m pytest --nbval-lax"*) echo "NBVAL RAN ON ${*: -1}"; exit 0 ;;
  *) echo "unexpected: $*" >&2; exit 9 ;;
esac
"""


@pytest.mark.skipif(not (shutil.which("make") and shutil.which("bash")), reason="needs make and bash")
def test_make_test_fails_when_the_stale_helper_crashes(tmp_path):
    """Regression (issue 25): ``stale=$(... book_cache.py --stale)`` under sh swallowed a crash of the
    helper (empty list, nbval skipped, exit 0). The recipe runs with a fake python; data and stamp
    are not remade (-o)."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)

    def make_test(**env):
        return subprocess.run(["make", "-s", "-o", "data", "-o", "stamp", "test", f"PY={fake}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    crashed = make_test()
    assert crashed.returncode != 0, crashed.stdout + crashed.stderr
    assert "a crash" in crashed.stderr and "NBVAL RAN" not in crashed.stdout
    healthy = make_test(STALE_OUT="notebooks/01_x.ipynb")  # the same recipe passes and runs nbval
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "NBVAL RAN ON notebooks/01_x.ipynb" in healthy.stdout
    assert make_test(STALE_OUT="").returncode != 0  # an empty answer with a crash is still a crash


def _fake_project(root):
    (root / "nbsupport").mkdir(parents=True)
    (root / "nbsupport" / "__init__.py").write_text("")
    (root / "nbsupport" / "extra.py").write_text("X = 1\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "benchmarks" / "results" / "bench_x.json").write_text("{}")
    raw = root / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\0" * 16)
    return raw / "t10k-images-idx3-ubyte"


def test_stamp_changes_with_package_files_versions_and_data(tmp_path, monkeypatch):
    data_file = _fake_project(tmp_path)
    stamp = tmp_path / "_build" / ".nbsupport-stamp"
    jcache = tmp_path / "_build" / ".jupyter_cache"

    def refresh():
        jcache.mkdir(parents=True, exist_ok=True)  # an execution cache the stamp may have to empty
        changed = book_cache.refresh_stamp(stamp, book_cache.stamp_parts(tmp_path, tmp_path / "data"))
        assert jcache.exists() == (not changed)
        return changed

    assert set(refresh()) == {"package", "pyproject", "installed", "data", "benchmark results"}  # no stamp yet
    assert refresh() == []  # nothing changed: the cache is kept
    (tmp_path / "nbsupport" / "extra.py").unlink()  # a deleted module
    assert refresh() == ["package"]
    (tmp_path / "nbsupport" / "new.py").write_text("")  # an added (even empty) module
    assert refresh() == ["package"]
    (tmp_path / "nbsupport" / "new.py").write_text("Y = 2\n")  # an edited one
    assert refresh() == ["package"]
    installed = book_cache._installed()
    assert "torch==" in installed  # pip freeze's content: names with versions
    monkeypatch.setattr(book_cache, "_installed", lambda: installed.replace("torch==", "torch==0"))
    assert refresh() == ["installed"]  # a dependency upgraded within its range
    os.utime(data_file, ns=(data_file.stat().st_atime_ns, data_file.stat().st_mtime_ns + 10**9))
    assert refresh() == ["data"]  # the data replaced
    (tmp_path / "benchmarks" / "results" / "bench_x.json").write_text('{"a": 1}')
    assert refresh() == ["benchmark results"]
    stamp.write_text("not json")  # a damaged stamp counts as none
    assert len(refresh()) == 5

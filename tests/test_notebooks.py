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
import sys

import pytest

import book_cache
from book_cache import (CHAPTERS, ROOT, cached_execution, error_outputs, first_difference, output_records,
                        read_chapter, text_outputs, unstable_parts)


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_build_execution_has_no_errors(md):
    nb, record = cached_execution(md)
    if nb is None:
        pytest.skip("no current execution in _build/.jupyter_cache: make test hands this chapter to nbval")
    assert error_outputs(nb) == []


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_build_outputs_hold_nothing_run_dependent(md):
    """A text output with an object's address or a random table id differs in every build, so the
    two-executions comparison could not tell a changed number from it (issue 25)."""
    nb, _ = cached_execution(md)
    if nb is None:
        pytest.skip("no current execution in _build/.jupyter_cache")
    found = [f"code cell {cell}, output {j} ({kind}): {', '.join(unstable_parts(text))}"
             for cell, j, kind, text in output_records(nb) if unstable_parts(text)]
    assert found == [], f"{md.name}: run-dependent text (use nbsupport.report.show_table): {found[:5]}"


def test_each_glue_key_is_glued_once_in_the_book():
    """myst-nb only warns when a key is glued twice, and the prose then shows whichever came last
    (a loop that reuses a key, or two chapters that share a prefix)."""
    glued = {}
    for md in CHAPTERS:
        nb, _ = cached_execution(md)
        if nb is not None:
            glued[md.stem] = book_cache.glue_keys(nb)
    if not glued:
        pytest.skip("no current execution in _build/.jupyter_cache")
    twice = book_cache.glued_twice(glued)
    assert twice == [], f"glue keys glued more than once (key, chapters): {twice[:10]}"


def test_glue_keys_are_read_from_the_outputs():
    import nbformat

    glue = {"output_type": "display_data", "data": {"text/plain": "1"},
            "metadata": {"scrapbook": {"name": "ch9_a", "mime_prefix": ""}}}
    cell = nbformat.v4.new_code_cell("glue('ch9_a', 1)")
    cell.outputs = [nbformat.from_dict(glue), nbformat.from_dict(glue),
                    nbformat.v4.new_output("stream", text="ch9_b\n")]
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert book_cache.glue_keys(nb) == ["ch9_a", "ch9_a"]
    assert book_cache.glued_twice({"ch9": ["ch9_a", "ch9_a", "x"], "ch8": ["x", "ch8_b"]}) == [
        ("ch9_a", ("ch9",)), ("x", ("ch8", "ch9"))]
    assert book_cache.glued_twice({"ch9": ["ch9_a"], "ch8": ["ch8_b"]}) == []


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_code_displays_nothing_run_dependent(md):
    """Every chapter, without executing it (issue 25): no pandas Styler outside show_table and no
    cell left displaying an object's repr, the two causes of addresses and random table ids that made
    two builds print different text."""
    cells = [c for c in read_chapter(md).cells if c.cell_type == "code"]
    found = [f"code cell {i} ({c.source.strip().splitlines()[0][:50]!r}), {finding}"
             for i, c in enumerate(cells) for finding in book_cache.run_dependent_displays(c.source)]
    assert found == [], f"{md.name}: {found[:5]}"


def test_run_dependent_displays_are_found():
    find = book_cache.run_dependent_displays
    assert find("frame = load()\nshow_table(frame, 'ch1-x')") == []
    assert find("fig, ax = plt.subplots()\nax.plot(x, y);") == []  # silenced by ';'
    assert find("plt.style.use('x')\nprint(1)") == [] and find("%matplotlib inline\ncheck('C1', 'ok')") == []
    assert find("x = 1\n# a comment") == []  # an assignment displays nothing
    styler = find("frame.style.format('{:.2f}')")  # the Styler made, and displayed
    assert len(styler) == 2 and "pandas Styler" in styler[0] and "displays the value" in styler[1]
    assert "pandas Styler" in find("html = df.style.to_html()\nprint(html)")[0]
    assert "displays the value of 'ax.plot(x, y)'" in find("fig, ax = plt.subplots()\nax.plot(x, y)")[0]
    assert len(find("model")) == 1 and len(find("object()")) == 1


NBVAL_NOTEBOOK_CELLS = ["print('accuracy 0.85')", "object()"]


def test_nbval_runs_of_chapters_refuse_run_dependent_outputs(tmp_path):
    """The chapters make test hands to nbval get the check of the build's executions (issue 25):
    notebooks/conftest.py fails a cell whose outputs hold an address; a clean cell passes. Run on a
    two-cell notebook beside a copy of that conftest (one kernel start, a few seconds)."""
    import nbformat

    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path / "notebooks" / "conftest.py")
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NBVAL_NOTEBOOK_CELLS]
    nbformat.write(nb, tmp_path / "notebooks" / "x.ipynb")
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
                          "-p", "no:cacheprovider", "-q", "notebooks/x.ipynb"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "1 failed, 1 passed" in out, out
    assert "x.ipynb::Cell 1" in out and "a memory address" in out and "at 0x" in out, out


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
    if a != b:
        diff = "\n".join(difflib.unified_diff([f"[{i}] {t}" for i, t in a], [f"[{i}] {t}" for i, t in b],
                                              "build", "again", lineterm="", n=1))
        pytest.fail(f"{md.name}: text outputs differ between two executions. First difference: "
                    f"{first_difference(first, second)}\n\nFull diff (first 4000 characters):\n{diff[:4000]}")


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


def _executed(outputs_per_cell):
    """A notebook whose code cells carry the given outputs (lists of nbformat output dicts)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    for i, outputs in enumerate(outputs_per_cell):
        cell = nbformat.v4.new_code_cell(f"# cell {i}\nvalue_{i} = compute({i})")
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        nb.cells.append(cell)
    return nb


def _stdout(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def _result(**data):
    return {"output_type": "execute_result", "execution_count": 1, "metadata": {},
            "data": {k.replace("_", "/"): v for k, v in data.items()}}


def test_first_difference_names_the_cell_output_and_text():
    base = [[_stdout("seed 0\n")], [_stdout("accuracy 0.8532\n"), _result(text_plain="3")]]
    same = _executed(base)
    assert first_difference(same, _executed(base)) is None
    changed = _executed([[_stdout("seed 0\n")], [_stdout("accuracy 0.8533\n"), _result(text_plain="3")]])
    message = first_difference(same, changed)
    assert "code cell 1 ('value_1 = compute(1)'), output 0 (stdout)" in message
    assert "0.8532" in message and "0.8533" in message and "address" not in message
    extra = _executed(base[:1] + [base[1] + [_stdout("one more\n")]])
    assert "has 3 text outputs" in first_difference(same, extra) and "one more" in first_difference(same, extra)
    kind = _executed(base[:1] + [[_stdout("accuracy 0.8532\n"), _result(text_html="3")]])
    assert "text/plain" in first_difference(same, kind) and "text/html" in first_difference(same, kind)


def test_stdout_split_into_several_stream_messages_is_the_same_text():
    whole = _executed([[_stdout("theta 0.3: 0.45\ntheta 1.0: 0.34\n"), _result(text_plain="3")]])
    split = _executed([[_stdout("theta 0.3: 0.45\n"), _stdout("theta 1.0: 0.34\n"), _result(text_plain="3")]])
    assert first_difference(whole, split) is None
    other = _executed([[_stdout("theta 0.3: 0.45\n"), _stdout("theta 1.0: 0.35\n"), _result(text_plain="3")]])
    assert "0.34" in first_difference(whole, other) and "0.35" in first_difference(whole, other)
    # a result between two prints keeps them apart: the reader sees two blocks
    apart = _executed([[_stdout("theta 0.3: 0.45\n"), _result(text_plain="3"), _stdout("theta 1.0: 0.34\n")]])
    assert first_difference(whole, apart) is not None


def test_run_dependent_reprs_are_named_and_still_fail_the_comparison():
    styler_a = _executed([[_result(text_plain="<pandas.io.formats.style.Styler at 0x7f05a1b2c3d0>",
                                   text_html='<table id="T_e62a7"><td id="T_e62a7_row0_col0">1.5</td></table>')]])
    styler_b = _executed([[_result(text_plain="<pandas.io.formats.style.Styler at 0x7f05a1b2ff10>",
                                   text_html='<table id="T_1b2c3"><td id="T_1b2c3_row0_col0">1.5</td></table>')]])
    assert text_outputs(styler_a) != text_outputs(styler_b)  # the comparison is not loosened
    message = first_difference(styler_a, styler_b)
    assert "text/plain" in message and "a memory address" in message and "show_table" in message
    only_html = _executed([[_result(text_html='<table id="T_e62a7"><td>1.5</td></table>')]])
    other_html = _executed([[_result(text_html='<table id="T_0f9d1"><td>1.5</td></table>')]])
    assert "random pandas Styler table id" in first_difference(only_html, other_html)
    assert unstable_parts('<table id="T_ch1_history">') == [] and unstable_parts("value at 0.5") == []

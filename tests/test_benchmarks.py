"""The benchmark scripts run (smoke sizes) and write results that follow benchmarks/_timing's schema.

No timing is asserted: on a shared machine times are noise. The scripts that already write a result
file (those that use ``_timing.Report``) run one after the other in **one** child process, so the
imports (torch, the optional peers) are paid once; the others are skipped until they are converted.
The committed results in benchmarks/results/ must validate too (the Performance page reads them).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("bench_*.py"))
CONVERTED = [p for p in SCRIPTS if "Report(" in p.read_text()]

sys.path.insert(0, str(BENCH))
from _timing import SCHEMA, validate  # noqa: E402

DRIVER = """
import json, runpy, sys, traceback
status = {}
for path in sys.argv[1:]:
    try:
        runpy.run_path(path, run_name="__main__")
        status[path] = "ok"
    except BaseException:
        status[path] = traceback.format_exc()
print("STATUS " + json.dumps(status))
"""


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "NBSUPPORT_BENCH_SMOKE": "1", "NBSUPPORT_BENCH_RESULTS": str(out),
           "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", DRIVER, *map(str, CONVERTED)], cwd=BENCH, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("STATUS ")]
    assert lines, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, json.loads(lines[-1][len("STATUS "):]), proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
@pytest.mark.slow
def test_smoke_run_writes_a_valid_result(script, smoke_run):
    if script not in CONVERTED:
        pytest.skip(f"{script.name} does not write a result file yet (no _timing.Report)")
    out, status, stdout = smoke_run
    assert status[str(script)] == "ok", status[str(script)]
    data = json.loads((out / f"{script.stem}.json").read_text())
    assert validate(data) == [], validate(data)
    assert data["smoke"] is True and data["script"] == script.stem
    assert data["figures"] or data["curves"], "a result with nothing in it"
    assert all(c["passed"] for c in data["checks"])


def test_committed_results_are_valid_and_full_size():
    results = sorted((BENCH / "results").glob("*.json"))
    assert results, "no committed results (run make bench)"
    for path in results:
        data = json.loads(path.read_text())
        assert validate(data) == [], (path.name, validate(data))
        assert data["script"] == path.stem and (BENCH / f"{path.stem}.py").exists()
        assert data["smoke"] is False, f"{path.name} holds a smoke run"


def test_validate_catches_broken_results():
    good = {"schema": SCHEMA, "script": "x", "title": "t", "smoke": True, "started": "2026-01-01T00:00:00+00:00",
            "duration_s": 1.0, "machine": {"cores": 2, "cpu": "c", "torch": "2", "numpy": "2", "torch_threads": 2,
                                           "blas": [], "shared": False},
            "figures": [{"name": "f", "description": "d", "ours": "a", "baseline": "b",
                         "target": {"op": "<=", "value": 1.0}, "measured": 0.5, "min": 0.4, "max": 0.6,
                         "best": 0.45, "rounds": [0.4, 0.5, 0.6], "met": True}],
            "curves": [{"name": "c", "description": "d", "x_label": "N", "y_label": "s", "x": [1, 2],
                        "series": {"a": [0.1, None]}}],
            "tables": [], "checks": [], "skipped": []}
    assert validate(good) == []
    broken = json.loads(json.dumps(good))
    broken["figures"][0]["target"]["op"] = "<"
    broken["curves"][0]["series"]["a"] = [0.1]
    del broken["machine"]["cores"]
    problems = validate(broken)
    assert len(problems) == 3, problems


PAGE = ROOT / "book" / "performance.md"


def test_performance_page_prose_and_cells():
    from book_checks import timing_cells, typed_numbers

    text = PAGE.read_text()
    assert typed_numbers(text) == [], typed_numbers(text)
    assert timing_cells(text) == [], "the page must read timings from benchmarks/results, not measure them"
    assert "book/performance" in (ROOT / "_toc.yml").read_text()


@pytest.mark.slow
def test_performance_page_executes_on_the_committed_results():
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    nb = jupytext.read(PAGE)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(PAGE.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    streams = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if o.output_type == "stream"]
    assert streams == [], f"the page prints (warnings?): {streams}"
    glued = {k for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             for k in o.get("metadata", {}).get("scrapbook", {}).get("name", "").split() if k}
    for key in set(re.findall(r"\{glue:(?:text|figure)\}[` ]([a-z0-9_]+)", PAGE.read_text())):
        assert key in glued, f"{key} is used in the prose but never glued"

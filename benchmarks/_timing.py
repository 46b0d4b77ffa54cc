"""Shared by the benchmark scripts: timing, the machine's description and the result file.

Every script measures the book's implementation and its baselines **in the same run**, interleaved
round by round, and reports ratios (per round, then min and median over rounds), because absolute
times on a shared 2-core machine are noisy. Each script writes one JSON file,
``benchmarks/results/<script>.json`` (schema below), that ``book/performance.md`` turns into tables
and plots; ``make bench`` regenerates them all.

Smoke mode (``--smoke`` on the command line or ``NBSUPPORT_BENCH_SMOKE=1``) runs every code path at
small sizes in a few seconds; ``tests/test_benchmarks.py`` uses it and checks only that the scripts
run and write valid results (never timings). Smoke results go to ``$NBSUPPORT_BENCH_RESULTS`` or, if
unset, to a temporary directory, so they never overwrite the committed ones.

Result schema (``SCHEMA`` = 1)::

    {"schema": 1, "script": "bench_pergrad", "title": str, "smoke": bool,
     "started": ISO-8601 UTC, "duration_s": float,
     "machine": {"cores": int, "cpu": str, "torch": str, "numpy": str, "torch_threads": int,
                 "blas": [{"api", "library", "version", "threads"}...], "others_load_cores": float,
                 "shared": bool, ...},
     "figures": [{"name", "description", "ours", "baseline", "target": {"op": "<=" | ">=", "value"},
                  "measured" (median over rounds), "min", "max", "rounds": [...],
                  "best" (fastest time / fastest time), "met": bool (from the median),
                  "note"?: str}],
     "curves": [{"name", "description", "x_label", "y_label", "x": [...],
                 "series": {label: [value or null, ...]}}],
     "tables": [{"name", "description", "columns": [str...], "rows": [[value...]...]}],
     "checks": [{"name", "value", "tolerance", "passed"}],
     "skipped": [{"name", "reason"}]}
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SCHEMA = 1
HERE = Path(__file__).resolve().parent
SMOKE = "--smoke" in sys.argv[1:] or os.environ.get("NBSUPPORT_BENCH_SMOKE", "") not in ("", "0")


def best_of(fn, repeat: int = 3) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs (the least disturbed by other processes)."""
    return min(times(fn, repeat))


def times(fn, repeat: int = 3) -> list[float]:
    """Wall times of ``repeat`` calls of ``fn()``, in seconds."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved(fns: dict, rounds: int = 5, warmup: bool | None = None) -> dict[str, list[float]]:
    """Time several functions round-robin: round r runs each once, so load changes hit all alike.

    A warm-up call of each comes first (``warmup=None``: except in smoke mode).

    Returns ``{name: [seconds per round]}``; per-round ratios (:func:`ratio_stats`) then compare
    runs made seconds apart.
    """
    if warmup or (warmup is None and not SMOKE):
        for fn in fns.values():
            fn()
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return out


def ratio_stats(numerator: list[float], denominator: list[float]) -> dict:
    """Per-round ratios ``numerator[r] / denominator[r]`` with their min, median and max."""
    rounds = [a / b for a, b in zip(numerator, denominator)]
    return {"min": min(rounds), "median": statistics.median(rounds), "max": max(rounds), "rounds": rounds,
            "best": min(numerator) / min(denominator)}


def setup(threads: int = 2) -> None:
    """Fix the thread count and the seed so that runs are comparable.

    ``$NBSUPPORT_BENCH_THREADS`` overrides ``threads`` (smoke runs use 1): on an oversubscribed
    machine every parallel region waits for a descheduled thread, and small LAPACK calls
    (``eigvalsh`` of a 96 x 96 matrix) were seen to take 500x longer with 2 threads than with 1.
    BLAS pools (threadpoolctl) get the same limit.
    """
    threads = int(os.environ.get("NBSUPPORT_BENCH_THREADS", 1 if SMOKE else threads))
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass
    torch.manual_seed(0)


def _cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"api": i.get("user_api"), "library": i.get("internal_api"), "version": i.get("version"),
             "threads": i.get("num_threads")} for i in threadpool_info()]


def machine_info() -> dict:
    """Cores, CPU, library versions and thread counts of this process (load is added by Report)."""
    import numpy

    info = {"cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "cpu": _cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "torch_threads": torch.get_num_threads(), "blas": _blas(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    try:
        import scipy
        info["scipy"] = scipy.__version__
    except ImportError:
        pass
    return info


def results_dir() -> Path:
    """Where results go: $NBSUPPORT_BENCH_RESULTS, else benchmarks/results (a temp dir in smoke mode)."""
    if os.environ.get("NBSUPPORT_BENCH_RESULTS"):
        return Path(os.environ["NBSUPPORT_BENCH_RESULTS"])
    if SMOKE:
        return Path(tempfile.gettempdir()) / "nbsupport-bench-smoke"
    return HERE / "results"


def _clean(value):
    """JSON-safe: floats finite (NaN/inf become null), tensors and numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


class Report:
    """Collects a script's figures, curves and checks and writes them as one JSON file."""

    def __init__(self, script: str, title: str):
        self.script, self.title = Path(script).stem, title
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self._t0, self._busy0, self._own0 = time.perf_counter(), _cpu_busy_seconds(), _own_cpu_seconds()
        self.load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.figures, self.curves, self.tables, self.checks, self.skipped = [], [], [], [], []

    def figure(self, name: str, *, description: str, ours: str, baseline: str, op: str, target: float,
               ratios: dict | float, note: str | None = None) -> dict:
        """A target on a ratio ``ours / baseline`` (time ratios: ``op="<="``; speed-ups: ``op=">="``).

        ``ratios`` is :func:`ratio_stats`' output (or one number); the median over rounds decides
        ``met``; ``best`` (ratio of the two fastest times) is kept beside it.
        """
        if op not in ("<=", ">="):
            raise ValueError(f"op must be '<=' or '>=', got {op!r}")
        if not isinstance(ratios, dict):
            ratios = {"min": ratios, "median": ratios, "max": ratios, "rounds": [ratios], "best": ratios}
        measured = ratios["median"]
        met = measured <= target if op == "<=" else measured >= target
        fig = {"name": name, "description": description, "ours": ours, "baseline": baseline,
               "target": {"op": op, "value": target}, "measured": measured, "min": ratios["min"],
               "max": ratios["max"], "best": ratios.get("best", ratios["min"]), "rounds": list(ratios["rounds"]), "met": bool(met)}
        if note:
            fig["note"] = note
        self.figures.append(fig)
        print(f"[{self.script}] {name}: {ours} / {baseline} = {measured:.3g} (median of {len(fig['rounds'])}; "
              f"min {ratios['min']:.3g}), target {op} {target:g}: {'met' if met else 'NOT met'}", flush=True)
        return fig

    def curve(self, name: str, *, description: str, x_label: str, x: list, series: dict,
              y_label: str = "time (s)") -> dict:
        """A scaling curve: one list of values (or None where a method was not run) per series."""
        for label, values in series.items():
            if len(values) != len(x):
                raise ValueError(f"series {label!r} has {len(values)} values for {len(x)} x values")
        c = {"name": name, "description": description, "x_label": x_label, "y_label": y_label,
             "x": list(x), "series": {k: list(v) for k, v in series.items()}}
        self.curves.append(c)
        return c

    def table(self, name: str, *, description: str, rows: list[dict]) -> dict:
        """A small table (e.g. every route's time at the main point); columns from the first row."""
        columns = list(rows[0]) if rows else []
        t = {"name": name, "description": description, "columns": columns,
             "rows": [[r.get(c) for c in columns] for r in rows]}
        self.tables.append(t)
        return t

    def check(self, name: str, value: float, tolerance: float) -> None:
        """A correctness check (``value <= tolerance``); recorded, and the script fails if it does not hold."""
        passed = bool(value <= tolerance)
        self.checks.append({"name": name, "value": float(value), "tolerance": tolerance, "passed": passed})
        print(f"[{self.script}] check {name}: {value:.2e} (tolerance {tolerance:g})", flush=True)
        if not passed:
            raise AssertionError(f"{name}: {value} > {tolerance}")

    def skip(self, name: str, reason: str) -> None:
        """A part not run here (e.g. an optional peer not installed), with the reason shown on the page."""
        self.skipped.append({"name": name, "reason": reason})
        print(f"[{self.script}] skipped {name}: {reason}", flush=True)

    def as_dict(self) -> dict:
        wall = time.perf_counter() - self._t0
        machine = machine_info()
        busy1, own1 = _cpu_busy_seconds(), _own_cpu_seconds()
        if self._busy0 is not None and busy1 is not None and wall > 0:
            # CPU time spent by other processes during the run, in cores: > 0.25 means a shared machine
            machine["others_load_cores"] = max(0.0, ((busy1 - self._busy0) - (own1 - self._own0)) / wall)
        else:
            machine["others_load_cores"] = None
        machine["load_average_start"] = self.load_start
        machine["shared"] = bool(machine["others_load_cores"] is not None and machine["others_load_cores"] > 0.25)
        return _clean({"schema": SCHEMA, "script": self.script, "title": self.title, "smoke": SMOKE,
                       "started": self.started.isoformat(timespec="seconds"), "duration_s": wall,
                       "machine": machine, "figures": self.figures, "curves": self.curves,
                       "tables": self.tables, "checks": self.checks, "skipped": self.skipped})

    def write(self) -> Path:
        """Write ``<results_dir>/<script>.json`` and return its path."""
        data = self.as_dict()
        problems = validate(data)
        if problems:
            raise ValueError(f"invalid result: {problems}")
        out = results_dir()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.script}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"[{self.script}] wrote {path} ({data['duration_s']:.0f} s; other processes used "
              f"{data['machine']['others_load_cores'] or 0:.2f} cores)", flush=True)
        return path


def validate(data: dict) -> list[str]:
    """Problems with a result dictionary (empty when it follows the schema)."""
    problems = []

    def need(obj, key, types, where):
        if not isinstance(obj, dict) or key not in obj:
            problems.append(f"{where}: missing {key!r}")
            return False
        if not isinstance(obj[key], types):
            problems.append(f"{where}.{key}: {type(obj[key]).__name__}, expected {types}")
            return False
        return True

    num = (int, float)
    if not isinstance(data, dict):
        return ["not a dict"]
    for key, types in (("schema", int), ("script", str), ("title", str), ("smoke", bool), ("started", str),
                       ("duration_s", num), ("machine", dict), ("figures", list), ("curves", list),
                       ("tables", list), ("checks", list), ("skipped", list)):
        need(data, key, types, "result")
    if problems:
        return problems
    if data["schema"] != SCHEMA:
        problems.append(f"schema {data['schema']} != {SCHEMA}")
    for key, types in (("cores", int), ("cpu", str), ("torch", str), ("numpy", str), ("torch_threads", int),
                       ("blas", list), ("shared", bool)):
        need(data["machine"], key, types, "machine")
    for i, f in enumerate(data["figures"]):
        where = f"figures[{i}]"
        for key, types in (("name", str), ("description", str), ("ours", str), ("baseline", str),
                           ("target", dict), ("measured", num), ("min", num), ("max", num), ("best", num), ("rounds", list),
                           ("met", bool)):
            need(f, key, types, where)
        if isinstance(f.get("target"), dict):
            if f["target"].get("op") not in ("<=", ">="):
                problems.append(f"{where}.target.op must be '<=' or '>='")
            need(f["target"], "value", num, f"{where}.target")
    for i, c in enumerate(data["curves"]):
        where = f"curves[{i}]"
        ok = all([need(c, k, t, where) for k, t in (("name", str), ("description", str), ("x_label", str),
                                                      ("y_label", str), ("x", list), ("series", dict))])
        if ok:
            for label, values in c["series"].items():
                if not isinstance(values, list) or len(values) != len(c["x"]):
                    problems.append(f"{where}.series[{label!r}] must be a list as long as x")
                elif not all(v is None or isinstance(v, num) for v in values):
                    problems.append(f"{where}.series[{label!r}] must hold numbers or null")
    for i, t in enumerate(data["tables"]):
        where = f"tables[{i}]"
        if all([need(t, k, ty, where) for k, ty in (("name", str), ("description", str), ("columns", list),
                                                      ("rows", list))]):
            if not all(isinstance(r, list) and len(r) == len(t["columns"]) for r in t["rows"]):
                problems.append(f"{where}.rows must be lists as long as columns")
    for i, c in enumerate(data["checks"]):
        for key, types in (("name", str), ("value", num), ("tolerance", num), ("passed", bool)):
            need(c, key, types, f"checks[{i}]")
    for i, s in enumerate(data["skipped"]):
        for key in ("name", "reason"):
            need(s, key, str, f"skipped[{i}]")
    return problems


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory_mib(fn) -> float | None:
    """Peak resident memory that ``fn()`` adds to this process, in MiB (None where Linux's
    /proc/self/clear_refs is not available).

    Free heap memory is returned to the system first (``malloc_trim``), the peak counter is reset
    (writing 5 to /proc/self/clear_refs), and the peak (VmHWM) after the call minus the resident
    size before it is reported, so memory allocated and freed inside ``fn`` counts.
    """
    import ctypes
    import gc

    try:
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        fn()
        peak = _status_kib("VmHWM")
    except OSError:
        return None
    return max(0.0, (peak - before) / 1024)

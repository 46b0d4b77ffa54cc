"""The book build's executed notebooks (myst-nb's jupyter-cache), for tests that reuse them.

``make book`` executes every chapter once and stores the result in ``_build/.jupyter_cache``,
keyed by the chapter's code cells. ``make test`` checks those executions when they are current
instead of executing the chapters a second time, and hands only the stale ones to nbval:

    python tests/book_cache.py --stale     # prints the .ipynb of every chapter without a current execution
    python tests/book_cache.py --times     # how long each chapter's cached execution took (budget 180 s)
    python tests/book_cache.py --stamp     # empty the cache if what the chapters' code reads has changed

The cache is keyed by the chapters' code cells only, so ``--stamp`` (run by ``make book`` and ``make
test`` first) empties it, and Sphinx's doctrees with it, whenever anything else the code reads has
changed since the last run: the set of files of the ``nbsupport`` package (names and contents, so a
deleted or added module counts), ``pyproject.toml``, the installed distributions and their versions
(an upgrade within a range counts), the Python version, the data files (names, sizes and
modification times) and the benchmark results the performance page shows. The digest of each part
is kept in ``_build/.nbsupport-stamp``; the message names the parts that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
CHAPTERS = sorted((ROOT / "notebooks").glob("*.md"))


def read_chapter(md: Path):
    """A chapter as myst-nb reads it for the build (so the cache key is the build's)."""
    from myst_nb.core.read import read_myst_markdown_notebook

    return read_myst_markdown_notebook(md.read_text(), path=md)


def cached_execution(md: Path, cache_path: Path = CACHE):
    """The build's executed notebook of ``md`` with its record, or ``(None, None)`` when the cache
    holds no execution of the chapter's current code."""
    if not cache_path.exists():
        return None, None
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_path))
    try:
        record = cache.match_cache_notebook(read_chapter(md))
    except KeyError:
        return None, None
    return cache.get_cache_bundle(record.pk).nb, record


def text_outputs(nb) -> list[tuple[int, str]]:
    """``(code cell index, text)`` of what a reader sees as text: stdout, plain-text and HTML results.

    Stderr (progress bars, with their rates) and images are left out.
    """
    return [(cell, f"{kind}: {text}") for cell, _, kind, text in output_records(nb)]


def output_records(nb) -> list[tuple[int, int, str, str]]:
    """``(code cell index, output index in the cell, kind, text)`` of every text output a reader sees.

    ``kind`` is ``"stdout"`` or the MIME type (``text/plain``, ``text/html``, ``text/latex``,
    ``text/markdown``) of an execute result or displayed object. Stderr and images are left out.
    Consecutive stdout outputs are one record (at the first one's index), as a reader sees them: how
    the kernel splits a cell's printing into stream messages depends on timing, not on the text.
    """
    out = []
    cells = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(cells):
        previous = None
        for j, output in enumerate(cell.get("outputs", [])):
            if output.output_type == "stream" and output.name == "stdout":
                if previous == "stdout":
                    cell_index, first, kind, text = out.pop()
                    out.append((cell_index, first, kind, text + output.text))
                else:
                    out.append((i, j, "stdout", output.text))
                previous = "stdout"
            elif output.output_type in ("execute_result", "display_data"):
                for kind in ("text/plain", "text/html", "text/latex", "text/markdown"):
                    if kind in output.get("data", {}):
                        out.append((i, j, kind, output.data[kind]))
                previous = "result"  # stderr, left out, joins the stdout around it
    return out


# what makes a text differ from run to run without a number changing: object addresses in reprs
# (a pandas Styler's text/plain) and pandas Styler's random table ids (<table id="T_e62a7">)
UNSTABLE = {"a memory address": re.compile(r"\bat 0x[0-9a-fA-F]{6,}"),
            "a random pandas Styler table id": re.compile(r"\bT_[0-9a-f]{5}(?![0-9a-zA-Z])")}


def unstable_parts(text: str) -> list[str]:
    """Names of the run-dependent parts (:data:`UNSTABLE`) found in ``text``, with the first match."""
    return [f"{name} ({m.group(0)!r})" for name, pattern in UNSTABLE.items() if (m := pattern.search(text))]


# calls a chapter may leave as a cell's last expression: they return None (or, for glue and
# display, show only what the book decides), so the cell displays no object repr
QUIET_CALLS = {"print", "display", "show_table", "check", "glue_number", "glue", "show", "close",
               "update", "tight_layout", "savefig"}
# names under which ``.style`` is matplotlib's style module, not a pandas Styler
_MPL_NAMES = {"plt", "mpl", "matplotlib", "pyplot"}


def run_dependent_displays(source: str) -> list[str]:
    """What in a code cell's ``source`` could put run-dependent text into its outputs (issue 25).

    A static companion of :func:`unstable_parts`, so every chapter is checked without executing it:

    * a pandas Styler made in the chapter (``frame.style``): its plain-text repr holds a memory
      address and, without ``set_uuid``, its HTML a random table id; ``nbsupport.report.show_table``
      is the book's one route for tables;
    * a cell whose last statement is an expression that is not a call in :data:`QUIET_CALLS` and
      is not silenced by a trailing ``;``: Jupyter displays its value, and the reprs of most objects
      (``ax.plot`` -> ``[<matplotlib.lines.Line2D at 0x7f...>]``, a Styler, a generator) carry an
      address.

    IPython magics and shell lines (``%...``, ``!...``) are skipped. Returns one message per finding.
    """
    import ast

    kept = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    text = "\n".join(kept)
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        return [f"does not parse: {error}"]
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "style"
                and not (isinstance(node.value, ast.Name) and node.value.id in _MPL_NAMES)
                and not (isinstance(node.value, ast.Attribute) and node.value.attr in _MPL_NAMES)):
            found.append(f"line {node.lineno}: a pandas Styler ({ast.unparse(node)}): "
                         "show tables with nbsupport.report.show_table")
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr) and not text.rstrip().endswith(";"):
        call = last.value if isinstance(last.value, ast.Call) else None
        func = call.func if call is not None else None
        name = (func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute)
                else None)
        if name not in QUIET_CALLS:
            found.append(f"line {last.lineno}: the cell displays the value of "
                         f"{ast.unparse(last.value)[:60]!r}, whose repr may hold an address: print "
                         "it, show it with show_table, or end the line with ';'")
    return found


def _cell_label(nb, cell: int) -> str:
    cells = [c for c in nb.cells if c.cell_type == "code"]
    if cell >= len(cells):
        return f"code cell {cell}"
    lines = [ln for ln in cells[cell].source.splitlines() if ln.strip() and not ln.startswith(("#", "%"))]
    first = lines[0].strip() if lines else ""
    return f"code cell {cell} ({first[:70]!r})"


def first_difference(nb_a, nb_b, names=("build", "again")) -> str | None:
    """Where the text outputs of two executions of one notebook first differ, described for a reader
    (``None`` when they are equal): the cell (index and first code line), the output, its kind, the
    two texts around the first differing character, and run-dependent parts (addresses, random ids)
    found there."""
    a, b = output_records(nb_a), output_records(nb_b)
    for k, (ra, rb) in enumerate(zip(a, b)):
        # the output index only locates a record: the split into stream messages may shift it
        if (ra[0], ra[2], ra[3]) == (rb[0], rb[2], rb[3]):
            continue
        if (ra[0], ra[2]) != (rb[0], rb[2]):
            return (f"output {k} of the text outputs: {names[0]} has {ra[2]} of {_cell_label(nb_a, ra[0])} "
                    f"output {ra[1]}, {names[1]} has {rb[2]} of {_cell_label(nb_b, rb[0])} output {rb[1]}")
        ta, tb = ra[3], rb[3]
        at = next((i for i, (ca, cb) in enumerate(zip(ta, tb)) if ca != cb), min(len(ta), len(tb)))
        lo = max(0, at - 60)
        message = (f"{_cell_label(nb_a, ra[0])}, output {ra[1]} ({ra[2]}), from character {at}:\n"
                   f"  {names[0]}: {ta[lo:at + 60]!r}\n  {names[1]}: {tb[lo:at + 60]!r}")
        unstable = sorted(set(unstable_parts(ta[lo:at + 80]) + unstable_parts(tb[lo:at + 80])))
        if unstable:
            message += ("\n  the difference holds " + ", ".join(unstable) + ": show tables with "
                        "nbsupport.report.show_table, never leave an object's repr as a cell's output")
        return message
    if len(a) != len(b):
        longer, nb_l, name = (a, nb_a, names[0]) if len(a) > len(b) else (b, nb_b, names[1])
        extra = longer[min(len(a), len(b))]
        return (f"{names[0]} has {len(a)} text outputs, {names[1]} {len(b)}; the first extra one, in {name}: "
                f"{_cell_label(nb_l, extra[0])}, output {extra[1]} ({extra[2]}): {extra[3][:120]!r}")
    return None


def glue_keys(nb) -> list[str]:
    """The myst-nb glue keys of ``nb``'s outputs, in order, repeats kept."""
    return [o.metadata["scrapbook"]["name"] for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})]


def glued_twice(glued: dict[str, list[str]]) -> list[tuple[str, tuple[str, ...]]]:
    """``(key, chapters)`` of every key glued more than once, in one chapter or across chapters;
    ``glued`` maps a chapter to its :func:`glue_keys`."""
    counts: dict[str, int] = {}
    for keys in glued.values():
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return sorted((key, tuple(sorted(ch for ch, keys in glued.items() if key in keys)))
                  for key, n in counts.items() if n > 1)


def error_outputs(nb) -> list[str]:
    """Error outputs of an executed notebook (``ename: evalue``)."""
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"]


BUDGET_SECONDS = 180
STAMP = ROOT / "_build" / ".nbsupport-stamp"


def _files_digest(paths, root: Path) -> str:
    """sha256 over the relative names and contents of ``paths`` (sorted)."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _installed() -> str:
    """``name==version`` of every distribution this interpreter sees (pip freeze's content), and Python's version."""
    from importlib import metadata

    dists = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]},
                   key=str.lower)
    return "\n".join([f"python {sys.version}"] + dists)


def _data_root() -> Path:
    from nbsupport.data import data_root  # the package's own rule ($NBSUPPORT_DATA, else ~/.cache/nbsupport)

    return data_root()


def stamp_parts(root: Path = ROOT, data_root: Path | None = None) -> dict[str, str]:
    """One digest per thing the chapters' code reads besides its own cells."""
    package = [p for p in (root / "nbsupport").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")]
    data_root = _data_root() if data_root is None else data_root
    data = sorted(p for p in (data_root / "FashionMNIST").rglob("*") if p.is_file())
    data_text = "\n".join(f"{p.relative_to(data_root).as_posix()} {p.stat().st_size} {p.stat().st_mtime_ns}"
                           for p in data)
    return {"package": _files_digest(package, root),
            "pyproject": _files_digest([root / "pyproject.toml"], root) if (root / "pyproject.toml").exists() else "",
            "installed": hashlib.sha256(_installed().encode()).hexdigest(),
            "data": hashlib.sha256(f"{data_root}\n{data_text}".encode()).hexdigest(),
            "benchmark results": _files_digest((root / "benchmarks" / "results").glob("*.json"), root)}


def refresh_stamp(stamp: Path = STAMP, parts: dict[str, str] | None = None) -> list[str]:
    """Compare ``parts`` with the stamp; if any differs, empty the caches and write the new stamp.

    Returns the names of the parts that changed (every part when there was no stamp).
    """
    parts = stamp_parts() if parts is None else parts
    try:
        old = json.loads(stamp.read_text())
    except (OSError, ValueError):
        old = {}
    changed = [name for name, digest in parts.items() if old.get(name) != digest]
    if changed:
        for cache in (".jupyter_cache", ".doctrees"):  # beside the stamp, in _build/
            shutil.rmtree(stamp.parent / cache, ignore_errors=True)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps(parts, indent=1) + "\n")
        os.replace(tmp, stamp)
    return changed


def main(argv: list[str]) -> None:
    if argv not in (["--stale"], ["--times"], ["--stamp"]):
        sys.exit(__doc__)
    if argv == ["--stamp"]:
        changed = refresh_stamp()
        if changed:
            print(f"executed-notebook cache emptied: changed since the last build: {', '.join(changed)}")
        return
    for md in CHAPTERS:
        nb, record = cached_execution(md)
        if argv == ["--stale"]:
            if nb is None:
                print(md.with_suffix(".ipynb").relative_to(ROOT))
            continue
        seconds = record.data.get("execution_seconds") if record else None
        note = ("not executed by the build" if seconds is None
                else "over the 3-minute budget" if seconds > BUDGET_SECONDS else "")
        print(f"{md.stem:34s} {seconds or 0:7.1f} s  {note}")


if __name__ == "__main__":
    main(sys.argv[1:])

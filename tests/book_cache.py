"""The book build's executed notebooks (myst-nb's jupyter-cache), for tests that reuse them.

``make book`` executes every chapter once and stores the result in ``_build/.jupyter_cache``,
keyed by the chapter's code cells. ``make test`` checks those executions when they are current
instead of executing the chapters a second time, and hands only the stale ones to nbval:

    python tests/book_cache.py --stale     # prints the .ipynb of every chapter without a current execution
    python tests/book_cache.py --times     # how long each chapter's cached execution took (budget 180 s)
"""

from __future__ import annotations

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
    out = []
    cells = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                out.append((i, output.text))
            elif output.output_type in ("execute_result", "display_data"):
                for kind in ("text/plain", "text/html", "text/latex", "text/markdown"):
                    if kind in output.get("data", {}):
                        out.append((i, f"{kind}: {output.data[kind]}"))
    return out


def error_outputs(nb) -> list[str]:
    """Error outputs of an executed notebook (``ename: evalue``)."""
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"]


BUDGET_SECONDS = 180


def main(argv: list[str]) -> None:
    if argv not in (["--stale"], ["--times"]):
        sys.exit(__doc__)
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

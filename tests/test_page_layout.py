"""What a reader sees, checked without a browser (issue 26).

- Code lines a reader sees on every notebook page fit the text column (84 characters).
- In the built HTML (``_build/html``, skipped without it outside CI): each chapter offers its
  executed notebook for download, no image has a hashed file name (or nothing) as its alt text,
  every page carries the build stamp, no script is included twice, the claims ledger's tally
  matches its rows, and the citations of different sources read differently.
"""

import json
import os
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
#: Characters of code the 672 px text column shows without scrolling at 1280 px.
MAX_CODE_LINE = 84
NOTEBOOK_PAGES = sorted(ROOT.glob("notebooks/*.md")) + [p for p in sorted((ROOT / "book").glob("*.md"))
                                                        if "```{code-cell}" in p.read_text()]


def long_code_lines(path: Path) -> list[tuple[int, int]]:
    """(line number in the file, length) of each code-cell line longer than MAX_CODE_LINE, in the
    cells a reader can see (a ``remove-input`` cell's source is not on the page)."""
    found, in_code, fence, header, first, removed = [], False, "", False, False, False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.lstrip()
        if not in_code and stripped.startswith(("```{code-cell}", "````{code-cell}")):
            in_code, first, removed, cell = True, True, False, []
            fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
            continue
        if in_code and stripped.rstrip() == fence:
            in_code = False
            if not removed:
                found.extend(cell)
            continue
        if in_code and first and line.rstrip() == "---":  # a YAML options block (tags, caption)
            header, first = True, False
            continue
        first = False
        if header or (in_code and line.startswith(":")):  # options: tags, caption
            removed = removed or ("tags" in line and "remove-input" in line)
            if header:
                header = line.rstrip() != "---"
            continue
        if in_code and len(line) > MAX_CODE_LINE:
            cell.append((number, len(line)))
    return found


def test_long_line_finder_on_a_made_up_page(tmp_path):
    page = tmp_path / "page.md"
    long = "x = " + "1 + " * 30 + "1"
    page.write_text("\n".join(["# Title", long, "```{code-cell} ipython3", ":tags: [hide-input]", "",
                               "y = 1", long, "```", long, "```python", long, "```",
                               "```{code-cell} ipython3", "---", "mystnb:", "  caption: " + long, "---",
                               long, "```", "```{code-cell} ipython3", ":tags: [remove-input]", long,
                               "```", "```{code-cell} ipython3", "---", "tags: [check, remove-input]",
                               "---", long, "```"]))
    # prose, plain code blocks, a cell's options and removed cells are not code a reader sees
    assert long_code_lines(page) == [(7, len(long)), (18, len(long))]


@pytest.mark.parametrize("page", NOTEBOOK_PAGES, ids=lambda p: p.name)
def test_code_lines_fit_the_column(page):
    lines = long_code_lines(page)
    shown = ", ".join(f"{n} ({k})" for n, k in lines[:20])
    assert not lines, f"{page.name}: {len(lines)} code lines over {MAX_CODE_LINE} characters, at lines {shown}"


# --- The built HTML ------------------------------------------------------------------------------
built = (HTML / "index.html").is_file()
needs_html = pytest.mark.skipif(not built and os.environ.get("CI") != "true", reason="no _build/html (make book)")
PAGES = sorted(p for p in HTML.glob("**/*.html")
               if not any(part.startswith(("_", ".")) for part in p.relative_to(HTML).parts)
               and 'http-equiv="refresh"' not in p.read_text()[:2000].lower()) if built else []  # not a redirect
CHAPTERS = [p for p in PAGES if p.parent.name == "notebooks"]
HASHED = re.compile(r"(^|/)[0-9a-f]{32,64}\.(png|jpe?g|svg|gif)$")


class _Page(HTMLParser):
    """Collects images, links, scripts and elements by class from one HTML page."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.scripts, self.classes = [], [], [], Counter()
        self._script, self._text_of = None, {}
        self.text_by_class = {}
        self._stack = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in (attrs.get("class") or "").split():
            self.classes[name] += 1
        if tag == "img":
            self.images.append(attrs)
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "script":
            self._script = [attrs.get("src") or "", ""]
        if tag not in ("img", "br", "meta", "link", "input", "hr"):
            self._stack.append((attrs.get("class") or "").split())

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append(tuple(self._script))
            self._script = None
        if self._stack and tag not in ("img", "br", "meta", "link", "input", "hr"):
            self._stack.pop()

    def handle_data(self, data):
        if self._script is not None:
            self._script[1] += data
        for classes in self._stack:
            for name in classes:
                if name.startswith(("ledger-", "build-stamp")):
                    self.text_by_class.setdefault(name, []).append(data)


def parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text())
    return parser


@needs_html
def test_each_chapter_offers_its_executed_notebook():
    assert CHAPTERS, "no chapter pages built"
    for page in CHAPTERS:
        links = [l for l in parse(page).links if l.endswith(f"{page.stem}.ipynb")]
        assert links, f"{page.name}: no link to {page.stem}.ipynb"
        notebook = (page.parent / links[0]).resolve()
        assert notebook.is_file(), f"{page.name}: {links[0]} is not in the built book"
        cells = json.loads(notebook.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert code and all(c.get("execution_count") for c in code), f"{notebook.name} is not executed"
        assert any(c.get("outputs") for c in code), f"{notebook.name} has no outputs"


@needs_html
def test_images_have_alt_text_not_file_names():
    bad = {}
    for page in PAGES:
        for image in parse(page).images:
            alt = (image.get("alt") or "").strip()
            if not alt or HASHED.search(alt) or alt == image.get("src"):
                bad.setdefault(page.relative_to(HTML).as_posix(), []).append(image.get("src"))
    assert not bad, f"images without real alt text: {bad}"


@needs_html
def test_every_page_says_when_and_from_which_commit_it_was_built():
    for page in PAGES:
        stamp = "".join(parse(page).text_by_class.get("build-stamp", []))
        assert re.match(r"Built \d{4}-\d\d-\d\d \d\d:\d\d UTC (from commit [0-9a-f]{7,}|\(not from a git)", stamp), \
            f"{page.name}: build stamp {stamp!r}"


@needs_html
def test_no_script_is_included_twice():
    for page in PAGES:
        scripts = [s for s in parse(page).scripts if s != ("", "")]
        repeated = [s for s, n in Counter(scripts).items() if n > 1]
        assert not repeated, f"{page.name}: included twice: {[s[0] or s[1][:60] for s in repeated]}"
        declarations = sum(body.count("const THEBE_JS_URL") for _, body in scripts)
        assert declarations <= 1, f"{page.name}: THEBE_JS_URL declared {declarations} times"


def ledger_counts(source: Path) -> Counter:
    """Statuses of the ledger's rows, read from the Markdown source (not from the HTML)."""
    counts = Counter()
    for line in source.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| C") and len(cells) >= 4 and re.fullmatch(r"C\d{3}-\d+", cells[0]):
            counts[cells[2].split()[0].lower()] += 1
    return counts


@needs_html
def test_ledger_tally_matches_its_rows_and_statuses_are_badges():
    page = parse(HTML / "book" / "claims.html")
    expected = ledger_counts(ROOT / "book" / "claims.md")
    assert sum(expected.values()) > 0
    tally = "".join(page.text_by_class.get("ledger-tally", []))
    assert f"{sum(expected.values())} claims" in tally, tally
    for status, n in expected.items():
        assert f"{n} {status}" in tally, (status, n, tally)
        # one badge per row plus one in the tally
        assert page.classes[f"ledger-{status}"] >= n + 1, (status, page.classes[f"ledger-{status}"])
    assert page.classes["claims-ledger"] >= 5  # one table per source


@needs_html
def test_sources_are_cited_distinctly_and_the_bibliography_is_author_year():
    text = (HTML / "book" / "intro.html").read_text()
    shown = re.sub(r"<[^>]+>", "", text)
    assert "Anonymous, 2025" not in shown
    assert "Conditional covariance note" in shown and "Bayesian gating note" in shown
    references = re.sub(r"<[^>]+>", "", (HTML / "book" / "references.html").read_text())
    assert re.search(r"\[Roberts et al\., 2022\]", references), "bibliography is not labelled author-year"
    assert not re.search(r"\[\d+\]", references), "numbered labels in the bibliography"


def test_bibliography_labels_are_author_year_and_sources_without_authors_use_short_titles():
    import sys

    from pybtex.database import parse_string
    from pybtex.plugin import find_plugin

    sys.path.insert(0, str(ROOT / "_ext"))
    import book_pages  # noqa: F401  (registers the styles)

    bib = parse_string(r"""
@misc{a, author = {Smith, Ann}, title = {One}, year = {2020}}
@misc{b, author = {Smith, Ann}, title = {Two}, year = {2020}}
@misc{c, author = {Smith, Ann and Jones, Bob}, title = {Three}, year = {2021}}
@misc{d, author = {Smith, Ann and Jones, Bob and Lee, Cy}, title = {Four}, year = {2022}}
@misc{e, title = {A Long Title of an Unsigned Note}, shorttitle = {Unsigned note}, year = {2025}}
@misc{f, author = {Jos{\'e} Moura}, title = {Five}, year = {2019}}
""", "bibtex")
    style = find_plugin("pybtex.style.formatting", "book_author_year")()
    labels = {entry.key: entry.label for entry in style.format_entries(bib.entries.values())}
    assert labels == {"a": "Smith, 2020a", "b": "Smith, 2020b", "c": "Smith and Jones, 2021",
                      "d": "Smith et al., 2022", "e": "Unsigned note, 2025", "f": "Moura, 2019"}
    # sorted by label: Moura, Smith..., then the unsigned note
    order = [entry.key for entry in style.format_entries(bib.entries.values())]
    assert order == ["f", "a", "b", "c", "d", "e"]
    # the text's year is the label's year: "Smith, 2020a" in the text as in the bibliography
    from sphinxcontrib.bibtex.style.referencing import basic_author_year, extra_year

    for formatted in style.format_entries(bib.entries.values()):
        data = {"entry": bib.entries[formatted.key], "formatted_entry": formatted}
        for module in (basic_author_year, extra_year):
            shown = module.year.format_data(data).render_as("text")
            assert shown == formatted.label.rpartition(", ")[2], (formatted.key, shown)

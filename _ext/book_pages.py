"""Book-level additions to every HTML page (a local Sphinx extension, see _config.yml).

- The download menu of a chapter offers its executed notebook (``.ipynb`` with every output), as
  sphinx-book-theme does only when a launch provider (Binder, Colab) is configured.
- Every image gets alt text: its figure's caption, else a description of where it stands (MyST-NB
  leaves the hashed file name).
- The footer of every page says when and from which commit the book was built.
- The claims ledger: each status cell carries a class (coloured badges in ``_static/book.css``) and
  a tally by status stands above the tables. The rows themselves are not changed.
- A script registered twice (sphinx-thebe's ``THEBE_JS_URL`` declaration) is included once.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from docutils import nodes

#: Statuses of the claims ledger, in the order of the tally.
STATUSES = ("verified", "qualified", "corrected", "pending")
LEDGER = "book/claims"


def _build_stamp(srcdir: str) -> str:
    """'Built <UTC date> from commit <hash>' (SOURCE_DATE_EPOCH fixes the date when set)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (_dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch
            else _dt.datetime.now(_dt.timezone.utc))
    stamp = f"Built {when:%Y-%m-%d %H:%M} UTC"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=srcdir, check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=srcdir,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return stamp + " (not from a git checkout)"
    return stamp + f" from commit <code>{commit}</code>" + (" with uncommitted changes" if dirty else "")


def _caption_of(node: nodes.Node) -> str | None:
    """The caption text of the figure around ``node``, if any."""
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.figure):
            for child in parent.findall(nodes.caption):
                text = " ".join(child.astext().split())
                return text or None
            return None
        parent = parent.parent
    return None


def _section_title(node: nodes.Node) -> str | None:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.section) and parent.children and isinstance(parent[0], nodes.title):
            return parent[0].astext()
        parent = parent.parent
    return None


def add_alt_text(app, doctree, docname):
    """Alt text from the caption (at most 300 characters), else from the section's title."""
    for image in doctree.findall(nodes.image):
        if image.get("alt"):
            continue
        caption = _caption_of(image)
        if caption:
            image["alt"] = caption if len(caption) <= 300 else caption[:297].rsplit(" ", 1)[0] + "..."
            continue
        title = _section_title(image)
        image["alt"] = f"Figure drawn by the code in section “{title}”" if title else "Figure drawn by the code above"


def _status(entry: nodes.Node) -> str:
    words = entry.astext().strip().split()
    return words[0].lower().strip(".,;:") if words else ""


def mark_ledger(app, doctree, docname):
    """Classes on the ledger's tables and status cells, and a tally by status above them."""
    if docname != LEDGER:
        return
    counts = Counter()
    for table in doctree.findall(nodes.table):
        heads = [entry.astext().strip().lower() for row in table.findall(nodes.thead)
                 for entry in row.findall(nodes.entry)]
        if "status" not in heads or "id" not in heads:
            continue
        table["classes"].append("claims-ledger")
        column = heads.index("status")
        for tbody in table.findall(nodes.tbody):
            for row in tbody.findall(nodes.row):
                entries = [e for e in row.children if isinstance(e, nodes.entry)]
                if len(entries) <= column:
                    continue
                cell = entries[column]
                status = _status(cell)
                counts[status] += 1
                cell["classes"] += ["ledger-status", f"ledger-{status}"]
                holder = next(iter(cell.findall(nodes.paragraph)), cell)
                if len(cell.astext().split()) == 1 and all(isinstance(c, nodes.Text) for c in holder.children):
                    word = holder.astext()
                    holder.children = []
                    holder += nodes.inline(text=word, classes=["ledger-badge", f"ledger-{status}"])
    if not counts:
        return
    tally = nodes.paragraph(classes=["ledger-tally"])
    tally += nodes.strong(text=f"{sum(counts.values())} claims: ")
    parts = [s for s in STATUSES if counts[s]] + sorted(s for s in counts if s not in STATUSES)
    for k, status in enumerate(parts):
        if k:
            tally += nodes.Text(", ")
        tally += nodes.inline(text=f"{counts[status]} {status}", classes=["ledger-badge", f"ledger-{status}"])
    tally += nodes.Text(".")
    top = next(doctree.findall(nodes.section), None)
    if top is None:
        return
    first_sub = next((i for i, child in enumerate(top.children) if isinstance(child, nodes.section)), None)
    top.insert(first_sub if first_sub is not None else len(top.children), tally)


def add_notebook_download(app, pagename, templatename, context, doctree):
    """Offer the executed notebook in the theme's download menu (runs before the theme fills it)."""
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file() or context.get("ipynb_source"):
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def add_footer_and_dedupe_scripts(app, pagename, templatename, context, doctree):
    stamp = getattr(app, "_book_build_stamp", "")
    footer = context.get("theme_extra_footer") or ""
    context["theme_extra_footer"] = f'{footer}<p class="build-stamp">{stamp}</p>'
    scripts, seen = [], set()
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        name = getattr(script, "filename", script) or ""  # None and "" both mean an inline script
        key = (str(name), tuple(sorted((k, str(v)) for k, v in attributes.items() if k != "priority")))
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts


def _on_builder_inited(app):
    app._book_build_stamp = _build_stamp(app.srcdir)  # not a config value: it would re-read every page


def setup(app):
    app.connect("builder-inited", _on_builder_inited)
    app.connect("doctree-resolved", add_alt_text)
    app.connect("doctree-resolved", mark_ledger)
    app.connect("html-page-context", add_notebook_download, priority=400)
    app.connect("html-page-context", add_footer_and_dedupe_scripts, priority=999)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


# --- Citations: author-year in the text and in the bibliography, one label for both -------------
# The text's references use sphinxcontrib-bibtex's author_year style, whose fallback for an entry
# without author or editor is the full title; ours takes the entry's ``shorttitle`` first. The
# bibliography (pybtex) is labelled and sorted by the same "Author, Year" (plain numbers before).

def _bibtex_styles():
    from dataclasses import dataclass, field as dc_field

    from pybtex.plugin import register_plugin as register_pybtex
    from pybtex.richtext import Text
    from pybtex.style.formatting.plain import Style as PlainStyle
    from pybtex.style.labels import BaseLabelStyle
    from pybtex.style.sorting import BaseSortingStyle
    from pybtex.style.template import field, first_of, node, optional, tag
    from sphinxcontrib.bibtex.plugin import register_plugin as register_bibtex
    from sphinxcontrib.bibtex.style.referencing import PersonStyle
    from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
    from sphinxcontrib.bibtex.style.template import names

    @node
    def author_or_editor_or_short_title(children, data, **kwargs):
        assert not children
        return first_of[
            optional[names("author", **kwargs)],
            optional[names("editor", **kwargs)],
            tag("em")[first_of[optional[field("shorttitle")], field("title")]],
        ].format_data(data)

    @dataclass
    class ShortTitlePersonStyle(PersonStyle):
        def author_or_editor_or_title(self, full):
            return author_or_editor_or_short_title(sep=self.sep, sep2=self.sep2, last_sep=self.last_sep,
                                                   other=None if full else self.other)

    @dataclass
    class BookAuthorYear(AuthorYearReferenceStyle):
        person: PersonStyle = dc_field(default_factory=ShortTitlePersonStyle)

    def _text(latex: str) -> str:
        return Text.from_latex(latex).render_as("text")

    def who(entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor")
        if not persons:
            return _text(entry.fields.get("shorttitle") or entry.fields.get("title", entry.key))
        last = [_text(" ".join(p.prelast_names + p.last_names)) for p in persons]
        if len(last) == 1:
            return last[0]
        return f"{last[0]} and {last[1]}" if len(last) == 2 else f"{last[0]} et al."

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            entries = list(sorted_entries)
            labels = [f"{who(e)}, {e.fields.get('year', 'n.d.')}" for e in entries]
            repeated = Counter(labels)
            seen = Counter()
            for label in labels:
                if repeated[label] > 1:  # Smith, 2020a / Smith, 2020b
                    seen[label] += 1
                    label += "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
                yield label

    class AuthorYearSorting(BaseSortingStyle):
        def sorting_key(self, entry):
            return (who(entry).lower(), entry.fields.get("year", ""), entry.fields.get("title", "").lower())

    class AuthorYearStyle(PlainStyle):
        default_label_style = "book_author_year"
        default_sorting_style = "book_author_year"

    # The text's year is the bibliography label's year, so "Smith, 2020a" reads the same in both
    # (sphinxcontrib-bibtex's year node reads the bare year field; its reference styles look the
    # name up in their modules when a template is built, so those names are replaced).
    from sphinxcontrib.bibtex.style.referencing import basic_author_year, extra_year
    from sphinxcontrib.bibtex.style.template import year as field_year

    @node
    def labelled_year(children, data):
        assert not children
        label = getattr(data.get("formatted_entry"), "label", "") or ""
        _, sep, tail = label.rpartition(", ")
        return Text(tail) if sep and tail[:4].isdigit() else field_year.format_data(data)

    basic_author_year.year = extra_year.year = labelled_year

    register_pybtex("pybtex.style.labels", "book_author_year", AuthorYearLabels, force=True)
    register_pybtex("pybtex.style.sorting", "book_author_year", AuthorYearSorting, force=True)
    register_pybtex("pybtex.style.formatting", "book_author_year", AuthorYearStyle, force=True)
    register_bibtex("sphinxcontrib.bibtex.style.referencing", "book_author_year", BookAuthorYear, force=True)


_bibtex_styles()

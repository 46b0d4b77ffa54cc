"""Static checks of the book's text, used by test_prose_numbers.py and test_ledger.py.

Two rules (issue 15):

* a measured number in prose is glued from the cell that computes it, never typed;
* every ledger status other than *pending* rests on an executed check cell: a code cell tagged
  ``check`` whose ``assert`` involves a computed value, in the section the ledger row links to.

The functions take text, not paths, so the tests can show that each rule fails on a broken copy.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# MyST structure
# ---------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\{(?P<directive>[^}]+)\})?\s*(?P<arg>.*)$")
LABEL = re.compile(r"^\((?P<label>[A-Za-z0-9_.:-]+)\)=\s*$")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+\S")

# Directives whose body is not prose: code and mathematics.
_NOT_PROSE = {"code-cell", "math", "code", "code-block", "raw", "eval-rst", "bibliography", "toctree"}


@dataclass
class Cell:
    """A code cell of a MyST notebook: where it starts, its tags and its source."""

    line: int
    tags: list[str]
    source: str


def code_cells(text: str) -> list[Cell]:
    """The ``{code-cell}`` blocks of a MyST notebook, with their ``:tags:`` option."""
    cells, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m and m.group("directive") == "code-cell":
            fence, start, i = m.group(1), i, i + 1
            tags, body = [], []
            while i < len(lines) and not lines[i].startswith(fence):
                option = re.match(r"^:tags:\s*\[(.*)\]\s*$", lines[i])
                if option and not body:
                    tags = [t.strip().strip("'\"") for t in option.group(1).split(",") if t.strip()]
                elif not (re.match(r"^:\w[\w-]*:", lines[i]) and not body):
                    body.append(lines[i])
                i += 1
            cells.append(Cell(start + 1, tags, "\n".join(body)))
        i += 1
    return cells


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of the prose of a MyST page: code cells, math blocks, front matter,
    directive options and comments removed; admonitions, figure captions and proofs kept."""
    lines = text.splitlines()
    out: list[tuple[int, str]] = []
    i = 0
    if lines and lines[0].strip() == "---":  # front matter
        i = next((k for k in range(1, len(lines)) if lines[k].strip() == "---"), len(lines)) + 1
    stack: list[tuple[str, bool]] = []  # open fences: (fence, is prose)
    in_dollars = False
    while i < len(lines):
        line = lines[i]
        i += 1
        m = _FENCE.match(line.strip()) if not in_dollars else None
        if m and stack and line.strip().startswith(stack[-1][0]) and not m.group("directive") and not m.group("arg"):
            stack.pop()
            continue
        if m:
            directive = (m.group("directive") or "").strip()
            prose = bool(directive) and directive not in _NOT_PROSE and (not stack or stack[-1][1])
            stack.append((m.group(1), prose))
            continue
        if stack and not stack[-1][1]:
            continue
        if line.strip().startswith("$$"):
            in_dollars = not (in_dollars or line.strip().endswith("$$") and len(line.strip()) > 2)
            continue
        if in_dollars or LABEL.match(line) or re.match(r"^\s*:[\w-]+:", line) or line.lstrip().startswith("%"):
            continue
        out.append((i, line))
    return out


# ---------------------------------------------------------------------------------------------
# Rule 1: numbers in prose are glued
# ---------------------------------------------------------------------------------------------

_STRIP = [
    re.compile(r"\$\$.*?\$\$"),                      # display maths on one line
    re.compile(r"(?<!\\)\$[^$]+?(?<!\\)\$"),         # inline maths
    re.compile(r"\{[\w:-]+\}`[^`]*`"),               # roles: glue, ref, cite, eq, numref, doc, ...
    re.compile(r"`[^`]*`"),                          # inline code
    re.compile(r"\]\([^)]*\)"),                      # link targets
    re.compile(r"https?://\S+"),                     # bare addresses
    re.compile(r"<!--.*?-->"),                       # comments
]
# A reference to a numbered thing of a source or of the software (not a measurement).
_REFERENCE = re.compile(
    r"(?:Sections?|Sec\.|§|Eqs?\.|Equations?|Figs?\.|Figures?|Tables?|Lemmas?|Theorems?|Propositions?|"
    r"Corollary|Definitions?|Listings?|Algorithms?|Appendix|Chapters?|arXiv:?|Python|PyTorch|torch|"
    r"torchvision|NumPy|SciPy|version|Jupyter Book|v)\s*$", re.IGNORECASE)
_NUMBER = re.compile(
    r"(?<![\w.])(?:"
    r"\d+(?:\.\d+)?\s?(?:%|per\s?cent)"              # percentages
    r"|\d+(?:\.\d+)?[eE][-+]?\d+"                   # 1e-15, 2.4e30
    r"|10\^\{?-?\d+\}?"                              # 10^28 written in text
    r"|\d+\.\d+"                                     # decimals
    r")(?![\w])")


def typed_numbers(text: str) -> list[tuple[int, str, str]]:
    """Measured-looking numbers typed into the prose of a MyST page.

    Returns ``(line number, number, line)`` for every decimal, percentage or power of ten in
    prose, outside maths, inline code, roles (``{glue:text}`` included) and references to numbered
    items of a source (``Section 3.2``, ``Eq. 4``) or software versions.
    """
    found = []
    for number, line in prose_lines(text):
        stripped = line
        for pattern in _STRIP:
            stripped = pattern.sub(" ", stripped)
        for m in _NUMBER.finditer(stripped):
            if _REFERENCE.search(stripped[:m.start()]):
                continue
            found.append((number, m.group(0), line.strip()))
    return found


# ---------------------------------------------------------------------------------------------
# Rule 2: every ledger status rests on a check cell
# ---------------------------------------------------------------------------------------------

STATUSES = {"verified", "qualified", "corrected", "pending"}
_ROW = re.compile(r"^\|\s*(?P<id>C\d{3}-\d+)\s*\|(?P<claim>.*)\|\s*(?P<status>[^|]*?)\s*\|(?P<where>[^|]*)\|\s*$")
_REF = re.compile(r"\{ref\}`(?:[^`<]*<(?P<a>[^>]+)>|(?P<b>[^`]+))`")


@dataclass
class LedgerRow:
    id: str
    status: str
    where: str

    @property
    def labels(self) -> list[str]:
        return [m.group("a") or m.group("b") for m in _REF.finditer(self.where)]


def ledger_rows(text: str) -> list[LedgerRow]:
    """The claim rows (``| C000-1 | claim | status | checked in |``) of the claims ledger."""
    return [LedgerRow(m.group("id"), m.group("status").strip().strip("*").lower(), m.group("where").strip())
            for m in map(_ROW.match, text.splitlines()) if m]


def without_claim_column(text: str) -> str:
    """The ledger with its claim column blanked: a claim restates a source's own constants, the
    other columns are ours."""
    return "\n".join(f"| {m.group('id')} | | {m.group('status')} |{m.group('where')}|" if (m := _ROW.match(line))
                     else line for line in text.splitlines())


def sections(text: str) -> dict[str, str]:
    """Label -> the text of the section it opens: up to the next heading of the same or a higher
    level than the heading that follows the label (to the end of the page if there is none)."""
    lines, out = text.splitlines(), {}
    for i, line in enumerate(lines):
        m = LABEL.match(line)
        if not m:
            continue
        k = i + 1
        while k < len(lines) and not lines[k].strip():
            k += 1
        h = HEADING.match(lines[k]) if k < len(lines) else None
        if h is None:  # a label on a paragraph: up to the next label or heading
            end = next((j for j in range(i + 1, len(lines)) if LABEL.match(lines[j]) or HEADING.match(lines[j])),
                       len(lines))
        else:
            level = len(h.group("hashes"))
            end = next((j for j in range(k + 1, len(lines))
                        if (hm := HEADING.match(lines[j])) and len(hm.group("hashes")) <= level
                        and not _inside_fence(lines, j)), len(lines))
        out[m.group("label")] = "\n".join(lines[i:end])
    return out


def _inside_fence(lines: list[str], j: int) -> bool:
    """Whether line ``j`` lies inside a code cell (a ``# comment`` there is not a heading)."""
    depth = 0
    for line in lines[:j]:
        m = _FENCE.match(line)
        if m and m.group("directive") == "code-cell":
            depth = 1
        elif depth and line.startswith("```") and not line.strip().strip("`"):
            depth = 0
    return bool(depth)


def _python(source: str) -> str:
    """The cell's source with IPython magic and shell lines blanked (line numbers kept)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _parse(source: str) -> ast.Module:
    """The cell's syntax tree (magics blanked)."""
    return ast.parse(_python(source))


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the ``#`` comment on that line."""
    text = _python(source)
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string
    except (tokenize.TokenError, IndentationError):
        pass
    return out


# Calls that compute nothing of ours when their arguments are literals: ``len([0])``, ``np.isfinite(0.0)``.
_LIBRARY = {"len", "bool", "int", "float", "abs", "round", "all", "any", "sum", "min", "max", "isinstance",
            "np", "numpy", "math", "torch", "pd", "scipy", "st"}


def _base_name(func: ast.AST) -> str | None:
    while isinstance(func, ast.Attribute):
        func = func.value
    return func.id if isinstance(func, ast.Name) else None


def _read_names(node: ast.AST) -> list[str]:
    """Names a test reads as values; the library function of a call (``np`` in ``np.isfinite(x)``)
    does not count, so a library call on literals reads nothing."""
    if isinstance(node, ast.Call) and _base_name(node.func) in _LIBRARY:
        return [n for arg in [*node.args, *(k.value for k in node.keywords)] for n in _read_names(arg)]
    if isinstance(node, ast.Name):
        return [node.id]
    return [n for child in ast.iter_child_nodes(node) for n in _read_names(child)]


def _is_none_test(node: ast.AST) -> bool:
    return isinstance(node, ast.Compare) and any(
        isinstance(c, ast.Constant) and c.value is None for c in [node.left, *node.comparators])


def vacuous_reason(test: ast.AST) -> str | None:
    """Why an assert's test cannot fail (or says nothing), or ``None`` when it can.

    Caught: literals only (``assert True``, ``len([0])``, ``np.isfinite(0.0)``: the called
    function does not count as a computed value), a comparison of an expression with itself
    (``x == x``), a comparison with ``None`` (``x is not None``), and an ``or`` with a constant or
    a ``None`` test among its operands (``value is None or value``).
    """
    if not _read_names(test):
        return "reads no computed value (literals only)"
    for node in ast.walk(test):
        if isinstance(node, ast.Compare):
            sides = [ast.dump(n) for n in [node.left, *node.comparators]]
            if len(set(sides)) < len(sides):
                return "compares an expression with itself"
            if _is_none_test(node):
                return "compares with None"
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            if any(isinstance(v, ast.Constant) or _is_none_test(v) for v in node.values):
                return "'or' with a constant or a None test"
    return None


def assert_uses_computed_value(source: str) -> bool:
    """Whether the cell has an ``assert`` whose test reads a computed value and can fail."""
    return any(isinstance(node, ast.Assert) and vacuous_reason(node.test) is None
               for node in ast.walk(_parse(source)))


_ROW_TAG = re.compile(r"\b(C\d{3}-\d+)\b(?:\s+(null|sanity)\b)?")


@dataclass
class BoundAssert:
    """An ``assert`` of a check cell that names ledger rows in its comment."""

    row: str
    kind: str  # "evidence", "null" or "sanity"
    vacuous: str | None  # why it cannot fail, or None
    line: int  # in the cell


def bound_asserts(source: str) -> list[BoundAssert]:
    """The asserts of a cell that carry row ids (``# C004-7``, ``# C004-7 null``,
    ``# C004-7 sanity``; several ids separated by commas), one entry per id, wherever on the
    assert's lines the comment stands."""
    comments, out = _comments(source), []
    for node in ast.walk(_parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        text = " ".join(comments.get(k, "") for k in range(node.lineno, (node.end_lineno or node.lineno) + 1))
        for m in _ROW_TAG.finditer(text):
            out.append(BoundAssert(m.group(1), m.group(2) or "evidence", vacuous_reason(node.test), node.lineno))
    return out


def check_cells(section_text: str) -> list[Cell]:
    """Code cells tagged ``check`` in a section that assert something computed."""
    return [c for c in code_cells(section_text) if "check" in c.tags and assert_uses_computed_value(c.source)]


def _row_evidence(row_id: str, section_texts: list[str]) -> list[str]:
    """What the row lacks in its linked sections: an evidence and a null assert of its own."""
    found = [b for text in section_texts for c in code_cells(text) if "check" in c.tags
             for b in bound_asserts(c.source) if b.row == row_id]
    problems = [f"{row_id}: the assert on line {b.line} of its check cell cannot fail ({b.vacuous})"
                for b in found if b.vacuous and b.kind != "sanity"]
    for kind, what in (("evidence", f"'# {row_id}'"), ("null", f"'# {row_id} null'")):
        if not any(b.kind == kind and not b.vacuous for b in found):
            problems.append(f"{row_id}: no {kind} assert tagged {what} in a check cell of its section")
    return problems


def ledger_problems(claims: str, pages: dict[str, str], bound: bool = True) -> list[str]:
    """Every way the ledger fails the rule, as readable lines (empty when it holds).

    Parameters
    ----------
    claims : str
        The text of ``book/claims.md``.
    pages : dict of str to str
        Page name -> MyST text of every page a row may link to (the notebooks).
    bound : bool
        Also require each verified / qualified / corrected row's own evidence assert
        (``# C004-7``) and null assert (``# C004-7 null``), not vacuous, in a check cell of a
        linked section (issue 21). Without it a section needs any check cell with an assert.
    """
    problems, labelled = [], {}
    for name, text in pages.items():
        for label, section in sections(text).items():
            labelled[label] = (name, section)
    rows = ledger_rows(claims)
    if not rows:
        problems.append("no ledger rows found")
    for row in rows:
        if row.status not in STATUSES:
            problems.append(f"{row.id}: unknown status {row.status!r}")
            continue
        if row.status == "pending":
            if not re.sub(_REF, "", row.where).strip(" ,.;"):
                problems.append(f"{row.id}: pending without a reason in 'Checked in'")
            continue
        if not row.labels:
            problems.append(f"{row.id}: {row.status} but links to no section")
        for label in row.labels:
            if label not in labelled:
                problems.append(f"{row.id}: dangling label {label!r}")
            elif not check_cells(labelled[label][1]):
                problems.append(f"{row.id}: section {label!r} ({labelled[label][0]}) has no check cell with an assert")
        if bound and row.labels and all(label in labelled for label in row.labels):
            problems += _row_evidence(row.id, [labelled[label][1] for label in row.labels])
    return problems


def vacuous_copy(text: str) -> str:
    """The page with every check-cell assert rewritten to ``v == v`` (``v`` the first name the
    assert reads), comments kept: what the ledger rule must reject (issue 21)."""
    lines = text.splitlines()
    for cell in code_cells(text):
        if "check" not in cell.tags:
            continue
        body = cell.source.splitlines()
        first = next(k for k in range(cell.line, len(lines)) if lines[k] == body[0]) if body else None
        for node in ast.walk(_parse(cell.source)):
            if isinstance(node, ast.Assert) and _read_names(node.test):
                v = _read_names(node.test)[0]
                end = node.end_lineno or node.lineno
                comment = " ".join(c for k, c in _comments(cell.source).items() if node.lineno <= k <= end)
                indent = body[node.lineno - 1][: len(body[node.lineno - 1]) - len(body[node.lineno - 1].lstrip())]
                lines[first + node.lineno - 1] = f"{indent}assert {v} == {v}  {comment}".rstrip()
                for k in range(node.lineno + 1, end + 1):
                    lines[first + k - 1] = ""
    return "\n".join(lines)


def check_cells_that_only_print(text: str) -> list[int]:
    """Start lines of cells tagged ``check`` that assert nothing computed."""
    return [c.line for c in code_cells(text) if "check" in c.tags and not assert_uses_computed_value(c.source)]


_TIMING = re.compile(r"\b(?:time\.(?:perf_counter|time|process_time|monotonic)(?:_ns)?\s*\(|timeit\b)|^\s*%%?time(?:it)?\b",
                     re.MULTILINE)


def timing_cells(text: str) -> list[int]:
    """Start lines of code cells that measure wall time (``time.perf_counter()``, ``%timeit``, ...).

    A page that prints a timing differs between two builds; timings belong to ``benchmarks/`` and
    the performance appendix, which reads their committed results.
    """
    return [c.line for c in code_cells(text) if _TIMING.search(c.source)]


_LINK_TEXT = re.compile(r"\{(?:ref|doc|numref)\}`(?P<text>[^`<]*)<[^>`]+>`")


def maths_in_link_text(text: str) -> list[tuple[int, str]]:
    """``(line, link text)`` of every ``{ref}``, ``{doc}`` or ``{numref}`` link whose text holds
    ``$`` or a backslash: MathJax does not typeset inside link text, so the reader sees raw TeX."""
    return [(i, m.group("text").strip()) for i, line in enumerate(text.splitlines(), 1)
            for m in _LINK_TEXT.finditer(line) if "$" in m.group("text") or "\\" in m.group("text")]

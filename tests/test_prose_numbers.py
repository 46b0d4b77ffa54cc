"""Numbers in the book's prose come from outputs (myst-nb glue), never typed (issue 15).

What counts as a typed measurement: a decimal (0.52), a percentage (76.3 %, 20%), a power of ten
(1e-15, 10^28) in prose, outside maths, inline code, roles such as {glue:text} and references to
numbered items (Section 3.2, Eq. 4). Settings belong in maths or code ($\\tau = 0.3$), results in glue.
"""

from pathlib import Path

import pytest

from book_checks import maths_in_link_text, timing_cells, typed_numbers, without_claim_column

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(ROOT.glob("notebooks/*.md")) + [ROOT / "book" / p for p in (
    "intro.md", "claims.md", "performance.md", "decisions.md")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_prose_has_no_typed_measurements(page):
    text = page.read_text()
    found = typed_numbers(without_claim_column(text) if page.name == "claims.md" else text)
    listing = "\n".join(f"  {page.name}:{line}: {number!r} in: {text[:120]}" for line, number, text in found)
    assert not found, f"typed numbers in prose (glue them from the cell that computes them):\n{listing}"


BROKEN = r"""---
jupytext:
  formats: ipynb,md:myst
---
# A chapter

The between share is 76.3 % against a null of {glue:text}`ch1_null:.1f` %.

```{code-cell} ipython3
x = 0.25  # code is not prose
```

The error is about 1e-14, ten times $\epsilon = 0.5$; see Section 3.2 and Eq. 4.1 of the source.

```{figure} a.png
:width: 80%

Caption: the fit reaches 0.83 after training.
```

$$
\sigma = 0.71
$$

```{math}
:label: eq-x
y = 2.5
```
"""


def test_a_broken_page_is_caught():
    found = [(line, number) for line, number, _ in typed_numbers(BROKEN)]
    numbers = [n for _, n in found]
    assert numbers == ["76.3 %", "1e-14", "0.83"], found


@pytest.mark.parametrize("ok", [
    "Glued: {glue:text}`ch2_gap:.4f` nats, and $\\tau = 0.3$ in maths.",
    "Inline code `lr=1e-3` and a reference to Section 2.3, Lemma 1, arXiv 2503.22082.",
    "Counts are not measurements of this kind: 500 points, 16 gates, 2 layers.",
    "A link [paper](https://arxiv.org/abs/2503.22082) and {cite:p}`chaudhari2025relu`.",
])
def test_allowed_forms_pass(ok):
    assert typed_numbers(ok) == []


@pytest.mark.parametrize("page", sorted(ROOT.glob("notebooks/*.md")), ids=lambda p: p.stem)
def test_chapters_measure_no_wall_time(page):
    """Two builds print the same numbers, so no chapter times itself (benchmarks/ does)."""
    assert timing_cells(page.read_text()) == [], f"{page.name}: cells that time themselves"


def test_a_timing_cell_is_caught():
    page = "```{code-cell} ipython3\nstart = time.perf_counter()\n```\n\n```{code-cell} ipython3\n%timeit f()\n```\n"
    assert timing_cells(page) == [1, 5]
    assert timing_cells("```{code-cell} ipython3\nruntime = n_evaluations  # a count, not a time\n```\n") == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_link_texts_hold_no_maths(page):
    """A ``{ref}`` link's text is not typeset: ``$\\sigma$`` there reaches the reader as raw TeX."""
    found = maths_in_link_text(page.read_text())
    assert found == [], f"{page.name}: maths in link text (write it in words): {found}"


def test_maths_in_link_text_is_caught():
    page = ("See {ref}`one shared $\\sigma$ <sec-a>` and {doc}`the \\tau sweep <../b>`;\n"
            "{ref}`plain words <sec-c>`, {ref}`sec-d` and $\\sigma$ outside a link pass.\n")
    assert maths_in_link_text(page) == [(1, "one shared $\\sigma$"), (1, "the \\tau sweep")]

"""Every ledger status rests on a cell that can fail (issue 15).

A row of book/claims.md with status verified, qualified or corrected links with {ref} to a labelled
section of a notebook, and that section holds at least one code cell tagged ``check`` whose
``assert`` reads a computed value. Pending rows say why. A cell tagged ``check`` never only prints.
"""

from pathlib import Path

import pytest

from book_checks import check_cells_that_only_print, ledger_problems, ledger_rows

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.md"))


def _pages():
    return {p.stem: p.read_text() for p in NOTEBOOKS}


@pytest.mark.parametrize("source", ["C000", "C001", "C002", "C003", "C004"])
def test_ledger_statuses_rest_on_check_cells(source):
    problems = [p for p in ledger_problems((ROOT / "book" / "claims.md").read_text(), _pages())
                if p.startswith(source)]
    assert not problems, "claims ledger:\n  " + "\n  ".join(problems)


def test_every_source_has_claims():
    ids = {row.id[:4] for row in ledger_rows((ROOT / "book" / "claims.md").read_text())}
    assert ids == {"C000", "C001", "C002", "C003", "C004"}


@pytest.mark.parametrize("page", NOTEBOOKS, ids=lambda p: p.stem)
def test_check_cells_assert_something(page):
    assert check_cells_that_only_print(page.read_text()) == [], f"{page.name}: check cells without an assert"


# --- the rule fails on broken copies ----------------------------------------------------------

NOTEBOOK = """# Chapter

(sec-good)=
## A checked section

```{code-cell} ipython3
:tags: [check, remove-input]
err = abs(1.0 - 0.999)
print(err)
assert err < 1e-2, err
```

### A subsection is part of it

(sec-prints)=
## A section whose check only prints

```{code-cell} ipython3
:tags: [check]
print(0.5)
assert True
```

(sec-untagged)=
## An assert that is not tagged

```{code-cell} ipython3
value = 2
assert value == 2
```
"""

CLAIMS = """| ID | Claim | Status | Checked in |
|---|---|---|---|
| C000-1 | Good. | verified | {ref}`ok <sec-good>` |
| C000-2 | Only prints. | qualified | {ref}`sec-prints` |
| C000-3 | Not tagged. | corrected | {ref}`here <sec-untagged>` |
| C000-4 | Dangling. | verified | {ref}`gone <sec-missing>` |
| C000-5 | No link. | verified | the chapter |
| C000-6 | Pending, with reason. | pending | needs pretrained weights |
| C000-7 | Pending, no reason. | pending | |
| C000-8 | Typo. | verifed | {ref}`ok <sec-good>` |
"""


def test_a_broken_ledger_is_caught():
    problems = ledger_problems(CLAIMS, {"ch": NOTEBOOK})
    failing = sorted({p.split(":")[0] for p in problems})
    assert failing == ["C000-2", "C000-3", "C000-4", "C000-5", "C000-7", "C000-8"], problems
    assert any("dangling label 'sec-missing'" in p for p in problems)


def test_a_check_cell_that_only_prints_is_caught():
    assert len(check_cells_that_only_print(NOTEBOOK)) == 1

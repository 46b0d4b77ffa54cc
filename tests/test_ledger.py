"""Every ledger status rests on asserts of its own that can fail (issues 15 and 21).

A row of book/claims.md with status verified, qualified or corrected links with {ref} to a labelled
section of a notebook; a code cell tagged ``check`` in that section holds an evidence assert carrying
the row's id (``# C004-7``) and a null assert (``# C004-7 null``), neither vacuous. Pending rows say
why. A cell tagged ``check`` never only prints.
"""

from pathlib import Path

import pytest

from book_checks import (bound_asserts, check_cells_that_only_print, code_cells, ledger_problems, ledger_rows,
                         vacuous_copy, vacuous_reason)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.md"))


def _pages():
    return {p.stem: p.read_text() for p in NOTEBOOKS}


SOURCES = ["C000", "C001", "C002", "C003", "C004"]


@pytest.mark.parametrize("source", SOURCES)
def test_ledger_statuses_rest_on_check_cells(source):
    problems = [p for p in ledger_problems((ROOT / "book" / "claims.md").read_text(), _pages(), bound=False)
                if p.startswith(source)]
    assert not problems, "claims ledger:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("source", SOURCES)
def test_each_row_has_its_own_evidence_and_null(source):
    problems = [p for p in ledger_problems((ROOT / "book" / "claims.md").read_text(), _pages())
                if p.startswith(source)]
    assert not problems, "claims ledger:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("source", SOURCES)
def test_vacuous_rewrites_of_the_chapters_fail_every_row(source):
    # Issue 21: rewriting every check-cell assert to `v == v` must break every bound row.
    claims = (ROOT / "book" / "claims.md").read_text()
    assert not [p for p in ledger_problems(claims, _pages()) if p.startswith(source)]
    broken = ledger_problems(claims, {k: vacuous_copy(v) for k, v in _pages().items()})
    rows = [r.id for r in ledger_rows(claims) if r.id.startswith(source) and r.status != "pending"]
    assert rows and all(any(p.startswith(r + ":") for p in broken) for r in rows)


def test_every_source_has_claims():
    ids = {row.id[:4] for row in ledger_rows((ROOT / "book" / "claims.md").read_text())}
    assert ids == set(SOURCES)


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
null_err = abs(1.0 - 0.5)
print(err)
assert err < 1e-2, err  # C000-1
assert null_err > 1e-2  # C000-1 null
assert err >= 0  # C000-1 sanity
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
    problems = ledger_problems(CLAIMS, {"ch": NOTEBOOK}, bound=False)
    failing = sorted({p.split(":")[0] for p in problems})
    assert failing == ["C000-2", "C000-3", "C000-4", "C000-5", "C000-7", "C000-8"], problems
    assert any("dangling label 'sec-missing'" in p for p in problems)
    bound = ledger_problems(CLAIMS, {"ch": NOTEBOOK})
    assert not [p for p in bound if p.startswith("C000-1:")], bound  # evidence, null and a sanity check


BOUND = """## Section
(sec-a)=
## A

```{code-cell} ipython3
:tags: [check]
share, null = 0.4, 0.1
assert share > 0.3  # C001-1
assert (share - null
        > 0.2)  # C001-2, C001-3
assert null < 0.3  # C001-1 null, C001-2 null
assert share > 0.3  # C001-4 sanity
assert null < 0.3  # C001-4 null
assert share == share  # C001-5
assert share is not None  # C001-5 null
assert len([0])  # C001-6
assert np.isfinite(0.0)  # C001-6 null
assert share is None or share  # C001-7
assert True or share  # C001-7 null
```
"""

BOUND_CLAIMS = "\n".join(f"| C001-{i} | c | verified | {{ref}}`sec-a` |" for i in range(1, 8))


def test_rows_without_their_own_evidence_or_null_are_caught():
    problems = ledger_problems(BOUND_CLAIMS, {"ch": BOUND})
    by_row = {r: [p for p in problems if p.startswith(r + ":")] for r in (f"C001-{i}" for i in range(1, 8))}
    assert by_row["C001-1"] == [] and by_row["C001-2"] == []
    assert by_row["C001-3"] == ["C001-3: no null assert tagged '# C001-3 null' in a check cell of its section"]
    assert any("no evidence assert" in p for p in by_row["C001-4"])  # a sanity check is not evidence
    for row, reason in (("C001-5", "itself"), ("C001-5", "None"), ("C001-6", "literals"), ("C001-7", "'or'")):
        assert any(reason in p for p in by_row[row]), (row, by_row[row])


@pytest.mark.parametrize("test, caught", [
    ("x == x", "itself"), ("f(x) <= f(x)", "itself"), ("x is not None", "None"), ("True", "literals"),
    ("len([0])", "literals"), ("np.isfinite(0.0)", "literals"), ("value is None or value", "'or'"),
    ("x > 0 or 1", "'or'"), ("err < 1e-2", None), ("np.isfinite(err)", None), ("a < b < c", None),
    ("abs(share - null) > 3 * se", None),
])
def test_vacuous_asserts_are_recognised(test, caught):
    import ast
    reason = vacuous_reason(ast.parse(f"assert {test}").body[0].test)
    assert (reason is None) if caught is None else (caught in reason), reason


def test_the_vacuous_copy_rewrites_every_check_assert():
    copy = vacuous_copy(BOUND)
    tagged = bound_asserts(code_cells(copy)[0].source)
    assert tagged and all(b.vacuous for b in tagged)
    assert ledger_problems(BOUND_CLAIMS, {"ch": copy}) and "assert share == share  # C001-1" in copy


def test_a_check_cell_that_only_prints_is_caught():
    assert len(check_cells_that_only_print(NOTEBOOK)) == 1

"""Each MyST notebook in notebooks/ has a paired .ipynb with the same cells and no outputs.

The .md file is the source of truth; run ``make sync`` after editing it. This test only checks,
it never rewrites a file.
"""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MARKDOWN = sorted(NOTEBOOKS.glob("*.md"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_notebook_is_a_pair():
    assert MARKDOWN, "no notebooks found"
    md_stems = {p.stem for p in MARKDOWN}
    ipynb_stems = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert md_stems == ipynb_stems, f"unpaired: {sorted(md_stems ^ ipynb_stems)} (run make sync)"


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(md):
    text = jupytext.read(md)
    paired = jupytext.read(md.with_suffix(".ipynb"))
    assert text.metadata.get("jupytext", {}).get("formats") == "ipynb,md:myst"
    assert _cells(text) == _cells(paired), f"{md.name} and its .ipynb differ: run make sync"
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{md.stem}.ipynb is committed with outputs"

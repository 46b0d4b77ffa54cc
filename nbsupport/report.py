"""What a chapter prints: glued numbers, tables with stable ids, labelled checks.

One copy of the page helpers every chapter uses, so that two builds print the same text: a glued
number is a plain Python scalar (``{glue:text}`` cannot format a NumPy scalar), a table carries a
fixed id instead of pandas' random one and no memory-address repr, and a check prints one line
naming the ledger rows it supports.
"""

from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["glue_number", "format_p", "table_html", "show_table", "check"]


def glue_number(key: str, value) -> None:
    """Glue a measured number for ``{glue:text}`` in the prose, without displaying it.

    Parameters
    ----------
    key : str
        The glue key, unique in the book (chapters prefix theirs, e.g. ``ch1_``).
    value : int, float, NumPy scalar, 0-d array or 0-d tensor
        Stored as a Python ``int`` or ``float``.
    """
    from myst_nb import glue

    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty str, got {key!r}")
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"value must be a real number, got {value!r}")
    glue(key, value, display=False)


def format_p(p, relation: bool = True) -> str:
    """A p-value as text: three significant digits (so that 0.0496 does not print as 0.05),
    ``"< 0.001"`` below a thousandth (never ``"0.000"``), ``"n/a"`` if it is not finite.

    Parameters
    ----------
    p : float
    relation : bool
        ``True``: the text after "p" in a sentence or a plot label, ``"= 0.0231"`` or ``"< 0.001"``
        (``f"p {format_p(p)}"``); ``False``: a table cell, ``"0.0231"`` or ``"< 0.001"``.
    """
    import math

    p = float(p)
    if not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3g}" if relation else f"{p:.3g}"


def table_html(frame, name: str, formats: Mapping[str, str] | str | None = None, index: bool = True,
               caption: str | None = None) -> str:
    """HTML of a DataFrame with a stable id ``T_<name>`` and the book's table class.

    Parameters
    ----------
    frame : pandas.DataFrame
    name : str
        Identifier of the table, unique on its page: letters, digits, ``_`` and ``-``.
    formats : str or dict of column -> format string, optional
        Passed to ``Styler.format`` (e.g. ``{"share": "{:.1%}"}``).
    index : bool
        Show the index.
    caption : str, optional
    """
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"name must be letters, digits, '_' or '-', got {name!r}")
    if not (hasattr(frame, "style") and hasattr(frame, "columns")):
        raise ValueError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    styler = frame.style.set_uuid(name).set_table_attributes('class="book-table"')
    if formats is not None:
        styler = styler.format(formats)
    if not index:
        styler = styler.hide(axis="index")
    if caption is not None:
        styler = styler.set_caption(caption)
    return styler.to_html()


def show_table(frame, name: str, formats: Mapping[str, str] | str | None = None, index: bool = True,
               caption: str | None = None) -> None:
    """Display a DataFrame as HTML with a stable id (see :func:`table_html` for the arguments).

    The displayed object's plain-text form is a fixed string, so two builds print the same text.
    """
    from IPython.display import HTML, display

    display(HTML(table_html(frame, name, formats, index, caption)))


def check(row_ids: str | Sequence[str], message: str) -> None:
    """Print one labelled line ``check C000-9, C000-10: message``.

    Parameters
    ----------
    row_ids : str or sequence of str
        Ledger row ids the check supports (``"C000-9"``), or a short name for a sanity check.
    message : str
        What held, with the measured value.
    """
    if not isinstance(row_ids, (str, list, tuple)):
        raise ValueError(f"row_ids must be a non-empty str or sequence of str, got {row_ids!r}")
    ids = [row_ids] if isinstance(row_ids, str) else list(row_ids)
    if not ids or not all(isinstance(i, str) and i for i in ids):
        raise ValueError(f"row_ids must be a non-empty str or sequence of str, got {row_ids!r}")
    print(f"check {', '.join(ids)}: {message}")

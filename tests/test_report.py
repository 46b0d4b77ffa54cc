"""nbsupport.report: glued values are plain Python scalars, tables carry stable ids, checks are
labelled lines."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

import nbsupport.report as report


@pytest.mark.parametrize("value, expected", [(np.float64(0.25), 0.25), (torch.tensor(3), 3), (np.array(2.5), 2.5),
                                             (7, 7)])
def test_glue_number_stores_python_scalars(monkeypatch, value, expected):
    seen = {}
    import myst_nb
    monkeypatch.setattr(myst_nb, "glue", lambda key, v, display: seen.update(key=key, value=v, display=display))
    report.glue_number("ch0_x", value)
    assert seen == {"key": "ch0_x", "value": expected, "display": False}
    assert type(seen["value"]) is type(expected)


@pytest.mark.parametrize("key, value, match", [("", 1.0, "key must be"), ("k", "1", "value must be a real"),
                                               ("k", True, "value must be a real")])
def test_glue_number_refuses_bad_input(key, value, match):
    with pytest.raises(ValueError, match=match):
        report.glue_number(key, value)


def test_table_html_is_the_same_text_twice_and_has_its_name():
    frame = pd.DataFrame({"share": [0.1234, 0.5], "n": [3, 4]}, index=["a", "b"])
    first = report.table_html(frame, "ch1-shares", {"share": "{:.1%}"})
    second = report.table_html(frame.copy(), "ch1-shares", {"share": "{:.1%}"})
    assert first == second
    assert 'id="T_ch1-shares"' in first and "12.3%" in first and 'class="book-table"' in first
    assert re.search(r"T_[0-9a-f]{5}\b", first) is None  # no random pandas id
    assert ">a<" not in report.table_html(frame, "t", index=False)
    with pytest.raises(ValueError, match="name must be"):
        report.table_html(frame, "bad name")


def test_show_table_displays_html_without_an_address(monkeypatch):
    shown = []
    import IPython.display
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    report.show_table(pd.DataFrame({"x": [1]}), "t1")
    assert len(shown) == 1 and "0x" not in repr(shown[0]) and 'id="T_t1"' in shown[0].data


def test_check_prints_one_labelled_line(capsys):
    report.check(["C000-9", "C000-10"], "share 0.42 above the null's 0.38")
    report.check("C004-7", "holds")
    assert capsys.readouterr().out.splitlines() == ["check C000-9, C000-10: share 0.42 above the null's 0.38",
                                                   "check C004-7: holds"]
    with pytest.raises(ValueError, match="row_ids must be"):
        report.check([], "x")


def test_format_p_never_prints_zero():
    assert [report.format_p(p) for p in (0.0, 4e-4, 0.001, 0.0234, 0.0496, 0.5, 1.0)] == \
        ["< 0.001", "< 0.001", "= 0.001", "= 0.0234", "= 0.0496", "= 0.5", "= 1"]
    assert report.format_p(float("nan")) == "n/a"
    assert [report.format_p(p, relation=False) for p in (4e-4, 0.0234)] == ["< 0.001", "0.0234"]

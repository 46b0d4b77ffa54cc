"""The shared argument checks accept every kind of real scalar and name the argument otherwise."""

import numpy as np
import pytest
import torch

from nbsupport._validate import integer, pair, real


@pytest.mark.parametrize("value", [0.5, 1, np.float64(0.5), np.float32(0.5), np.int64(2), torch.tensor(0.5),
                                   torch.tensor(3, dtype=torch.int32), np.array(0.5)])
def test_real_accepts_every_real_scalar(value):
    out = real(value, "tau", low=0)
    assert isinstance(out, float) and out == float(np.asarray(value))


@pytest.mark.parametrize("value", [True, np.bool_(True), torch.tensor(True), "0.5", None, 1 + 2j, float("nan"),
                                   float("inf"), torch.ones(1), np.ones(2), torch.tensor(1 + 1j)])
def test_real_refuses_what_is_not_a_finite_real_scalar(value):
    with pytest.raises(ValueError, match="tau must be a finite real number"):
        real(value, "tau")


def test_real_bounds_and_message():
    assert real(0.0, "c", low=0, low_inclusive=True) == 0.0
    with pytest.raises(ValueError, match=r"c must be a finite real number > 0, got 0.0"):
        real(0.0, "c", low=0)
    with pytest.raises(ValueError, match=r"p must be a finite real number >= 0 and < 1, got 1"):
        real(1, "p", low=0, low_inclusive=True, high=1, high_inclusive=False)


@pytest.mark.parametrize("value", [3, np.int64(3), torch.tensor(3), np.array(3)])
def test_integer_accepts_integer_scalars(value):
    assert integer(value, "n", minimum=1) == 3 and type(integer(value, "n")) is int


@pytest.mark.parametrize("value", [3.0, True, torch.tensor(3.0), 0, "3"])
def test_integer_refuses_floats_bools_and_small_values(value):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        integer(value, "n", minimum=1)


def test_pair():
    assert pair(2, "kernel_size") == (2, 2)
    assert pair((2, np.int64(3)), "kernel_size") == (2, 3)
    with pytest.raises(ValueError, match="kernel_size must be an integer or a pair"):
        pair((1, 2, 3), "kernel_size")

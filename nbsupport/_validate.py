"""Argument checks shared by the modules: one place, one wording.

Every check accepts what a reader naturally passes (a Python number, a NumPy scalar, a 0-d tensor
or array) and raises ``ValueError`` naming the argument and saying what was expected otherwise.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["real", "integer", "pair"]


def _scalar(value):
    """``value`` as a Python number if it is a real scalar of any kind, else ``None``."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_complex():
            return None
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.ndim != 0:
            return None
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def real(value, name: str, *, low: float | None = None, low_inclusive: bool = False,
         high: float | None = None, high_inclusive: bool = True) -> float:
    """A finite real scalar within optional bounds, as a Python ``float``.

    Parameters
    ----------
    value : int, float, NumPy scalar, 0-d tensor or array
    name : str
        The argument's name, used in the error message.
    low, high : float, optional
        Bounds; ``low_inclusive`` / ``high_inclusive`` say whether they are allowed.

    Raises
    ------
    ValueError
        If ``value`` is not a finite real scalar within the bounds (booleans are refused).
    """
    number = _scalar(value)
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        bounds.append(f"{'<=' if high_inclusive else '<'} {high}")
    expected = "a finite real number" + (f" {' and '.join(bounds)}" if bounds else "")
    ok = number is not None and math.isfinite(number)
    if ok and low is not None:
        ok = number >= low if low_inclusive else number > low
    if ok and high is not None:
        ok = number <= high if high_inclusive else number < high
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(number)


def integer(value, name: str, *, minimum: int | None = None) -> int:
    """An integer scalar (Python, NumPy or 0-d tensor), at least ``minimum``, as a Python ``int``.

    Raises
    ------
    ValueError
        If ``value`` is not an integer (floats such as ``2.0`` and booleans are refused) or is
        below ``minimum``.
    """
    number = _scalar(value)
    if not isinstance(number, int) or (minimum is not None and number < minimum):
        expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def pair(value, name: str, *, minimum: int | None = None) -> tuple[int, int]:
    """An integer or a pair of integers (e.g. a kernel size) as a pair of Python ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a pair of integers, got {value!r}")
        return integer(value[0], name, minimum=minimum), integer(value[1], name, minimum=minimum)
    number = integer(value, name, minimum=minimum)
    return number, number

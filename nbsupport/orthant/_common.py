"""Shared argument handling of the modules of ``nbsupport.orthant`` (polytope, regions,
pattern_law, mc): Gaussian and network arguments and the mass check. Scalars go through
``nbsupport._validate``."""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["TOL", "as_float64", "as_gaussian", "cov_factor", "as_layers", "as_first_layer",
           "MassWarning", "check_mass", "POLYTOPE_OPTIONS", "check_options", "finite_result",
           "operand_scale", "row_norms", "row_exponents"]

#: Relative size below which an eigenvalue, a row norm or a pivot counts as zero.
TOL = 1e-10


def as_float64(value, name):
    """float64 numpy copy of an array-like; torch tensors on any device are detached and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a real array, got {type(value).__name__}: {error}") from None


def as_gaussian(mean, cov, name_mean="mean", name_cov="cov"):
    """Validated float64 mean (d,) and covariance (d, d), symmetric and positive semi-definite."""
    mean = as_float64(mean, name_mean)
    cov = as_float64(cov, name_cov)
    if mean.ndim != 1 or mean.size == 0 or not np.all(np.isfinite(mean)):
        raise ValueError(f"{name_mean} must be a finite 1-D array, got shape {mean.shape}")
    d = mean.size
    if cov.shape != (d, d) or not np.all(np.isfinite(cov)):
        raise ValueError(f"{name_cov} must be a finite ({d}, {d}) array to match {name_mean}, got shape {cov.shape}")
    scale = max(np.abs(cov).max(), np.finfo(float).tiny)
    if np.abs(cov - cov.T).max() > 1e-12 * scale:
        raise ValueError(f"{name_cov} must be symmetric, max |cov - cov.T| = {np.abs(cov - cov.T).max():.3g}")
    lowest = np.linalg.eigvalsh(cov)[0]
    if lowest < -1e-10 * scale:
        raise ValueError(f"{name_cov} must be positive semi-definite, smallest eigenvalue {lowest:.3g}")
    return mean, (cov + cov.T) / 2


def cov_factor(cov):
    """A factor C (d, r) with C C^T = cov, r the numerical rank.

    Only eigenvalues at the level of rounding noise (<= d * eps * largest) are dropped: a small but
    genuine variance (e.g. 1e-11 or 1e-14 of the largest) is kept, so the result does not depend on
    the scale of one direction. The matrix is scaled by a power of 2 first (exact), so that its
    eigen-decomposition neither overflows nor underflows."""
    top = np.abs(cov).max(initial=0.0)
    if top == 0.0:
        return np.zeros((cov.shape[0], 0))
    shift = 2 * (int(np.frexp(top)[1]) // 2)  # even: the square root scales back exactly
    values, vectors = np.linalg.eigh(np.ldexp(cov, -shift))
    keep = values > cov.shape[0] * np.finfo(float).eps * max(values[-1], 0.0)
    return vectors[:, keep] * np.ldexp(np.sqrt(values[keep]), shift // 2)


def row_norms(x):
    """Euclidean norms of the rows of ``x`` (k, n) without overflow or underflow: each row is divided
    by its largest absolute entry before squaring (scale-free, correct from 1e-300 to 1e300)."""
    x = np.asarray(x, dtype=np.float64)
    top = np.abs(x).max(axis=-1, initial=0.0)
    safe = np.where(top > 0, top, 1.0)
    return top * np.sqrt(((x / safe[..., None]) ** 2).sum(axis=-1))


def row_exponents(top):
    """Power-of-2 exponents e (k,) with 2**-e * top in [0.5, 1) (0 where top is 0): dividing a half-space
    row ``G_i x + h_i > 0`` by 2**e_i is exact and leaves the event unchanged, so the rows can be brought
    to unit magnitude before any product is formed (no overflow at 1e200, no underflow at 1e-200)."""
    top = np.asarray(top, dtype=np.float64)
    return np.where(top > 0, np.frexp(np.where(top > 0, top, 1.0))[1], 0)


def operand_scale(G, factor):
    """Per-row magnitude of the products G C (k,): |G_i| |C| (absolute values), the scale of their rounding.

    A row of ``G @ factor`` that is 0 in exact arithmetic (G_i orthogonal to the range of a singular
    covariance) comes out as rounding noise of about 1e-16 times this scale; a row is judged
    constant relative to it (scale-free: the same decision at any scale of ``G`` or ``cov``)."""
    return row_norms(np.abs(G) @ np.abs(factor))


def as_layers(weights, biases):
    """Validated float64 lists of weights (m_l, m_{l-1}) and biases (m_l,)."""
    if not all(isinstance(v, (list, tuple)) for v in (weights, biases)):
        raise ValueError(f"weights and biases must be lists of arrays (one per layer), got "
                         f"{type(weights).__name__} and {type(biases).__name__}")
    if len(weights) != len(biases) or len(weights) < 1:
        raise ValueError(f"weights and biases must be lists of equal length >= 1, got {len(weights)} and {len(biases)}")
    ws = [np.atleast_2d(as_float64(w, f"weights[{l}]")) for l, w in enumerate(weights)]
    bs = [np.atleast_1d(as_float64(b, f"biases[{l}]")) for l, b in enumerate(biases)]
    for l, (w, b) in enumerate(zip(ws, bs)):
        if w.ndim != 2 or w.size == 0:
            raise ValueError(f"weights[{l}] must be a non-empty 2-D array, got shape {w.shape}")
        _finite(w, f"weights[{l}]")
        _finite(b, f"biases[{l}]")
        if b.shape != (w.shape[0],):
            raise ValueError(f"biases[{l}] must have shape ({w.shape[0]},) to match weights[{l}] {w.shape}, "
                             f"got {b.shape}")
        if l > 0 and w.shape[1] != ws[l - 1].shape[0]:
            raise ValueError(f"weights[{l}] must have {ws[l - 1].shape[0]} columns, got shape {w.shape}")
    return ws, bs


def as_first_layer(weight, bias, mean, cov):
    """Validated float64 first layer (m, d), (m,) with m >= 1, and Gaussian (d,), (d, d), all finite."""
    mean, cov = as_gaussian(mean, cov)
    weight = as_float64(weight, "weight")
    bias = as_float64(bias, "bias")
    if weight.ndim != 2 or weight.shape[0] == 0 or weight.shape[1] != mean.size:
        raise ValueError(f"weight must have shape (m, {mean.size}) with m >= 1 to match mean, got {weight.shape}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight, got {bias.shape}")
    _finite(weight, "weight")
    _finite(bias, "bias")
    return weight, bias, mean, cov


def _finite(array, name):
    """ValueError naming ``name`` when ``array`` holds NaN or infinity."""
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array))
        raise ValueError(f"{name} must be finite, got {array.ravel()[bad[0]]} at flat index {bad[0]} "
                         f"({bad.size} non-finite entries)")


def finite_result(array, name, what):
    """ValueError when a computed ``array`` overflowed (inputs finite, products not): names ``name``."""
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} too large: {what} overflows float64 (non-finite values); rescale the input "
                         "(patterns are invariant to scaling each unit's weights and bias by a positive number)")


class MassWarning(RuntimeWarning):
    """A function's total probability is not the mass it should hold (e.g. a support search found less
    than ``1 - eps``, or a full PMF does not sum to 1 within its errors)."""


def check_mass(found, target, err, what, *, at_least=False, at_most=False):
    """Warn (MassWarning) when ``found`` differs from ``target`` by more than 5 errors + 1e-9,
    or exceeds 1 by as much.

    With ``at_least`` only a shortfall counts (a search may find more than it must); with
    ``at_most`` only an excess (a CDF value may be below the mass it sums over)."""
    slack = 5 * err + 1e-9
    short = not at_most and found < target - slack
    over = found > 1 + slack or (not at_least and found > target + slack)
    if short or over or not np.isfinite(found):
        expected = "at least " if at_least else "at most " if at_most else ""
        warnings.warn(f"{what}: total probability {found:.6g}, expected {expected}"
                      f"{target:.6g} (+- {slack:.1e})", MassWarning, stacklevel=3)


POLYTOPE_OPTIONS = ("method", "n_points", "n_rep")


def check_options(options, allowed, caller):
    """Keyword options passed through ``**options``: a ValueError naming any that ``caller`` does not take."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{caller} got unexpected option(s) {', '.join(map(repr, unknown))}; "
                         f"it passes on only {', '.join(map(repr, allowed))}")

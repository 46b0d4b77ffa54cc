r"""Lemma 1 of :cite:t:`chaudhari2025relu`: the region of inputs with a given activation pattern, and
the affine map the network applies there.

Networks are lists ``weights = [W_1, ..., W_L]``, ``biases = [b_1, ..., b_L]`` (float64 numpy, ReLU
after every layer but the last; :func:`mlp_layers` reads them from an ``nn.Sequential``). A unit is
on when its pre-activation is ``> 0`` and off when ``<= 0``; a pattern's code is
:math:`\sum_i a_i 2^i` with unit ``i`` (layers concatenated) as bit ``i`` (:func:`pattern_codes`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy import optimize

from ._common import as_float64, as_layers, cov_factor, finite_result
from .._validate import module, real
from ..patterns import WORD_BITS, pack_patterns

__all__ = ["mlp_layers", "region", "region_rows", "RegionRows", "network_patterns", "standardised",
           "standardised_with_magnitudes", "pattern_codes", "AffineMaps", "affine_maps",
           "output_range", "jacobian_singular_values"]

def mlp_layers(model: torch.nn.Module) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The ``nn.Linear`` layers of an MLP (e.g. :func:`nbsupport.models.mlp`) as float64 numpy lists.

    Parameters
    ----------
    model : nn.Module
        ``Linear, ReLU, ..., Linear`` with biases.

    Returns
    -------
    weights, biases : list of ndarray
    """
    linears = [m for m in module(model).modules() if isinstance(m, torch.nn.Linear)]
    if not linears or any(layer.bias is None for layer in linears):
        raise ValueError("model must contain nn.Linear layers with biases")
    return ([layer.weight.detach().cpu().double().numpy() for layer in linears],
            [layer.bias.detach().cpu().double().numpy() for layer in linears])


def _split(bits, ws):
    sizes = [w.shape[0] for w in ws[:-1]]
    bits = np.asarray(bits.detach().cpu() if isinstance(bits, torch.Tensor) else bits, dtype=bool)
    if bits.shape != (sum(sizes),):
        raise ValueError(f"pattern must have {sum(sizes)} bits (hidden units of all layers), got shape {bits.shape}")
    return np.split(bits, np.cumsum(sizes)[:-1])


def region(weights, biases, pattern) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Lemma 1: the polyhedron of inputs with a given pattern, and the affine map the network applies there.

    Given the pattern :math:`a_1, \dots, a_{L-1}` of the hidden layers, layer :math:`l` sees the
    affine function :math:`h_{l-1}(x) = A_{l-1} x + c_{l-1}` (with :math:`A_0 = I`, :math:`c_0 = 0`),
    its pre-activation is :math:`z_l = W_l A_{l-1} x + W_l c_{l-1} + b_l` and the pattern requires
    :math:`z_l > 0` for the units that are on and :math:`z_l \le 0` for those that are off (a unit
    is on when ``z > 0``, so "off" is a *closed* half-space); then :math:`A_l = \diag(a_l) W_l A_{l-1}`.
    The region may be empty or unbounded. The closed rows matter when a pre-activation is constant
    on the region (e.g. a layer whose inputs are all off and a bias exactly 0): then the constant
    decides the unit, and :func:`polytope_probability` with ``closed=~pattern`` applies that rule.

    Parameters
    ----------
    weights, biases : list of array-like
        The network (see the module docstring).
    pattern : array-like of bool, shape (M,)
        Hidden units of all layers, first layer first.

    Returns
    -------
    G : ndarray, shape (M, d)
    h : ndarray, shape (M,)
        The region is :math:`\{x : G_i x + h_i > 0 \text{ for on units},\ G_i x + h_i \ge 0
        \text{ for off units}\}` (row ``i`` is unit ``i``, sign-flipped when the unit is off).
    J : ndarray, shape (d_out, d)
    c : ndarray, shape (d_out,)
        On the region the network is :math:`x \mapsto J x + c`.
    """
    ws, bs = as_layers(weights, biases)
    rows = region_rows(ws, bs, pattern)
    return rows.G, rows.h, rows.J, rows.c


class RegionRows(NamedTuple):
    """A region's rows and affine map (as :func:`region`) with the magnitudes of their operands.

    ``G_scale`` (M,), ``J_scale`` (d_out,): norms of the rows of the products taken in absolute
    values (``|W_l| |A_{l-1}|``); ``h_scale`` (M,), ``c_scale`` (d_out,): the same for the
    offsets. A row is constant when it is small relative to its own scale (rounding noise of an
    exact 0), never against an absolute threshold, so decisions do not depend on units."""

    G: np.ndarray
    h: np.ndarray
    J: np.ndarray
    c: np.ndarray
    G_scale: np.ndarray
    h_scale: np.ndarray
    J_scale: np.ndarray
    c_scale: np.ndarray


def region_rows(ws, bs, pattern, magnitudes=None) -> RegionRows:
    """:func:`region` for validated float64 layers, with operand magnitudes (see :class:`RegionRows`).

    ``magnitudes``: optional ``(|W_1| |C|, |W_1| |mu| + |b_1|)`` of a network standardised by
    :func:`standardised_with_magnitudes` (default: the first layer's own absolute values)."""
    parts = _split(pattern, ws)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, by name
        return _region_rows(ws, bs, parts, magnitudes)


def _region_rows(ws, bs, parts, magnitudes):
    A = c = A_mag = c_mag = None  # the identity map of the input
    G, h, G_mag, h_mag = [], [], [], []
    for l, (w, b, a) in enumerate(zip(ws[:-1], bs[:-1], parts)):
        if A is None:
            z_A, z_c = w, b
            z_Am, z_cm = (np.abs(w), np.abs(b)) if magnitudes is None else magnitudes
        else:
            z_A, z_c = w @ A, w @ c + b
            z_Am, z_cm = np.abs(w) @ A_mag, np.abs(w) @ c_mag + np.abs(b)
        s = np.where(a, 1.0, -1.0)
        G.append(s[:, None] * z_A)
        h.append(s * z_c)
        G_mag.append(np.linalg.norm(z_Am, axis=1))
        h_mag.append(z_cm)
        A, c, A_mag, c_mag = a[:, None] * z_A, a * z_c, a[:, None] * z_Am, a * z_cm
    J, c_out = ws[-1] @ A, ws[-1] @ c + bs[-1]
    rows = RegionRows(np.concatenate(G), np.concatenate(h), J, c_out, np.concatenate(G_mag),
                      np.concatenate(h_mag), np.linalg.norm(np.abs(ws[-1]) @ A_mag, axis=1),
                      np.abs(ws[-1]) @ c_mag + np.abs(bs[-1]))
    finite_result(rows.G_scale, "weights", "the region's rows")
    finite_result(rows.J_scale, "weights", "the region's affine map")
    return rows


def standardised(ws, bs, mean, cov):
    """The network in the coordinates u of x = mean + C u, u ~ N(0, I_r): first layer W C, W mean + b."""
    ws_u, bs_u, _ = standardised_with_magnitudes(ws, bs, mean, cov)
    return ws_u, bs_u


def standardised_with_magnitudes(ws, bs, mean, cov):
    """:func:`standardised` plus the first layer's operand magnitudes ``(|W| |C|, |W| |mean| + |b|)``."""
    factor = cov_factor(cov)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, by name
        w0, b0 = ws[0] @ factor, ws[0] @ mean + bs[0]
        magnitudes = (np.abs(ws[0]) @ np.abs(factor), np.abs(ws[0]) @ np.abs(mean) + np.abs(bs[0]))
    finite_result(magnitudes[0], "weights", "weights[0] times the covariance factor")
    finite_result(magnitudes[1], "biases", "weights[0] @ mean + biases[0]")
    return [w0] + ws[1:], [b0] + bs[1:], magnitudes


def network_patterns(weights, biases, x) -> np.ndarray:
    """Hidden-unit patterns ``1(z > 0)`` of all layers, concatenated, for inputs ``x`` of shape (N, d) -> (N, M) bool."""
    ws, bs = as_layers(weights, biases)
    h = np.atleast_2d(as_float64(x, "x"))
    bits = []
    for w, b in zip(ws[:-1], bs[:-1]):
        z = h @ w.T + b
        bits.append(z > 0)
        h = np.maximum(z, 0)
    return np.concatenate(bits, axis=1)


def pattern_codes(patterns) -> np.ndarray:
    r"""Codes :math:`\sum_i a_i 2^i` of bool patterns (unit ``i`` is bit ``i``), the layout of :func:`pattern_pmf`.

    Parameters
    ----------
    patterns : array-like of bool, shape (N, M) or (M,)

    Returns
    -------
    ndarray, shape (N,) (or a 0-d array for one pattern)
        ``int64`` for ``M <= 62``; otherwise an ``object`` array of Python ints (any width), the
        same numbers as ``Support.codes``.
    """
    bits = np.asarray(patterns.detach().cpu() if isinstance(patterns, torch.Tensor) else patterns)
    if bits.ndim not in (1, 2) or (bits.size and not np.isin(bits, (0, 1)).all()):
        raise ValueError(f"patterns must be a 1-D or 2-D array of bools / 0-1 values, got shape {bits.shape}")
    single = bits.ndim == 1
    words = pack_patterns(torch.from_numpy(np.atleast_2d(bits).astype(bool))).numpy()
    if bits.shape[-1] <= 62:
        codes = words[:, 0]
    else:  # word j holds bits 63 j ... 63 j + 62: Python ints of any width
        codes = np.array([sum(int(w) << (WORD_BITS * j) for j, w in enumerate(row)) for row in words]
                         + [None], dtype=object)[:-1]
    return codes[0] if single else codes


class AffineMaps(NamedTuple):
    """Distinct affine maps :math:`x \\mapsto J x + c` of a set of regions, from :func:`affine_maps`.

    Attributes
    ----------
    J : ndarray, shape (K, d_out, d)
    c : ndarray, shape (K, d_out)
    probs : ndarray, shape (K,)
        Summed probabilities of the regions that realise each map, largest first.
    inverse : ndarray, int64, shape (N,)
        Map index of each input pattern.
    """

    J: np.ndarray
    c: np.ndarray
    probs: np.ndarray
    inverse: np.ndarray


def affine_maps(weights, biases, patterns, probs=None, *, atol: float = 1e-9) -> AffineMaps:
    r"""Group regions by the affine map the network applies on them: the law of the random affine function.

    Distinct patterns can realise the same map :math:`(J_a, c_a)` (e.g. every pattern whose last
    hidden layer is all off gives the constant map :math:`x \mapsto b_L`), so the law of the
    function is the pattern PMF pushed forward through :math:`a \mapsto (J_a, c_a)`.

    Parameters
    ----------
    weights, biases : list of array-like
    patterns : array-like of bool, shape (N, M)
    probs : array-like, shape (N,), optional
        Pattern probabilities (default: all 1, i.e. counts).
    atol : float
        Two maps are the same when every entry of ``(J, c)`` agrees within ``atol`` times the largest
        entry (at least 1).

    Returns
    -------
    AffineMaps
    """
    ws, bs = as_layers(weights, biases)
    patterns = np.atleast_2d(np.asarray(patterns, dtype=bool))
    probs = np.ones(len(patterns)) if probs is None else as_float64(probs, "probs")
    if probs.shape != (len(patterns),):
        raise ValueError(f"probs must have shape ({len(patterns)},) to match patterns, got {probs.shape}")
    atol = real(atol, "atol")
    flat = np.array([np.concatenate([J.ravel(), c]) for _, _, J, c in (region(ws, bs, bits) for bits in patterns)])
    flat = flat.reshape(len(patterns), -1)
    scale = max(1.0, float(np.abs(flat).max(initial=0.0)))
    keys = np.round(flat / (atol * scale)).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    total = np.bincount(inverse, weights=probs, minlength=len(first))
    order = np.argsort(-total, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    d_out = ws[-1].shape[0]
    chosen = flat[first[order]]
    return AffineMaps(chosen[:, :-d_out].reshape(len(order), d_out, -1), chosen[:, -d_out:], total[order],
                      rank[inverse].astype(np.int64))


def output_range(G, h, direction) -> tuple[float, float]:
    r"""Range of :math:`v^\top x` over the closed polyhedron :math:`\{x : G x + h \ge 0\}`, by two linear programs.

    Parameters
    ----------
    G : array-like, shape (k, d)
    h : array-like, shape (k,)
    direction : array-like, shape (d,)
        :math:`v`, e.g. one row of a region's Jacobian (add the region's :math:`c` for the output).
        For a full-dimensional region the closure has the same infimum and supremum.

    Returns
    -------
    lo, hi : float
        ``-inf`` / ``inf`` where unbounded, ``nan`` for an empty polyhedron (scipy's HiGHS solver).
    """
    G, h, v = as_float64(G, "G"), as_float64(h, "h"), as_float64(direction, "direction")
    if G.ndim != 2 or h.shape != G.shape[:1] or v.shape != G.shape[1:]:
        raise ValueError(f"G (k, d), h (k,) and direction (d,) must match, got {G.shape}, {h.shape} and {v.shape}")
    ends = []
    for sign in (1.0, -1.0):
        res = optimize.linprog(sign * v, A_ub=-G, b_ub=h, bounds=(None, None), method="highs")
        if res.status == 2:
            return float("nan"), float("nan")
        ends.append(sign * res.fun if res.status == 0 else -sign * np.inf)
    return ends[0], ends[1]


def jacobian_singular_values(weights, biases, patterns) -> np.ndarray:
    r"""Singular values of the Jacobian :math:`J_a = W_L D_{L-1} W_{L-1} \cdots D_1 W_1` of each region.

    The Jacobian is constant on a region, so under a random input its singular values have the
    discrete law that puts the pattern probability on each region's spectrum.

    Parameters
    ----------
    weights, biases : list of array-like
    patterns : array-like of bool, shape (K, M)

    Returns
    -------
    ndarray, shape (K, min(d_out, d)), descending per row
    """
    ws, bs = as_layers(weights, biases)
    return np.array([np.linalg.svd(region(ws, bs, bits)[2], compute_uv=False) for bits in np.atleast_2d(patterns)])

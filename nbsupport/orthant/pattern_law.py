r"""The law of the activation pattern under a Gaussian (or Gaussian-mixture) input, and what follows
from it: the first-layer PMF, a sample-free support search over regions, output CDFs and class
probabilities :cite:p:`chaudhari2025relu`. Every probability is a sum of
``nbsupport.orthant.polytope.polytope_probability`` values over the regions of
``nbsupport.orthant.regions``; every function that returns a mass checks it (:class:`MassWarning`).
"""

from __future__ import annotations

import heapq
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ._common import (POLYTOPE_OPTIONS, TOL, MassWarning, as_first_layer, as_float64, as_gaussian,
                              as_layers, check_mass, check_options, cov_factor, operand_scale,
                              row_exponents)
from .._validate import integer, numpy_rng, real
from ..patterns import unpack_codes
from .polytope import ORTHANT_POLYTOPE_FROM, orthant_probability, standard_polytope
from .regions import network_patterns, pattern_codes, region_rows, standardised_with_magnitudes

__all__ = ["MAX_FULL_PMF_UNITS", "MassWarning", "pattern_pmf", "PatternPMF", "pattern_pmf_with_err",
           "mixture_pattern_pmf", "mixture_pattern_pmf_with_err", "Support", "support_search",
           "mixture_support_search", "output_cdf", "mixture_output_cdf", "class_probabilities"]

#: Largest first layer for which :func:`pattern_pmf` enumerates all ``2**m`` patterns.
MAX_FULL_PMF_UNITS = 20


def _signs(m):
    """(2**m, m) matrix of +-1: row ``code`` has +1 at the bits of ``code``."""
    return 2.0 * unpack_codes(torch.arange(2**m), m).numpy() - 1.0


class PatternPMF(NamedTuple):
    r"""Result of :func:`pattern_pmf_with_err` and :func:`mixture_pattern_pmf_with_err`.

    Attributes
    ----------
    pmf : ndarray, float64, shape (n_patterns,)
        One entry per pattern (``n_patterns`` = ``2**m``), index :math:`\sum_i a_i 2^i` (unit
        ``i`` is bit ``i``).
    err : ndarray, float64, shape (n_patterns,)
        Standard errors of ``pmf``.
    """

    pmf: np.ndarray
    err: np.ndarray


def _no_return_err(options, caller):
    if "return_err" in options:
        raise ValueError(f"{caller} always returns the PMF alone; return_err is not an argument: "
                         f"{caller}_with_err returns (pmf, err)")


def pattern_pmf(weight, bias, mean, cov, *, method: str = "auto", rng=0, **options) -> np.ndarray:
    r"""PMF of the first-layer pattern :math:`A = \1(W x + b > 0)`, :math:`x \sim \mathcal N(\mu, \Sigma)`.

    :math:`P(A = a) = P(S z > 0)` with :math:`z = Wx + b` and :math:`S = \diag(2a - 1)`: an orthant
    probability of :math:`\mathcal N(S(W\mu + b), S W \Sigma W^\top S)`. When that covariance is
    non-singular (``m <= d`` and full rank) and ``m`` is below
    ``ORTHANT_POLYTOPE_FROM`` (12), ``method="auto"`` uses scipy's route
    of :func:`orthant_probability`; otherwise (``m > d``: the covariance has rank at most ``d`` and
    many patterns are impossible; or ``m >= 12``) it integrates over the input-space polytope of
    Lemma 1 with :func:`polytope_probability` (``n_points`` Sobol' points per replicate, default
    1024), where impossible patterns come out as exactly 0. The cost is then proportional to
    ``2**m * n_points * n_rep`` integrand evaluations (an orthant call per pattern at its own
    default of 2**16 points would cost 64 times more).

    Parameters
    ----------
    weight : array-like, shape (m, d)
    bias : array-like, shape (m,)
    mean : array-like, shape (d,)
    cov : array-like, shape (d, d), symmetric positive semi-definite
    method : {"auto", "orthant", "polytope"}
    rng : int, numpy or torch Generator, default 0
        Deterministic by default; pass another seed or a Generator for independent runs (``None``
        is refused: the global RNG and fresh entropy are never used).
    **options
        Passed on: ``n_rep`` to either route, ``n_points`` to ``polytope``; for ``orthant``,
        ``orthant_method`` (:func:`orthant_probability`'s ``method``: ``"auto"``, ``"scipy"`` or
        ``"polytope"``) and that route's options (``abseps``/``maxpts`` for scipy, ``n_points``
        for the polytope route). Any other raises ``ValueError`` naming it.

    Warns
    -----
    MassWarning
        When the PMF does not sum to 1 within five standard errors.

    Returns
    -------
    pmf : ndarray, float64, shape (2**m,)
        Index :math:`\sum_i a_i 2^i` (unit ``i`` is bit ``i``). The standard errors come with
        :func:`pattern_pmf_with_err` (same arguments, same numbers).
    """
    _no_return_err(options, "pattern_pmf")
    return pattern_pmf_with_err(weight, bias, mean, cov, method=method, rng=rng, **options).pmf


def pattern_pmf_with_err(weight, bias, mean, cov, *, method: str = "auto", rng=0, **options) -> PatternPMF:
    r""":func:`pattern_pmf` with the standard error of every entry.

    Parameters
    ----------
    weight, bias, mean, cov, method, rng, **options
        As in :func:`pattern_pmf`.

    Returns
    -------
    PatternPMF
        ``(pmf, err)``, both float64 of shape (2**m,); ``pmf`` is :func:`pattern_pmf`'s result for
        the same arguments.
    """
    weight, bias, mean, cov = as_first_layer(weight, bias, mean, cov)
    m = weight.shape[0]
    if m > MAX_FULL_PMF_UNITS:
        raise ValueError(f"weight has m = {m} units: a full PMF has 2**m entries, limit m <= {MAX_FULL_PMF_UNITS}; "
                         "use support_search for the most probable patterns")
    # unit i scaled by a power of 2 (exact; its pattern bit is unchanged): no overflow or underflow later
    shift = row_exponents(np.maximum(np.abs(weight).max(axis=1), np.abs(bias)))
    weight, bias = np.ldexp(weight, -shift[:, None]), np.ldexp(bias, -shift)
    cov_z = weight @ cov @ weight.T
    values = np.linalg.eigvalsh(cov_z)
    nonsingular = values[0] > TOL * max(values[-1], 0.0)
    if method == "auto":
        method = "orthant" if nonsingular and m < ORTHANT_POLYTOPE_FROM else "polytope"
    if method not in ("orthant", "polytope"):
        raise ValueError(f"method must be 'auto', 'orthant' or 'polytope', got {method!r}")
    check_options(options, ("n_rep", "abseps", "maxpts", "n_points", "orthant_method") if method == "orthant"
                  else ("n_rep", "n_points"), f"pattern_pmf(method={method!r})")
    signs = _signs(m)
    rng = numpy_rng(rng)
    if method == "orthant":
        if not nonsingular:
            raise ValueError("method='orthant' needs a non-singular covariance of W x (m <= d, full rank); "
                             "use method='polytope'")
        route = options.pop("orthant_method", "auto")
        results = [orthant_probability(s * (weight @ mean + bias), cov_z * np.outer(s, s), method=route, rng=child,
                                       **options)
                   for s, child in zip(signs, rng.spawn(len(signs)))]
        pmf, err = np.array(results).T
    elif method == "polytope":
        factor = cov_factor(cov)
        a, c = weight @ factor, weight @ mean + bias
        scales = dict(scale=operand_scale(weight, factor), offset_scale=np.abs(weight) @ np.abs(mean) + np.abs(bias))
        results = [standard_polytope(s[:, None] * a, s * c, closed=s < 0, rng=child, **scales, **options)
                   for s, child in zip(signs, rng.spawn(len(signs)))]
        pmf, err = (np.array([r[i][0] for r in results]) for i in (0, 1))
    check_mass(float(pmf.sum()), 1.0, float(np.sqrt((err**2).sum())), "pattern_pmf")
    return PatternPMF(pmf, err)


def _mixture(weights, means, covs, name="mix_weights"):
    """Validated mixture weights (K,), with one mean and one covariance per component."""
    weights = as_float64(weights, name)
    if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0) or abs(weights.sum() - 1) > 1e-9:
        raise ValueError(f"{name} must be a 1-D array of non-negative mixture weights summing to 1, got {weights}")
    if len(means) != len(weights) or len(covs) != len(weights):
        raise ValueError(f"means and covs must have one entry per weight ({len(weights)}), "
                         f"got {len(means)} and {len(covs)}")
    return weights


def mixture_pattern_pmf(weight, bias, mix_weights, means, covs, *, rng=0, **options) -> np.ndarray:
    r"""First-layer pattern PMF under a Gaussian mixture :math:`\sum_k \pi_k \mathcal N(\mu_k, \Sigma_k)`.

    The weighted sum :math:`\sum_k \pi_k P_k(A = a)` of :func:`pattern_pmf` per component (errors
    add in quadrature).

    Parameters
    ----------
    weight, bias
        As in :func:`pattern_pmf`.
    mix_weights : array-like, shape (K,)
        Mixture weights, >= 0, summing to 1 (``mix_weights``, as in :func:`mixture_support_search`:
        ``weights`` names a network's layer matrices elsewhere in this package).
    means : array-like, shape (K, d)
    covs : array-like, shape (K, d, d)
    rng, **options
        As in :func:`pattern_pmf` (one independent stream per component).

    Returns
    -------
    pmf : ndarray, float64, shape (2**m,)
        The standard errors come with :func:`mixture_pattern_pmf_with_err`.
    """
    _no_return_err(options, "mixture_pattern_pmf")
    return mixture_pattern_pmf_with_err(weight, bias, mix_weights, means, covs, rng=rng, **options).pmf


def mixture_pattern_pmf_with_err(weight, bias, mix_weights, means, covs, *, rng=0, **options) -> PatternPMF:
    r""":func:`mixture_pattern_pmf` with the standard error of every entry (components' errors in
    quadrature).

    Returns
    -------
    PatternPMF
        ``(pmf, err)``, both float64 of shape (2**m,).
    """
    weights = _mixture(mix_weights, means, covs, "mix_weights")
    rng = numpy_rng(rng)
    parts = [pattern_pmf_with_err(weight, bias, mu, cov, rng=child, **options)
             for mu, cov, child in zip(means, covs, rng.spawn(len(weights)))]
    pmf = sum(w * p for w, (p, _) in zip(weights, parts))
    err = np.sqrt(sum((w * e) ** 2 for w, (_, e) in zip(weights, parts)))
    return PatternPMF(pmf, err)


class Support(NamedTuple):
    """Result of :func:`support_search`, most probable region first.

    Attributes
    ----------
    patterns : ndarray, bool, shape (K, M)
    probs : ndarray, shape (K,)
    errors : ndarray, shape (K,)
        Standard errors of ``probs``.
    n_evaluated : int
        Polytope probabilities computed (found regions plus rejected or unexpanded neighbours).
    """

    patterns: np.ndarray
    probs: np.ndarray
    errors: np.ndarray
    n_evaluated: int

    @property
    def codes(self) -> list[int]:
        r"""Pattern codes :math:`\sum_i a_i 2^i` as Python ints (any width)."""
        return [int(c) for c in np.atleast_1d(pattern_codes(np.atleast_2d(self.patterns)))]


def _check_support(support, ws):
    """ValueError unless ``support`` is a Support whose patterns have one bit per hidden unit of ``ws``."""
    n_units = sum(w.shape[0] for w in ws[:-1])
    patterns = getattr(support, "patterns", None)
    if patterns is None or np.ndim(patterns) != 2 or np.shape(patterns)[1] != n_units:
        raise ValueError(f"support must be a Support with patterns of shape (K, {n_units}), got "
                         f"{type(support).__name__} with patterns of shape {np.shape(patterns)}")


def _unit_layer_bounds(ws):
    return np.cumsum([0] + [w.shape[0] for w in ws[:-1]])


def _neighbour(ws, bs, bits, unit, magnitudes):
    r"""The pattern on the other side of ``unit``'s boundary, or None when that unit is constant there.

    Crossing the hyperplane :math:`g(u) = 0` of one unit flips it; a unit in the same or a later
    layer whose pre-activation (under the new pattern) is an exact multiple :math:`\lambda g` of
    that affine function is 0 on the whole boundary, so it flips together with it: it is on across
    the boundary iff :math:`\lambda g > 0` there (a multiple with :math:`\lambda = 0`, a constant 0,
    stays off). A unit whose pre-activation is another constant is decided by its sign. Every other
    unit keeps its sign by continuity. Without such degenerate units (generic biases) this is the
    single flip; with them (zero biases, dead layers: regions that are cones) it is the true
    neighbour across the facet, which a single flip would miss.

    "Constant", "zero" and "multiple" are judged relative to each row's own scale (the
    magnitudes of its operands, ``magnitudes`` of the first layer), never against an absolute
    threshold: the search gives the same regions at any scale of the input or the weights."""
    bounds = _unit_layer_bounds(ws)
    layer = int(np.searchsorted(bounds, unit, side="right")) - 1
    new = np.array(bits, dtype=bool)
    new[unit] = not new[unit]
    side = 1.0 if new[unit] else -1.0
    A = c = g = A_mag = c_mag = None
    for l, (w, b) in enumerate(zip(ws[:-1], bs[:-1])):
        if A is None:
            z_A, z_c = w, b
            z_Am, z_cm = magnitudes
        else:
            z_A, z_c = w @ A, w @ c + b
            z_Am, z_cm = np.abs(w) @ A_mag, np.abs(w) @ c_mag + np.abs(b)
        lo, hi = bounds[l], bounds[l + 1]
        a_norm, a_scale = np.linalg.norm(z_A, axis=1), np.linalg.norm(z_Am, axis=1)
        # constant: the input part is rounding noise of its operands or negligible beside the offset
        flat = a_norm <= TOL * np.maximum(a_scale, np.abs(z_c))
        if l == layer:
            if flat[unit - lo]:
                return None  # a constant pre-activation has no boundary to cross
            g = np.append(z_A[unit - lo], z_c[unit - lo])
        if l >= layer:
            rows = np.column_stack([z_A, z_c])
            row_norm = np.linalg.norm(rows, axis=1)
            lam = rows @ g / (g @ g)
            resid = np.linalg.norm(rows - lam[:, None] * g, axis=1)
            zero = (a_norm <= TOL * a_scale) & (np.abs(z_c) <= 1e-12 * z_cm)
            proportional = zero | (resid <= 1e-9 * row_norm)
            constant = ~proportional & flat
            seg = new[lo:hi]
            seg[proportional] = ~zero[proportional] & (lam[proportional] * side > 0)
            seg[constant] = z_c[constant] > 0
            if l == layer:
                seg[unit - lo] = side > 0
        a = new[lo:hi]
        A, c, A_mag, c_mag = a[:, None] * z_A, a * z_c, a[:, None] * z_Am, a * z_cm
    return tuple(bool(v) for v in new)


#: Principal axes tried as starting points when the mean's own region has probability 0.
_N_START_AXES = 16


def support_search(weights, biases, mean, cov, *, eps: float = 1e-3, max_regions: int = 10_000,
                   rng=0, **options) -> Support:
    r"""Sample-free support of the pattern distribution: best-first search over regions.

    Start at the region of the mean; repeatedly take the most probable region found so far and
    compute the probabilities of its neighbours across each unit's boundary (one flipped unit,
    plus the units whose pre-activation vanishes on that whole boundary: see below). The regions
    of positive probability are full-dimensional, and crossing facets connects all of them, so
    every one is reached. Impossible neighbours have probability exactly 0 and are dropped.
    Stop when the regions taken hold at least ``1 - eps`` of the mass (then the regions never
    taken hold at most ``eps``), when no candidate is left, or after ``max_regions`` regions.

    Boundary convention: a unit is on when its pre-activation is ``> 0`` and off when ``<= 0``.
    A pre-activation that is constant on a region (inputs all off and a zero bias, as in any
    zero-bias network) decides its unit directly, and a unit whose pre-activation is a multiple
    of a boundary's affine function flips with it, so zero-bias networks, whose regions are cones
    meeting at one point, are searched correctly. When the mean lies where its region has
    probability 0 (e.g. the apex of those cones) the search starts from the regions of
    :math:`\mu \pm` the leading principal axes of ``cov`` (scaled by their standard deviations),
    and only if all of those are null from the patterns of 256 fixed Gaussian draws.

    Parameters
    ----------
    weights, biases : list of array-like
    mean, cov : array-like, shapes (d,) and (d, d)
    eps : float
        Mass that may stay unfound, in [0, 1). With ``eps = 0`` every region with positive
        computed probability is found.
    max_regions : int
    rng : int, numpy or torch Generator, default 0
        Randomises the QMC integrals and, when needed, the fallback starting draws (deterministic
        by default; ``None`` is refused).
    **options
        Passed to :func:`polytope_probability` (``method``, ``n_points``, ``n_rep``).

    Returns
    -------
    Support

    Warns
    -----
    MassWarning
        When the regions found hold less than ``1 - eps`` (beyond five standard errors), e.g.
        because ``max_regions`` stopped the search, or more than 1.
    """
    ws, bs = as_layers(weights, biases)
    mean, cov = as_gaussian(mean, cov)
    if ws[0].shape[1] != mean.size:
        raise ValueError(f"mean must have {ws[0].shape[1]} entries to match weights[0], got {mean.size}")
    if len(ws) < 2:
        raise ValueError("weights must describe at least one hidden layer (>= 2 linear layers)")
    eps = real(eps, "eps")
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    max_regions = integer(max_regions, "max_regions", minimum=1)
    check_options(options, POLYTOPE_OPTIONS, "support_search")
    if not np.any(cov):
        raise ValueError("cov must not be all zero (a point mass has one pattern, "
                         "network_patterns(weights, biases, mean[None]), with probability 1)")
    ws_u, bs_u, magnitudes = standardised_with_magnitudes(ws, bs, mean, cov)
    r = ws_u[0].shape[1]
    rng = numpy_rng(rng)
    seen, heap = set(), []
    counter = {"evaluated": 0, "tie": 0}

    def push(bits):
        if bits is None or bits in seen:
            return
        seen.add(bits)
        on = np.array(bits)
        rows = region_rows(ws_u, bs_u, on, magnitudes)
        p, e = standard_polytope(rows.G, rows.h, closed=~on, rng=rng, scale=rows.G_scale,
                                 offset_scale=rows.h_scale, **options)
        counter["evaluated"] += 1
        if p[0] > 0:
            heapq.heappush(heap, (-float(p[0]), counter["tie"], bits, float(e[0])))
            counter["tie"] += 1

    def patterns_at(u):
        return [tuple(bool(v) for v in row) for row in network_patterns(ws_u, bs_u, u)]

    push(patterns_at(np.zeros((1, r)))[0])
    if not heap:  # the mean's region is null (a boundary point, e.g. the apex of zero-bias cones)
        axes = np.eye(r)[::-1][:_N_START_AXES]  # the factor's columns come in ascending variance
        for bits in patterns_at(np.concatenate([axes, -axes])):
            push(bits)
    if not heap:
        for bits in patterns_at(rng.spawn(1)[0].standard_normal((256, r))):
            push(bits)
    found, mass = [], 0.0
    # eps = 0 empties the queue: with QMC errors the running sum may pass 1 before the last regions
    while heap and (eps == 0 or mass < 1 - eps) and len(found) < max_regions:
        neg_p, _, bits, err = heapq.heappop(heap)
        found.append((bits, -neg_p, err))
        mass += -neg_p
        for i in range(len(bits)):
            push(_neighbour(ws_u, bs_u, bits, i, magnitudes))
    found.sort(key=lambda f: -f[1])
    n_units = sum(w.shape[0] for w in ws[:-1])
    patterns = np.array([f[0] for f in found], dtype=bool).reshape(len(found), n_units)
    probs, errors = np.array([f[1] for f in found]), np.array([f[2] for f in found])
    what = "support_search" + (f" (stopped at max_regions={max_regions})" if len(found) >= max_regions else "")
    check_mass(float(probs.sum()), 1 - eps, float(np.sqrt((errors**2).sum())), what, at_least=True)
    return Support(patterns, probs, errors, counter["evaluated"])


def mixture_support_search(weights, biases, mix_weights, means, covs, *, eps: float = 1e-3,
                           max_regions: int = 10_000, rng=0, **options) -> tuple[Support, list[Support]]:
    r""":func:`support_search` under a Gaussian mixture :math:`\sum_j \pi_j \mathcal N(\mu_j, \Sigma_j)`.

    Each component is searched to mass ``1 - eps``; the merged support gives pattern :math:`a`
    the probability :math:`\sum_j \pi_j P_j(A = a)` (errors in quadrature), so the mass it
    misses is at most ``eps`` as well.

    Parameters
    ----------
    weights, biases : list of array-like
        The network.
    mix_weights : array-like, shape (K,)
        Mixture weights, >= 0, summing to 1.
    means : array-like, shape (K, d)
    covs : array-like, shape (K, d, d)
    eps, max_regions, rng, **options
        As in :func:`support_search` (``max_regions`` per component).

    Returns
    -------
    merged : Support
        Most probable first; ``n_evaluated`` counts all components' polytopes.
    components : list of Support
        One per component (what :func:`mixture_output_cdf` needs).

    Warns
    -----
    MassWarning
        Per component as :func:`support_search`, and for the merged support when it holds less
        than ``1 - eps`` (beyond five standard errors).
    """
    mix_weights = _mixture(mix_weights, means, covs, name="mix_weights")
    check_options(options, POLYTOPE_OPTIONS, "mixture_support_search")
    rng = numpy_rng(rng)
    components = [support_search(weights, biases, mu, cov, eps=eps, max_regions=max_regions, rng=child, **options)
                  for mu, cov, child in zip(means, covs, rng.spawn(len(mix_weights)))]
    merged: dict[tuple, list[float]] = {}
    for pi, sup in zip(mix_weights, components):
        for bits, p, e in zip(sup.patterns, sup.probs, sup.errors):
            entry = merged.setdefault(tuple(bits), [0.0, 0.0])
            entry[0] += pi * p
            entry[1] += (pi * e) ** 2
    ranked = sorted(merged.items(), key=lambda item: -item[1][0])
    n_units = sum(np.shape(w)[0] for w in weights[:-1])
    support = Support(np.array([k for k, _ in ranked], dtype=bool).reshape(len(ranked), n_units),
                      np.array([v[0] for _, v in ranked]), np.sqrt([v[1] for _, v in ranked]),
                      sum(c.n_evaluated for c in components))
    check_mass(float(support.probs.sum()), 1 - eps, float(np.sqrt((support.errors**2).sum())),
               "mixture_support_search (merged)", at_least=True)
    return support, components


def output_cdf(weights, biases, mean, cov, thresholds, support: Support, *, output: int = 0, rng=0,
               **options) -> tuple[np.ndarray, np.ndarray]:
    r"""CDF of one network output: :math:`P(f(x) \le t) = \sum_a P(x \in R_a,\ J_a x + c_a \le t)`.

    One more half-space per region of ``support`` (a region's output is affine, so the term is a
    polytope probability with one extra row, batched over the thresholds). Each term is an affine
    image of a Gaussian restricted to a polyhedron, which is in general *not* a univariate
    truncated normal.

    Parameters
    ----------
    weights, biases, mean, cov
        As in :func:`support_search`.
    thresholds : array-like, shape (T,)
    support : Support
        The regions to sum over (e.g. ``support_search(..., eps=1e-6)``).
    output : int
        Which output unit.

    Returns
    -------
    cdf, err : ndarray, shape (T,)
        ``err`` combines the standard errors with the mass the support misses
        (``1 - sum(support.probs)``), the largest possible bias.
    """
    ws, bs = as_layers(weights, biases)
    mean, cov = as_gaussian(mean, cov)
    t = np.atleast_1d(as_float64(thresholds, "thresholds"))
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise ValueError(f"thresholds must be a finite non-empty 1-D array, got shape {t.shape}")
    _check_support(support, ws)
    try:
        output = integer(output, "output", minimum=0)
    except ValueError:
        output = -1
    if not 0 <= output < ws[-1].shape[0]:
        raise ValueError(f"output must be an int in [0, {ws[-1].shape[0]}), got {output!r}")
    check_options(options, POLYTOPE_OPTIONS, "output_cdf")
    ws_u, bs_u, magnitudes = standardised_with_magnitudes(ws, bs, mean, cov)
    rng = numpy_rng(rng)
    total, var = np.zeros(len(t)), np.zeros(len(t))
    for bits in support.patterns:
        rows = region_rows(ws_u, bs_u, bits, magnitudes)
        G = np.vstack([rows.G, -rows.J[output]])  # f <= t  <=>  t - J u - c >= 0 (closed, like off units)
        offsets = np.column_stack([np.broadcast_to(rows.h, (len(t), len(rows.h))), t - rows.c[output]])
        offset_scale = np.column_stack([np.broadcast_to(rows.h_scale, offsets[:, :-1].shape),
                                        np.abs(t) + rows.c_scale[output]])
        p, e = standard_polytope(G, offsets, closed=np.append(~bits, True), rng=rng,
                                 scale=np.append(rows.G_scale, rows.J_scale[output]),
                                 offset_scale=offset_scale, **options)
        total += p
        var += e**2
    mass = float(support.probs.sum())
    # a CDF lies in [0, mass of the support]: its top must not exceed that mass beyond the errors
    slack = float(np.sqrt(var.max(initial=0.0) + (support.errors**2).sum()))
    check_mass(float(total.max()), mass, slack, "output_cdf (largest value vs the support's mass)",
               at_most=True)
    missing = max(0.0, 1.0 - mass)
    return total, np.sqrt(var) + missing


def mixture_output_cdf(weights, biases, mix_weights, means, covs, thresholds, components: Sequence[Support], *,
                       output: int = 0, rng=0, **options) -> tuple[np.ndarray, np.ndarray]:
    r"""Output CDF under a Gaussian mixture: :math:`\sum_j \pi_j F_j(t)`, each by :func:`output_cdf`.

    Parameters
    ----------
    weights, biases, mix_weights, means, covs
        As in :func:`mixture_support_search`.
    thresholds : array-like, shape (T,)
    components : list of Support
        One per component, e.g. from :func:`mixture_support_search`.
    output : int

    Returns
    -------
    cdf, err : ndarray, shape (T,)
        ``err`` is the weighted sum of the components' errors (each includes its missing mass).
    """
    mix_weights = _mixture(mix_weights, means, covs, name="mix_weights")
    if len(components) != len(mix_weights):
        raise ValueError(f"components must hold one Support per mixture component ({len(mix_weights)}), "
                         f"got {len(components)}")
    rng = numpy_rng(rng)
    parts = [output_cdf(weights, biases, mu, cov, thresholds, sup, output=output, rng=child, **options)
             for mu, cov, sup, child in zip(means, covs, components, rng.spawn(len(mix_weights)))]
    return sum(pi * c for pi, (c, _) in zip(mix_weights, parts)), sum(pi * e for pi, (_, e) in zip(mix_weights, parts))


def class_probabilities(weights, biases, mean, cov, support: Support, *, rng=0,
                        **options) -> tuple[np.ndarray, np.ndarray]:
    r"""P(argmax of the output = k) for each class k, summed over the regions of ``support``.

    Within region :math:`a` the logits are :math:`J_a x + c_a`; class :math:`k` wins where
    :math:`(J_k - J_j) x + c_k - c_j > 0` for :math:`j < k` and :math:`\ge 0` for :math:`j > k`
    (ties go to the lowest index, as ``argmax`` does; they matter on regions where the logits
    are constant, e.g. behind a dead layer): ``d_out - 1`` more half-spaces.

    Parameters
    ----------
    weights, biases, mean, cov
        As in :func:`support_search`.
    support : Support
        The regions to sum over.
    rng, **options
        As in :func:`support_search`.

    Returns
    -------
    probs, err : ndarray, shape (d_out,)
        ``err`` as in :func:`output_cdf` (standard errors plus the missing mass).
    """
    ws, bs = as_layers(weights, biases)
    mean, cov = as_gaussian(mean, cov)
    check_options(options, POLYTOPE_OPTIONS, "class_probabilities")
    _check_support(support, ws)
    ws_u, bs_u, magnitudes = standardised_with_magnitudes(ws, bs, mean, cov)
    rng = numpy_rng(rng)
    n_out = ws[-1].shape[0]
    total, var = np.zeros(n_out), np.zeros(n_out)
    for bits in support.patterns:
        rows = region_rows(ws_u, bs_u, bits, magnitudes)
        G, h, J, c = rows.G, rows.h, rows.J, rows.c
        for k in range(n_out):
            others = np.arange(n_out) != k
            Gk = np.vstack([G, J[k] - J[others]])
            hk = np.concatenate([h, c[k] - c[others]])
            scale = np.concatenate([rows.G_scale, rows.J_scale[k] + rows.J_scale[others]])
            offset_scale = np.concatenate([rows.h_scale, rows.c_scale[k] + rows.c_scale[others]])
            # ties go to the lowest index, as argmax does: z_k > z_j for j < k, z_k >= z_j for j > k
            closed = np.concatenate([~bits, np.arange(n_out)[others] > k])
            p, e = standard_polytope(Gk, hk, closed=closed, rng=rng, scale=scale,
                                     offset_scale=offset_scale, **options)
            total[k] += p[0]
            var[k] += e[0] ** 2
    check_mass(float(total.sum()), float(support.probs.sum()),
                float(np.sqrt(var.sum() + (support.errors**2).sum())), "class_probabilities")
    missing = max(0.0, 1.0 - float(support.probs.sum()))
    return total, np.sqrt(var) + missing

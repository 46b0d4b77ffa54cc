r"""A ReLU network with Gaussian input as a random affine function: pattern PMF, output law, support.

For :math:`x \sim \mathcal N(\mu, \Sigma)` the activation pattern of a ReLU network is a discrete
random variable :cite:p:`chaudhari2025relu`. Given a pattern, every layer is affine, so the set of
inputs with that pattern is a polyhedron :math:`\{x : G x + h > 0\}` (Lemma 1 of the source) and
its probability is a Gaussian polytope probability. For the first layer alone and at most as many
units as input dimensions it is an orthant probability of a non-singular Gaussian, which
:func:`orthant_probability` computes with scipy's Genz quasi-Monte Carlo :cite:p:`genz1992numerical`.

Everything else rests on one routine, :func:`polytope_probability`: write :math:`x = \mu + C u`
with :math:`C C^\top = \Sigma` of rank :math:`r`, rotate the constraints :math:`G C u > -(G\mu + h)`
to lower-trapezoidal form (a greedy ordering of the rows in the spirit of Genz and Bretz
:cite:p:`genz2009computation` and an LQ decomposition), and
integrate the variables one after another, each over the intersection of the rows whose last
non-zero coefficient it is (Genz's separation of variables). With one effective variable the result
is a closed form; with two it is a one-dimensional integral done by Gauss-Legendre quadrature on
the pieces between the points where the constraints cross (accurate to ~1e-13); with more it is
randomised quasi-Monte Carlo (scrambled Sobol' replicates, error = standard error over replicates).
Empty regions come out as exactly 0 on every route, and any number of constraints is allowed, so a
layer wider than the input (singular pre-activation covariance) needs no special case.

Conventions: a unit is on when its pre-activation is > 0 (``1(z > 0)``); a pattern's code is
:math:`\sum_i a_i 2^i` with unit ``i`` (layers concatenated, first layer first) as bit ``i``.
Networks are given as lists ``weights = [W_1, ..., W_L]``, ``biases = [b_1, ..., b_L]`` (numpy
arrays, ``W_l`` of shape ``(m_l, m_{l-1})``), ReLU after every layer but the last; see
:func:`mlp_layers`. Errors (``err``) are one standard error of the estimate; Monte Carlo functions
take a seed and are reproducible.
"""

from __future__ import annotations

import functools
import heapq
from typing import NamedTuple, Sequence

import numpy as np
import torch
from scipy import special
from scipy.stats import multivariate_normal, qmc

__all__ = [
    "orthant_probability",
    "polytope_probability",
    "pattern_pmf",
    "mc_pattern_pmf",
    "mixture_pattern_pmf",
    "mixture_support_search",
    "mixture_output_cdf",
    "mlp_layers",
    "region",
    "network_patterns",
    "Support",
    "support_search",
    "output_cdf",
    "class_probabilities",
    "jacobian_singular_values",
    "mc_network",
    "mc_network_pmf",
    "mc_jacobian_singular_values",
    "MAX_FULL_PMF_UNITS",
]

#: Largest first layer for which :func:`pattern_pmf` enumerates all ``2**m`` patterns.
MAX_FULL_PMF_UNITS = 20
#: Relative size below which an eigenvalue, a row norm or a pivot counts as zero.
_TOL = 1e-10
#: Gauss-Legendre rules per piece: the estimate uses the first, its error is the difference to the second.
_GL_RULES = (np.polynomial.legendre.leggauss(20), np.polynomial.legendre.leggauss(10))
#: Standard-normal range integrated by the quadrature route (the mass outside is < 2e-19).
_GL_RANGE = 9.0


# ---------------------------------------------------------------------------------------------
# input checks


def _gaussian(mean, cov, name_mean="mean", name_cov="cov"):
    """Validated float64 mean (d,) and covariance (d, d), symmetric and positive semi-definite."""
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
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


def _factor(cov):
    """A factor C (d, r) with C C^T = cov, r the numerical rank."""
    values, vectors = np.linalg.eigh(cov)
    keep = values > _TOL * max(values[-1], 0.0)
    return vectors[:, keep] * np.sqrt(values[keep])


def _layers(weights, biases):
    """Validated float64 lists of weights (m_l, m_{l-1}) and biases (m_l,)."""
    if len(weights) != len(biases) or len(weights) < 1:
        raise ValueError(f"weights and biases must be lists of equal length >= 1, got {len(weights)} and {len(biases)}")
    ws = [np.atleast_2d(np.asarray(w, dtype=np.float64)) for w in weights]
    bs = [np.atleast_1d(np.asarray(b, dtype=np.float64)) for b in biases]
    for l, (w, b) in enumerate(zip(ws, bs)):
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"biases[{l}] must have shape ({w.shape[0]},) to match weights[{l}] {w.shape}, "
                             f"got {b.shape}")
        if l > 0 and w.shape[1] != ws[l - 1].shape[0]:
            raise ValueError(f"weights[{l}] must have {ws[l - 1].shape[0]} columns, got shape {w.shape}")
    return ws, bs


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ---------------------------------------------------------------------------------------------
# the orthant probability, scipy's route


def orthant_probability(mean, cov, *, rng=None, n_rep: int = 8, abseps: float = 1e-5, maxpts: int | None = None,
                        allow_singular: bool = False) -> tuple[float, float]:
    r"""P(Z > 0 componentwise) for :math:`Z \sim \mathcal N(\text{mean}, \text{cov})`, with scipy.

    Dimension 1 is the closed form :math:`\Phi(\mu/\sigma)`; dimension 2 is scipy's bivariate
    normal routine, exact to rounding (``err = 0``); from dimension 3 on it is scipy's Genz
    quasi-Monte Carlo (``multivariate_normal.cdf`` with ``lower_limit=0``) :cite:p:`genz1992numerical`,
    repeated ``n_rep`` times with independent child generators of ``rng``: the public function
    returns no error estimate (and ignores ``releps``), so the error reported is the standard error
    over the repetitions.

    Parameters
    ----------
    mean : array-like, shape (k,)
    cov : array-like, shape (k, k)
        Symmetric; positive definite unless ``allow_singular``.
    rng : numpy Generator or int, optional
        Seeds scipy's randomised lattice rule.
    n_rep : int
        Independent repetitions for k >= 3 (>= 2).
    abseps, maxpts
        Passed to ``multivariate_normal.cdf`` (scipy's defaults: 1e-5 and ``1e6 * k``).
    allow_singular : bool
        Pass a singular ``cov`` to scipy (its pivoted Cholesky drops zero pivots). Without it a
        singular ``cov`` raises; :func:`polytope_probability` handles that case exactly.

    Returns
    -------
    p, err : float
    """
    mean, cov = _gaussian(mean, cov)
    if not (isinstance(n_rep, int) and n_rep >= 2):
        raise ValueError(f"n_rep must be an int >= 2, got {n_rep!r}")
    k = mean.size
    values = np.linalg.eigvalsh(cov)
    if values[0] <= _TOL * values[-1] and not allow_singular:
        raise ValueError(f"cov must be positive definite (smallest eigenvalue {values[0]:.3g}); pass "
                         "allow_singular=True for scipy's degenerate route or use polytope_probability")
    if k == 1:
        return float(special.ndtr(mean[0] / np.sqrt(cov[0, 0]))), 0.0
    upper, lower = np.full(k, np.inf), np.zeros(k)
    if k == 2:
        return float(multivariate_normal.cdf(upper, mean, cov, allow_singular=allow_singular, lower_limit=lower)), 0.0
    reps = [multivariate_normal.cdf(upper, mean, cov, allow_singular=allow_singular, maxpts=maxpts, abseps=abseps,
                                    lower_limit=lower, rng=child)
            for child in _rng(rng).spawn(n_rep)]
    return float(np.mean(reps)), float(np.std(reps, ddof=1) / np.sqrt(n_rep))


# ---------------------------------------------------------------------------------------------
# the polytope probability: one routine for everything else


def _ndtr_diff(lo, hi):
    """Phi(hi) - Phi(lo) without cancellation in the upper tail, clipped at 0."""
    upper_tail = lo > 0
    diff = np.where(upper_tail, special.ndtr(-lo) - special.ndtr(-hi), special.ndtr(hi) - special.ndtr(lo))
    return np.clip(diff, 0.0, None)


def _lower_trapezoidal(a, c0):
    """Order rows Genz-style and rotate: a (k, r) -> L (k, q) lower trapezoidal, row order, last column.

    Greedy ordering: at each step take, among rows not yet spanned, the one whose constraint is the
    tightest, i.e. with the smallest Phi(c_i / |residual_i|) (Genz and Bretz's heuristic with the
    earlier variables at 0), then orthogonalise the rest against it (modified Gram-Schmidt = LQ).
    """
    k, r = a.shape
    residual = a.copy()
    basis = []
    order, rest = [], list(range(k))
    while rest and len(basis) < r:
        norms = np.linalg.norm(residual[rest], axis=1)
        alive = norms > 1e-9
        if not alive.any():
            break
        scores = np.where(alive, special.ndtr(c0[rest] / np.where(alive, norms, 1.0)), np.inf)
        pick = rest[int(np.argmin(scores))]
        q = residual[pick] / np.linalg.norm(residual[pick])
        basis.append(q)
        order.append(pick)
        rest.remove(pick)
        residual[rest] -= np.outer(residual[rest] @ q, q)
    order += rest
    lower = a[order] @ np.array(basis).T  # (k, q): coordinates in the orthonormal basis
    lower[np.abs(lower) < 1e-12] = 0.0
    last = np.array([np.nonzero(row)[0].max() if row.any() else -1 for row in lower])
    return lower, np.array(order), last


def _bounds(lower_rows, c_rows, partial):
    """Interval of the current variable from rows ``lower_rows @ v + c > 0`` (last coefficient t).

    partial : (..., n_rows) sums over earlier variables; returns lo, hi of shape (...)."""
    t = lower_rows
    value = -(c_rows + partial) / t
    lo = np.max(np.where(t > 0, value, -np.inf), axis=-1, initial=-np.inf)
    hi = np.min(np.where(t < 0, value, np.inf), axis=-1, initial=np.inf)
    return lo, hi


@functools.lru_cache(maxsize=64)
def _sobol(dim, n_points):
    """A fixed scrambled Sobol' point set in [0, 1)^dim (read-only)."""
    points = qmc.Sobol(dim, scramble=True, rng=np.random.default_rng(dim)).random(n_points)
    points.flags.writeable = False
    return points


def _qmc_probability(lower, c, last, n_points, n_rep, rng):
    """Genz's separation of variables, randomised QMC; c (B, k). Returns p, err (B,).

    Replicate ``r`` uses the scrambled Sobol' points shifted by an independent uniform vector
    modulo 1 (a Cranley-Patterson rotation), so each replicate is an unbiased estimate and their
    spread gives the standard error; the replicates run as one batch."""
    n_var = last.max() + 1
    base = _sobol(n_var - 1, n_points) if n_var > 1 else np.zeros((n_points, 0))
    shifts = rng.random((n_rep, 1, base.shape[1]))
    w = ((base + shifts) % 1.0).reshape(n_rep * n_points, -1)
    v = np.zeros((c.shape[0], len(w), n_var))
    weight = np.ones((c.shape[0], len(w)))
    for j in range(n_var):
        rows = last == j
        partial = v[:, :, :j] @ lower[rows, :j].T
        lo, hi = _bounds(lower[rows, j], c[:, None, rows], partial)
        weight *= _ndtr_diff(lo, hi)
        if j < n_var - 1:
            a_lo, a_hi = special.ndtr(lo), special.ndtr(hi)
            v[:, :, j] = special.ndtri(np.clip(a_lo + w[:, j] * (a_hi - a_lo), 1e-300, 1 - 1e-16))
    estimates = weight.reshape(len(c), n_rep, n_points).mean(-1)
    return estimates.mean(1), estimates.std(1, ddof=1) / np.sqrt(n_rep)


_STEEP_LEVELS = np.array([0.0, -1.0, 1.0, -2.0, 2.0, -4.0, 4.0, -8.0, 8.0])


def _quadrature_2d(lower, c, last):
    """Two effective variables: integrate phi(v0) [Phi(hi(v0)) - Phi(lo(v0))]^+ piecewise; c (B, k) -> (B,).

    The bound of row i on v1 is the line (-c_i - L_i0 v0) / L_i1 in v0, so the integrand is smooth
    between the points where two active bounds cross; those points, a grid of spacing 1.5 and the points
    where a bound line crosses the levels 0, +-1, +-2, +-4, +-8 (steep lines) split the range."""
    first, second = last == 0, last == 1
    t0, t1 = lower[second, 0], lower[second, 1]
    lo0, hi0 = _bounds(lower[first, 0], c[:, first], 0.0)
    lo0, hi0 = np.maximum(lo0, -_GL_RANGE), np.minimum(hi0, _GL_RANGE)
    slope, icpt = -t0 / t1, -c[:, second] / t1  # (n2,), (B, n2)
    pairs = np.triu_indices(len(slope), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = (icpt[:, pairs[1]] - icpt[:, pairs[0]]) / (slope[pairs[0]] - slope[pairs[1]])  # (B, pairs)
        value = icpt[:, pairs[0]] + slope[pairs[0]] * cross
        # a crossing is a kink only where its lines are the active bounds (or where lo = hi)
        lo1, hi1 = _bounds(t1, c[:, None, second], t0 * cross[..., None])
        active = (np.isclose(value, lo1) | np.isclose(value, hi1)) & np.isfinite(cross)
    inside = active & (cross > lo0[:, None]) & (cross < hi0[:, None])
    n_kinks = inside.sum(1).max()
    kinks = np.sort(np.where(inside, cross, np.inf), axis=1)[:, :n_kinks]
    grid = np.arange(-_GL_RANGE, _GL_RANGE + 1, 1.5)
    # a steep bound line makes Phi(bound) jump within a short v0 interval: break where it crosses these levels
    with np.errstate(divide="ignore", invalid="ignore"):
        steep = ((_STEEP_LEVELS[:, None] - icpt[:, None, :]) / slope).reshape(len(c), -1)
    steep = np.where(np.isfinite(steep), steep, lo0[:, None])
    edges = np.column_stack([lo0, hi0, kinks, np.broadcast_to(grid, (len(c), grid.size)), steep])
    # points outside [lo0, hi0] collapse onto its ends (empty pieces)
    edges = np.sort(np.clip(edges, lo0[:, None], np.maximum(lo0, hi0)[:, None]), axis=1)
    mid, half = (edges[:, 1:] + edges[:, :-1]) / 2, (edges[:, 1:] - edges[:, :-1]) / 2

    def integral(nodes, weights):
        v0 = mid[..., None] + half[..., None] * nodes  # (B, P, n)
        lo1, hi1 = _bounds(t1, c[:, None, None, second], t0 * v0[..., None])
        f = np.exp(-v0**2 / 2) / np.sqrt(2 * np.pi) * _ndtr_diff(lo1, hi1)
        return np.einsum("bpn,n,bp->b", f, weights, half)

    p = integral(*_GL_RULES[0])
    return p, np.abs(p - integral(*_GL_RULES[1]))


def _standard_polytope(a, c, *, method="auto", n_points=1024, n_rep=8, rng=None):
    """P(a u + c > 0) for u ~ N(0, I_r); a (k, r), c (B, k). Returns p, err of shape (B,)."""
    if method not in ("auto", "exact", "quadrature", "qmc"):
        raise ValueError(f"method must be 'auto', 'exact', 'quadrature' or 'qmc', got {method!r}")
    if not (isinstance(n_points, int) and n_points >= 2 and n_points & (n_points - 1) == 0):
        raise ValueError(f"n_points must be a power of 2 >= 2, got {n_points!r}")
    if not (isinstance(n_rep, int) and n_rep >= 2):
        raise ValueError(f"n_rep must be an int >= 2, got {n_rep!r}")
    c = np.atleast_2d(c)
    norms = np.linalg.norm(a, axis=1)
    zero = norms <= _TOL * max(norms.max(initial=0.0), 1.0)
    feasible = np.all(c[:, zero] > 0, axis=1).astype(float)
    a, c = a[~zero] / norms[~zero, None], c[:, ~zero] / norms[~zero]
    if a.shape[0] == 0:
        return feasible, np.zeros(len(c))
    if a.shape[0] < a.shape[1]:  # a u has covariance a a^T: replace a by a (k, rank) factor of it
        values, vectors = np.linalg.eigh(a @ a.T)
        keep = values > _TOL * values[-1]
        a = vectors[:, keep] * np.sqrt(values[keep])
    lower, order, last = _lower_trapezoidal(a, c[0])
    c = c[:, order]
    n_var = last.max() + 1
    if method == "auto":
        method = "exact" if n_var == 1 else "quadrature" if n_var == 2 else "qmc"
    if method in ("exact", "quadrature") and n_var != (1 if method == "exact" else 2):
        raise ValueError(f"method {method!r} needs {1 if method == 'exact' else 2} effective variables, "
                         f"the problem has {n_var}; use 'auto' or 'qmc'")
    if method == "exact":
        lo, hi = _bounds(lower[:, 0], c, 0.0)
        p, err = _ndtr_diff(lo, hi), np.zeros(len(c))
    elif method == "quadrature":
        p, err = _quadrature_2d(lower, c, last)
    else:
        p, err = _qmc_probability(lower, c, last, n_points, n_rep, _rng(rng))
    return p * feasible, err * feasible


def polytope_probability(G, h, mean, cov, *, method: str = "auto", n_points: int = 1024, n_rep: int = 8,
                         rng=None) -> tuple[np.ndarray, np.ndarray]:
    r"""P(G x + h > 0) for :math:`x \sim \mathcal N(\text{mean}, \text{cov})`, any number of rows.

    The probability of the polyhedron of Lemma 1 of :cite:t:`chaudhari2025relu`. Write
    :math:`x = \mu + C u` (:math:`C` an eigen-factor of ``cov`` of rank :math:`r`,
    :math:`u \sim \mathcal N(0, I_r)`), normalise the rows of :math:`GC`, order them greedily
    (tightest first) and rotate them to lower-trapezoidal form, then integrate variable by
    variable (Genz's separation of variables :cite:p:`genz1992numerical`). Rows with
    :math:`GC = 0` are deterministic. ``cov`` may be singular and ``G`` may have more rows than
    ``mean`` has entries.

    Parameters
    ----------
    G : array-like, shape (k, d)
    h : array-like, shape (k,) or (B, k)
        A batch of offsets shares ``G`` (e.g. one extra half-space at several thresholds).
    mean : array-like, shape (d,)
    cov : array-like, shape (d, d), symmetric positive semi-definite
    method : {"auto", "exact", "quadrature", "qmc"}
        ``auto``: closed form with one effective variable, piecewise Gauss-Legendre with two,
        randomised QMC otherwise.
    n_points : int
        Sobol' points per replicate (a power of 2) for ``qmc``.
    n_rep : int
        Scrambled replicates for ``qmc`` (>= 2); the error is their standard error.
    rng : numpy Generator or int, optional

    Returns
    -------
    p, err : ndarray, shape () or (B,)
        Probability and one standard error (quadrature: difference to half the nodes).
    """
    mean, cov = _gaussian(mean, cov)
    G = np.asarray(G, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    if G.ndim != 2 or G.shape[1] != mean.size or not np.all(np.isfinite(G)):
        raise ValueError(f"G must be a finite (k, {mean.size}) array to match mean, got shape {G.shape}")
    if h.shape[-1:] != G.shape[:1] or h.ndim not in (1, 2) or not np.all(np.isfinite(h)):
        raise ValueError(f"h must have shape ({G.shape[0]},) or (B, {G.shape[0]}) to match G, got {h.shape}")
    factor = _factor(cov)
    p, err = _standard_polytope(G @ factor, np.atleast_2d(G @ mean + h), method=method, n_points=n_points,
                                n_rep=n_rep, rng=rng)
    return (p[0], err[0]) if h.ndim == 1 else (p, err)


# ---------------------------------------------------------------------------------------------
# first layer: the full PMF


def _first_layer(weight, bias, mean, cov):
    mean, cov = _gaussian(mean, cov)
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[1] != mean.size:
        raise ValueError(f"weight must have shape (m, {mean.size}) to match mean, got {weight.shape}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight, got {bias.shape}")
    return weight, bias, mean, cov


def _signs(m):
    """(2**m, m) matrix of +-1: row ``code`` has +1 at the bits of ``code``."""
    bits = (np.arange(2**m)[:, None] >> np.arange(m)) & 1
    return 2.0 * bits - 1.0


def pattern_pmf(weight, bias, mean, cov, *, method: str = "auto", return_err: bool = False, rng=None,
                **options) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""PMF of the first-layer pattern :math:`A = \1(W x + b > 0)`, :math:`x \sim \mathcal N(\mu, \Sigma)`.

    :math:`P(A = a) = P(S z > 0)` with :math:`z = Wx + b` and :math:`S = \diag(2a - 1)`: an orthant
    probability of :math:`\mathcal N(S(W\mu + b), S W \Sigma W^\top S)`. When that covariance is
    non-singular (``m <= d`` and full rank) ``method="auto"`` uses :func:`orthant_probability`
    (scipy); otherwise (``m > d``: the covariance has rank at most ``d`` and many patterns are
    impossible) it integrates over the input-space polytope of Lemma 1 with
    :func:`polytope_probability`, where impossible patterns come out as exactly 0.

    Parameters
    ----------
    weight : array-like, shape (m, d)
    bias : array-like, shape (m,)
    mean : array-like, shape (d,)
    cov : array-like, shape (d, d), symmetric positive semi-definite
    method : {"auto", "orthant", "polytope"}
    return_err : bool
        Also return the standard errors.
    rng : numpy Generator or int, optional
    **options
        Passed on (``n_rep`` for either route, ``abseps``/``maxpts`` for ``orthant``,
        ``n_points`` for ``polytope``).

    Returns
    -------
    pmf : ndarray, float64, shape (2**m,)
        Index :math:`\sum_i a_i 2^i` (unit ``i`` is bit ``i``).
    err : ndarray, shape (2**m,), only with ``return_err``
    """
    weight, bias, mean, cov = _first_layer(weight, bias, mean, cov)
    m = weight.shape[0]
    if m > MAX_FULL_PMF_UNITS:
        raise ValueError(f"weight has m = {m} units: a full PMF has 2**m entries, limit m <= {MAX_FULL_PMF_UNITS}; "
                         "use support_search for the most probable patterns")
    cov_z = weight @ cov @ weight.T
    values = np.linalg.eigvalsh(cov_z)
    nonsingular = values[0] > _TOL * max(values[-1], 0.0)
    if method == "auto":
        method = "orthant" if nonsingular else "polytope"
    signs = _signs(m)
    rng = _rng(rng)
    if method == "orthant":
        if not nonsingular:
            raise ValueError("method='orthant' needs a non-singular covariance of W x (m <= d, full rank); "
                             "use method='polytope'")
        results = [orthant_probability(s * (weight @ mean + bias), cov_z * np.outer(s, s), rng=child, **options)
                   for s, child in zip(signs, rng.spawn(len(signs)))]
        pmf, err = np.array(results).T
    elif method == "polytope":
        factor = _factor(cov)
        a, c = weight @ factor, weight @ mean + bias
        results = [_standard_polytope(s[:, None] * a, s * c, rng=child, **options)
                   for s, child in zip(signs, rng.spawn(len(signs)))]
        pmf, err = (np.array([r[i][0] for r in results]) for i in (0, 1))
    else:
        raise ValueError(f"method must be 'auto', 'orthant' or 'polytope', got {method!r}")
    return (pmf, err) if return_err else pmf


def _sample(mean, cov, n, rng, chunk=1_000_000):
    """Yield chunks of Gaussian samples (handles singular cov through the eigen-factor)."""
    factor = _factor(cov)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        yield mean + rng.standard_normal((size, factor.shape[1])) @ factor.T


def _check_n(n):
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n must be an int >= 1, got {n!r}")


def mc_pattern_pmf(weight, bias, mean, cov, n: int, seed: int) -> np.ndarray:
    r"""Monte Carlo estimate of :func:`pattern_pmf`: frequencies of :math:`\1(Wx + b > 0)` over ``n`` draws.

    Parameters
    ----------
    weight, bias, mean, cov
        As in :func:`pattern_pmf`.
    n : int
        Number of samples (drawn in chunks of 10**6).
    seed : int

    Returns
    -------
    ndarray, float64, shape (2**m,)
        Same layout as :func:`pattern_pmf`.
    """
    weight, bias, mean, cov = _first_layer(weight, bias, mean, cov)
    m = weight.shape[0]
    if m > MAX_FULL_PMF_UNITS:
        raise ValueError(f"weight has m = {m} units, limit m <= {MAX_FULL_PMF_UNITS} for a full PMF")
    _check_n(n)
    counts = np.zeros(2**m)
    powers = 2 ** np.arange(m)
    for x in _sample(mean, cov, n, np.random.default_rng(seed)):
        counts += np.bincount(((x @ weight.T + bias) > 0) @ powers, minlength=2**m)
    return counts / n


def _mixture(weights, means, covs, name="weights"):
    """Validated mixture weights (K,), with one mean and one covariance per component."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0) or abs(weights.sum() - 1) > 1e-9:
        raise ValueError(f"{name} must be a 1-D array of non-negative mixture weights summing to 1, got {weights}")
    if len(means) != len(weights) or len(covs) != len(weights):
        raise ValueError(f"means and covs must have one entry per weight ({len(weights)}), "
                         f"got {len(means)} and {len(covs)}")
    return weights


def mixture_pattern_pmf(weight, bias, weights, means, covs, *, return_err: bool = False, rng=None, **options):
    r"""First-layer pattern PMF under a Gaussian mixture :math:`\sum_k \pi_k \mathcal N(\mu_k, \Sigma_k)`.

    The weighted sum :math:`\sum_k \pi_k P_k(A = a)` of :func:`pattern_pmf` per component (errors
    add in quadrature).

    Parameters
    ----------
    weight, bias
        As in :func:`pattern_pmf`.
    weights : array-like, shape (K,)
        Mixture weights, >= 0, summing to 1.
    means : array-like, shape (K, d)
    covs : array-like, shape (K, d, d)

    Returns
    -------
    pmf : ndarray, shape (2**m,); err as well with ``return_err``
    """
    weights = _mixture(weights, means, covs)
    rng = _rng(rng)
    parts = [pattern_pmf(weight, bias, mu, cov, return_err=True, rng=child, **options)
             for mu, cov, child in zip(means, covs, rng.spawn(len(weights)))]
    pmf = sum(w * p for w, (p, _) in zip(weights, parts))
    err = np.sqrt(sum((w * e) ** 2 for w, (_, e) in zip(weights, parts)))
    return (pmf, err) if return_err else pmf


# ---------------------------------------------------------------------------------------------
# deeper networks: regions, support, output law, Jacobians


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
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears or any(layer.bias is None for layer in linears):
        raise ValueError("model must contain nn.Linear layers with biases")
    return ([layer.weight.detach().cpu().double().numpy() for layer in linears],
            [layer.bias.detach().cpu().double().numpy() for layer in linears])


def _split(bits, ws):
    sizes = [w.shape[0] for w in ws[:-1]]
    bits = np.asarray(bits, dtype=bool)
    if bits.shape != (sum(sizes),):
        raise ValueError(f"pattern must have {sum(sizes)} bits (hidden units of all layers), got shape {bits.shape}")
    return np.split(bits, np.cumsum(sizes)[:-1])


def region(weights, biases, pattern) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Lemma 1: the polyhedron of inputs with a given pattern, and the affine map the network applies there.

    Given the pattern :math:`a_1, \dots, a_{L-1}` of the hidden layers, layer :math:`l` sees the
    affine function :math:`h_{l-1}(x) = A_{l-1} x + c_{l-1}` (with :math:`A_0 = I`, :math:`c_0 = 0`),
    its pre-activation is :math:`z_l = W_l A_{l-1} x + W_l c_{l-1} + b_l` and the pattern requires
    :math:`\diag(2a_l - 1) z_l > 0`; then :math:`A_l = \diag(a_l) W_l A_{l-1}`. The region may be
    empty or unbounded.

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
        The region is :math:`\{x : G x + h > 0\}`.
    J : ndarray, shape (d_out, d)
    c : ndarray, shape (d_out,)
        On the region the network is :math:`x \mapsto J x + c`.
    """
    ws, bs = _layers(weights, biases)
    parts = _split(pattern, ws)
    A, c = None, None  # the identity map of the input
    G, h = [], []
    for w, b, a in zip(ws[:-1], bs[:-1], parts):
        z_A, z_c = (w, b) if A is None else (w @ A, w @ c + b)
        s = np.where(a, 1.0, -1.0)
        G.append(s[:, None] * z_A)
        h.append(s * z_c)
        A, c = a[:, None] * z_A, a * z_c
    return np.concatenate(G), np.concatenate(h), ws[-1] @ A, ws[-1] @ c + bs[-1]


def _standardised(ws, bs, mean, cov):
    """The network in the coordinates u of x = mean + C u, u ~ N(0, I_r): first layer W C, W mean + b."""
    factor = _factor(cov)
    return [ws[0] @ factor] + ws[1:], [ws[0] @ mean + bs[0]] + bs[1:]


def network_patterns(weights, biases, x) -> np.ndarray:
    """Hidden-unit patterns ``1(z > 0)`` of all layers, concatenated, for inputs ``x`` of shape (N, d) -> (N, M) bool."""
    ws, bs = _layers(weights, biases)
    h = np.atleast_2d(np.asarray(x, dtype=np.float64))
    bits = []
    for w, b in zip(ws[:-1], bs[:-1]):
        z = h @ w.T + b
        bits.append(z > 0)
        h = np.maximum(z, 0)
    return np.concatenate(bits, axis=1)


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
        return [int(sum(1 << i for i in np.nonzero(p)[0])) for p in self.patterns]


def support_search(weights, biases, mean, cov, *, eps: float = 1e-3, max_regions: int = 10_000,
                   rng=None, **options) -> Support:
    r"""Sample-free support of the pattern distribution: best-first search over regions.

    Start at the pattern of the mean; repeatedly take the most probable region found so far and
    compute the probabilities of its neighbours, the patterns that differ in one unit (crossing one
    boundary of a region flips one unit, generically, so every region with positive probability
    is reachable). Impossible neighbours have probability exactly 0 and are dropped. Stop when the
    regions taken hold at least ``1 - eps`` of the mass (then the regions never taken hold at
    most ``eps``), when no candidate is left, or after ``max_regions`` regions.

    Parameters
    ----------
    weights, biases : list of array-like
    mean, cov : array-like, shapes (d,) and (d, d)
    eps : float
        Mass that may stay unfound, in [0, 1). With ``eps = 0`` every region with positive
        computed probability is found.
    max_regions : int
    rng : numpy Generator or int, optional
    **options
        Passed to :func:`polytope_probability` (``method``, ``n_points``, ``n_rep``).

    Returns
    -------
    Support
    """
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    if ws[0].shape[1] != mean.size:
        raise ValueError(f"mean must have {ws[0].shape[1]} entries to match weights[0], got {mean.size}")
    if len(ws) < 2:
        raise ValueError("weights must describe at least one hidden layer (>= 2 linear layers)")
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    if not (isinstance(max_regions, int) and max_regions >= 1):
        raise ValueError(f"max_regions must be an int >= 1, got {max_regions!r}")
    ws_u, bs_u = _standardised(ws, bs, mean, cov)
    rng = _rng(rng)

    def probability(bits):
        G, h, _, _ = region(ws_u, bs_u, np.array(bits))
        p, e = _standard_polytope(G, h, rng=rng, **options)
        return float(p[0]), float(e[0])

    start = tuple(network_patterns(ws, bs, mean[None])[0])
    p0, e0 = probability(start)
    seen, heap = {start}, [(-p0, 0, start, e0)]
    found, n_evaluated, tie = [], 1, 1
    mass = 0.0
    while heap and mass < 1 - eps and len(found) < max_regions:
        neg_p, _, bits, err = heapq.heappop(heap)
        found.append((bits, -neg_p, err))
        mass += -neg_p
        for i in range(len(bits)):
            flipped = bits[:i] + (not bits[i],) + bits[i + 1:]
            if flipped in seen:
                continue
            seen.add(flipped)
            p, e = probability(flipped)
            n_evaluated += 1
            if p > 0:
                heapq.heappush(heap, (-p, tie, flipped, e))
                tie += 1
    found.sort(key=lambda f: -f[1])
    patterns = np.array([f[0] for f in found], dtype=bool)
    return Support(patterns, np.array([f[1] for f in found]), np.array([f[2] for f in found]), n_evaluated)


def mixture_support_search(weights, biases, mix_weights, means, covs, *, eps: float = 1e-3, rng=None,
                           **options) -> tuple[Support, list[Support]]:
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
    eps, rng, **options
        As in :func:`support_search`.

    Returns
    -------
    merged : Support
        Most probable first; ``n_evaluated`` counts all components' polytopes.
    components : list of Support
        One per component (what :func:`mixture_output_cdf` needs).
    """
    mix_weights = _mixture(mix_weights, means, covs, name="mix_weights")
    rng = _rng(rng)
    components = [support_search(weights, biases, mu, cov, eps=eps, rng=child, **options)
                  for mu, cov, child in zip(means, covs, rng.spawn(len(mix_weights)))]
    merged: dict[tuple, list[float]] = {}
    for pi, sup in zip(mix_weights, components):
        for bits, p, e in zip(sup.patterns, sup.probs, sup.errors):
            entry = merged.setdefault(tuple(bits), [0.0, 0.0])
            entry[0] += pi * p
            entry[1] += (pi * e) ** 2
    ranked = sorted(merged.items(), key=lambda item: -item[1][0])
    support = Support(np.array([k for k, _ in ranked], dtype=bool), np.array([v[0] for _, v in ranked]),
                      np.sqrt([v[1] for _, v in ranked]), sum(c.n_evaluated for c in components))
    return support, components


def output_cdf(weights, biases, mean, cov, thresholds, support: Support, *, output: int = 0, rng=None,
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
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.ndim != 1 or not np.all(np.isfinite(t)):
        raise ValueError(f"thresholds must be a finite 1-D array, got shape {t.shape}")
    if not 0 <= output < ws[-1].shape[0]:
        raise ValueError(f"output must be in [0, {ws[-1].shape[0]}), got {output!r}")
    ws_u, bs_u = _standardised(ws, bs, mean, cov)
    rng = _rng(rng)
    total, var = np.zeros(len(t)), np.zeros(len(t))
    for bits in support.patterns:
        G, h, J, c = region(ws_u, bs_u, bits)
        G = np.vstack([G, -J[output]])  # f <= t  <=>  t - J u - c >= 0
        offsets = np.column_stack([np.broadcast_to(h, (len(t), len(h))), t - c[output]])
        p, e = _standard_polytope(G, offsets, rng=rng, **options)
        total += p
        var += e**2
    missing = max(0.0, 1.0 - float(support.probs.sum()))
    return total, np.sqrt(var) + missing


def mixture_output_cdf(weights, biases, mix_weights, means, covs, thresholds, components: Sequence[Support], *,
                       output: int = 0, rng=None, **options) -> tuple[np.ndarray, np.ndarray]:
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
    rng = _rng(rng)
    parts = [output_cdf(weights, biases, mu, cov, thresholds, sup, output=output, rng=child, **options)
             for mu, cov, sup, child in zip(means, covs, components, rng.spawn(len(mix_weights)))]
    return sum(pi * c for pi, (c, _) in zip(mix_weights, parts)), sum(pi * e for pi, (_, e) in zip(mix_weights, parts))


def class_probabilities(weights, biases, mean, cov, support: Support, *, rng=None,
                        **options) -> tuple[np.ndarray, np.ndarray]:
    r"""P(argmax of the output = k) for each class k, summed over the regions of ``support``.

    Within region :math:`a` the logits are :math:`J_a x + c_a`; class :math:`k` wins where
    :math:`(J_k - J_j) x + c_k - c_j > 0` for every :math:`j \ne k`: ``d_out - 1`` more half-spaces.

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
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    ws_u, bs_u = _standardised(ws, bs, mean, cov)
    rng = _rng(rng)
    n_out = ws[-1].shape[0]
    total, var = np.zeros(n_out), np.zeros(n_out)
    for bits in support.patterns:
        G, h, J, c = region(ws_u, bs_u, bits)
        for k in range(n_out):
            others = np.arange(n_out) != k
            Gk = np.vstack([G, J[k] - J[others]])
            hk = np.concatenate([h, c[k] - c[others]])
            p, e = _standard_polytope(Gk, hk, rng=rng, **options)
            total[k] += p[0]
            var[k] += e[0] ** 2
    missing = max(0.0, 1.0 - float(support.probs.sum()))
    return total, np.sqrt(var) + missing


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
    ws, bs = _layers(weights, biases)
    return np.array([np.linalg.svd(region(ws, bs, bits)[2], compute_uv=False) for bits in np.atleast_2d(patterns)])


def mc_network(weights, biases, mean, cov, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monte Carlo reference: ``n`` Gaussian inputs, their hidden patterns and the network outputs.

    Returns
    -------
    x : ndarray, shape (n, d)
    patterns : ndarray, bool, shape (n, M)
    out : ndarray, shape (n, d_out)
    """
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    _check_n(n)
    x = np.concatenate(list(_sample(mean, cov, n, np.random.default_rng(seed))))
    h = x
    for w, b in zip(ws[:-1], bs[:-1]):
        h = np.maximum(h @ w.T + b, 0)
    return x, network_patterns(ws, bs, x), h @ ws[-1].T + bs[-1]


def mc_network_pmf(weights, biases, mean, cov, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Monte Carlo pattern PMF of a whole network, in chunks of 10**6 draws (little memory for any ``n``).

    Parameters
    ----------
    weights, biases, mean, cov
        As in :func:`support_search`; at most 62 hidden units (codes are int64).
    n : int
    seed : int
        The same draws as :func:`mc_network` with the same seed.

    Returns
    -------
    codes : ndarray, int64, shape (K,)
        Distinct pattern codes :math:`\sum_i a_i 2^i` seen, ascending.
    freqs : ndarray, shape (K,)
        Their frequencies.
    """
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    _check_n(n)
    n_units = sum(w.shape[0] for w in ws[:-1])
    if n_units > 62:
        raise ValueError(f"weights have {n_units} hidden units; codes need <= 62 (use mc_network)")
    powers = np.int64(1) << np.arange(n_units, dtype=np.int64)
    counts: dict[int, int] = {}
    for x in _sample(mean, cov, n, np.random.default_rng(seed)):
        codes, k = np.unique(network_patterns(ws, bs, x) @ powers, return_counts=True)
        for code, count in zip(codes.tolist(), k.tolist()):
            counts[code] = counts.get(code, 0) + count
    codes = np.array(sorted(counts), dtype=np.int64)
    return codes, np.array([counts[c] for c in codes.tolist()]) / n


def mc_jacobian_singular_values(model: torch.nn.Module, mean, cov, n: int, seed: int) -> np.ndarray:
    """Monte Carlo reference: singular values of the input Jacobian at ``n`` Gaussian inputs (torch.func).

    Parameters
    ----------
    model : nn.Module
        Maps (d,) to (d_out,); evaluated in float64.
    mean, cov : array-like
    n : int
    seed : int

    Returns
    -------
    ndarray, shape (n, min(d_out, d))
    """
    mean, cov = _gaussian(mean, cov)
    _check_n(n)
    x = torch.from_numpy(np.concatenate(list(_sample(mean, cov, n, np.random.default_rng(seed)))))
    params = {k: v.detach().double() for k, v in model.named_parameters()}

    def f(xi):
        return torch.func.functional_call(model, params, (xi,))

    jac = torch.vmap(torch.func.jacrev(f))(x)
    return torch.linalg.svdvals(jac).numpy()

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
import warnings
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
    "MassWarning",
    "pattern_codes",
    "AffineMaps",
    "affine_maps",
    "output_range",
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
    mean = _numpy(mean, name_mean)
    cov = _numpy(cov, name_cov)
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
    ws = [np.atleast_2d(_numpy(w, f"weights[{l}]")) for l, w in enumerate(weights)]
    bs = [np.atleast_1d(_numpy(b, f"biases[{l}]")) for l, b in enumerate(biases)]
    for l, (w, b) in enumerate(zip(ws, bs)):
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"biases[{l}] must have shape ({w.shape[0]},) to match weights[{l}] {w.shape}, "
                             f"got {b.shape}")
        if l > 0 and w.shape[1] != ws[l - 1].shape[0]:
            raise ValueError(f"weights[{l}] must have {ws[l - 1].shape[0]} columns, got shape {w.shape}")
    return ws, bs


def _numpy(value, name):
    """float64 numpy copy of an array-like; torch tensors on any device are detached and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a real array, got {type(value).__name__}: {error}") from None


def _int_arg(value, name, minimum):
    """An int >= minimum from a Python int, a numpy integer or a 0-d integer tensor (bools are refused)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _float_arg(value, name):
    """A finite float from any real scalar: Python or numpy number, or a 0-d tensor."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_complex():
            raise ValueError(f"{name} must be a real scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite real scalar, got {value!r}")
    return float(value)


def _rng(rng):
    """A numpy Generator from a Generator or an int seed (numpy integers and 0-d tensors included).

    Every entry point defaults to ``rng=0``: results are reproducible unless a caller passes
    another seed or a Generator. ``None`` (fresh entropy) is refused on purpose."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(_int_arg(rng, "rng", 0))
    except ValueError:
        raise ValueError(f"rng must be a numpy Generator or an int seed >= 0 (default 0, deterministic), "
                         f"got {rng!r}") from None


class MassWarning(RuntimeWarning):
    """A function's total probability is not the mass it should hold (e.g. a support search found less
    than ``1 - eps``, or a full PMF does not sum to 1 within its errors)."""


def _check_mass(found, target, err, what, *, at_least=False):
    """Warn (MassWarning) when ``found`` differs from ``target`` by more than 5 errors + 1e-9.

    With ``at_least`` only a shortfall counts (a search may find more than it must)."""
    slack = 5 * err + 1e-9
    short, over = found < target - slack, found > 1 + slack
    if short or over or (not at_least and found > target + slack):
        warnings.warn(f"{what}: total probability {found:.6g}, expected {'at least ' if at_least else ''}"
                      f"{target:.6g} (+- {slack:.1e})", MassWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# the orthant probability, scipy's route


def orthant_probability(mean, cov, *, rng=0, n_rep: int = 8, abseps: float = 1e-5, maxpts: int | None = None,
                        allow_singular: bool = False) -> tuple[float, float]:
    r"""P(Z > 0 componentwise) for :math:`Z \sim \mathcal N(\text{mean}, \text{cov})`, with scipy.

    Dimension 1 is the closed form :math:`\Phi(\mu/\sigma)`; dimension 2 is scipy's bivariate
    normal routine, exact to rounding (``err = 0``); from dimension 3 on it is scipy's Genz
    quasi-Monte Carlo (``multivariate_normal.cdf`` with ``lower_limit=0``) :cite:p:`genz1992numerical`,
    repeated ``n_rep`` times with independent child generators of ``rng``: the public function
    returns no error estimate (and ignores ``releps``), so the error reported is the standard error
    over the repetitions.

    Calibration (against the exact equicorrelated orthant probability, a 1-D integral, for
    k = 3..6, correlations 0.2-0.8, means 0 and 0.5): with ``n_rep=8`` the standardised errors
    ``(p - exact) / err`` should have a root mean square of ``sqrt(7/5) = 1.18`` (a ``t_7`` law).
    Measured: about 1.4 at ``maxpts=1e5`` (72 cases; the bars are ~1.2x optimistic), about 1.05
    at ``maxpts=2e4`` (18 cases, chapter 3). Compare with ``t_{n_rep-1}`` quantiles and inflate
    by the measured excess where it matters.

    Parameters
    ----------
    mean : array-like, shape (k,)
    cov : array-like, shape (k, k)
        Symmetric; positive definite unless ``allow_singular``.
    rng : numpy Generator or int, default 0
        Seeds scipy's randomised lattice rule (deterministic by default).
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
    n_rep = _int_arg(n_rep, "n_rep", 2)
    abseps = _float_arg(abseps, "abseps")
    if maxpts is not None:
        maxpts = _int_arg(maxpts, "maxpts", 1)
    rng = _rng(rng)
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
            for child in rng.spawn(n_rep)]
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


_POLYTOPE_OPTIONS = ("method", "n_points", "n_rep")


def _check_options(options, allowed, caller):
    """Keyword options passed through ``**options``: a ValueError naming any that ``caller`` does not take."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{caller} got unexpected option(s) {', '.join(map(repr, unknown))}; "
                         f"it passes on only {', '.join(map(repr, allowed))}")


def _standard_polytope(a, c, *, closed=None, method="auto", n_points=1024, n_rep=8, rng=0):
    """P(a_i u + c_i > 0 for open rows, >= 0 for ``closed`` rows) for u ~ N(0, I_r); a (k, r), c (B, k).

    Returns p, err of shape (B,). The open/closed distinction matters only for rows with a = 0
    (a constant pre-activation), which decide feasibility directly: an open row needs c > 0, a
    closed row c >= 0 (a constant within ``1e-12 max(1, |c|)`` of 0 counts as 0)."""
    if method not in ("auto", "exact", "quadrature", "qmc"):
        raise ValueError(f"method must be 'auto', 'exact', 'quadrature' or 'qmc', got {method!r}")
    n_points, n_rep = _int_arg(n_points, "n_points", 2), _int_arg(n_rep, "n_rep", 2)
    if n_points & (n_points - 1):
        raise ValueError(f"n_points must be a power of 2 >= 2, got {n_points!r}")
    c = np.atleast_2d(c)
    closed = np.zeros(a.shape[0], bool) if closed is None else np.asarray(closed, dtype=bool)
    if closed.shape != (a.shape[0],):
        raise ValueError(f"closed must be a bool mask of shape ({a.shape[0]},), got {closed.shape}")
    norms = np.linalg.norm(a, axis=1)
    zero = norms <= _TOL * max(norms.max(initial=0.0), 1.0)
    tol = 1e-12 * np.maximum(1.0, np.abs(c).max(axis=1, initial=0.0, keepdims=True))
    constant = c[:, zero]
    feasible = np.all(np.where(closed[zero], constant >= -tol, constant > tol), axis=1).astype(float)
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


def polytope_probability(G, h, mean, cov, *, closed=None, method: str = "auto", n_points: int = 1024,
                         n_rep: int = 8, rng=0) -> tuple[np.ndarray, np.ndarray]:
    r"""P(G x + h > 0) for :math:`x \sim \mathcal N(\text{mean}, \text{cov})`, any number of rows.

    The probability of the polyhedron of Lemma 1 of :cite:t:`chaudhari2025relu`. Write
    :math:`x = \mu + C u` (:math:`C` an eigen-factor of ``cov`` of rank :math:`r`,
    :math:`u \sim \mathcal N(0, I_r)`), normalise the rows of :math:`GC`, order them greedily
    (tightest first) and rotate them to lower-trapezoidal form, then integrate variable by
    variable (Genz's separation of variables :cite:p:`genz1992numerical`). Rows with
    :math:`GC = 0` are deterministic: they decide feasibility directly, an open row (``> 0``) when
    its constant :math:`G_i \mu + h_i` is positive, a ``closed`` row (``>= 0``) when it is
    non-negative. That is the boundary convention of a ReLU pattern (a unit is off when
    :math:`z \le 0`); for rows that vary with :math:`x` open and closed give the same probability.
    ``cov`` may be singular and ``G`` may have more rows than ``mean`` has entries.

    Parameters
    ----------
    G : array-like, shape (k, d)
    h : array-like, shape (k,) or (B, k)
        A batch of offsets shares ``G`` (e.g. one extra half-space at several thresholds).
    mean : array-like, shape (d,)
    cov : array-like, shape (d, d), symmetric positive semi-definite
    closed : array-like of bool, shape (k,), optional
        Rows that are ``G_i x + h_i >= 0`` (default: none, every row open). For a region of
        :func:`region` pass ``~pattern`` (the off units).
    method : {"auto", "exact", "quadrature", "qmc"}
        ``auto``: closed form with one effective variable, piecewise Gauss-Legendre with two,
        randomised QMC otherwise.
    n_points : int
        Sobol' points per replicate (a power of 2) for ``qmc``.
    n_rep : int
        Scrambled replicates for ``qmc`` (>= 2); the error is their standard error.
    rng : numpy Generator or int, default 0
        Randomises the QMC replicates; the default makes results reproducible.

    Returns
    -------
    p, err : ndarray, shape () or (B,)
        Probability and one standard error (quadrature: difference to half the nodes).
    """
    mean, cov = _gaussian(mean, cov)
    G = _numpy(G, "G")
    h = _numpy(h, "h")
    if G.ndim != 2 or G.shape[1] != mean.size or not np.all(np.isfinite(G)):
        raise ValueError(f"G must be a finite (k, {mean.size}) array to match mean, got shape {G.shape}")
    if h.shape[-1:] != G.shape[:1] or h.ndim not in (1, 2) or not np.all(np.isfinite(h)):
        raise ValueError(f"h must have shape ({G.shape[0]},) or (B, {G.shape[0]}) to match G, got {h.shape}")
    factor = _factor(cov)
    p, err = _standard_polytope(G @ factor, np.atleast_2d(G @ mean + h), closed=closed, method=method,
                                n_points=n_points, n_rep=n_rep, rng=rng)
    return (p[0], err[0]) if h.ndim == 1 else (p, err)


# ---------------------------------------------------------------------------------------------
# first layer: the full PMF


def _first_layer(weight, bias, mean, cov):
    mean, cov = _gaussian(mean, cov)
    weight = _numpy(weight, "weight")
    bias = _numpy(bias, "bias")
    if weight.ndim != 2 or weight.shape[1] != mean.size:
        raise ValueError(f"weight must have shape (m, {mean.size}) to match mean, got {weight.shape}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight, got {bias.shape}")
    return weight, bias, mean, cov


def _signs(m):
    """(2**m, m) matrix of +-1: row ``code`` has +1 at the bits of ``code``."""
    bits = (np.arange(2**m)[:, None] >> np.arange(m)) & 1
    return 2.0 * bits - 1.0


def pattern_pmf(weight, bias, mean, cov, *, method: str = "auto", return_err: bool = False, rng=0,
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
    rng : numpy Generator or int, default 0
        Deterministic by default; pass another seed or a Generator for independent runs.
    **options
        Passed on (``n_rep`` for either route, ``abseps``/``maxpts`` for ``orthant``,
        ``n_points`` for ``polytope``); any other raises ``ValueError`` naming it.

    Warns
    -----
    MassWarning
        When the PMF does not sum to 1 within five standard errors.

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
    if method not in ("orthant", "polytope"):
        raise ValueError(f"method must be 'auto', 'orthant' or 'polytope', got {method!r}")
    _check_options(options, ("n_rep", "abseps", "maxpts") if method == "orthant" else ("n_rep", "n_points"),
                   f"pattern_pmf(method={method!r})")
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
        results = [_standard_polytope(s[:, None] * a, s * c, closed=s < 0, rng=child, **options)
                   for s, child in zip(signs, rng.spawn(len(signs)))]
        pmf, err = (np.array([r[i][0] for r in results]) for i in (0, 1))
    _check_mass(float(pmf.sum()), 1.0, float(np.sqrt((err**2).sum())), "pattern_pmf")
    return (pmf, err) if return_err else pmf


def _sample(mean, cov, n, rng, chunk=1_000_000):
    """Yield chunks of Gaussian samples (handles singular cov through the eigen-factor)."""
    factor = _factor(cov)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        yield mean + rng.standard_normal((size, factor.shape[1])) @ factor.T


def _check_n(n):
    return _int_arg(n, "n", 1)


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
    n, seed = _check_n(n), _int_arg(seed, "seed", 0)
    counts = np.zeros(2**m)
    powers = 2 ** np.arange(m)
    for x in _sample(mean, cov, n, np.random.default_rng(seed)):
        counts += np.bincount(((x @ weight.T + bias) > 0) @ powers, minlength=2**m)
    return counts / n


def _mixture(weights, means, covs, name="weights"):
    """Validated mixture weights (K,), with one mean and one covariance per component."""
    weights = _numpy(weights, name)
    if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0) or abs(weights.sum() - 1) > 1e-9:
        raise ValueError(f"{name} must be a 1-D array of non-negative mixture weights summing to 1, got {weights}")
    if len(means) != len(weights) or len(covs) != len(weights):
        raise ValueError(f"means and covs must have one entry per weight ({len(weights)}), "
                         f"got {len(means)} and {len(covs)}")
    return weights


def mixture_pattern_pmf(weight, bias, weights, means, covs, *, return_err: bool = False, rng=0, **options):
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
    h = np.atleast_2d(_numpy(x, "x"))
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


def _unit_layer_bounds(ws):
    return np.cumsum([0] + [w.shape[0] for w in ws[:-1]])


def _neighbour(ws, bs, bits, unit):
    r"""The pattern on the other side of ``unit``'s boundary, or None when that unit is constant there.

    Crossing the hyperplane :math:`g(u) = 0` of one unit flips it; a unit in the same or a later
    layer whose pre-activation (under the new pattern) is an exact multiple :math:`\lambda g` of
    that affine function is 0 on the whole boundary, so it flips together with it: it is on across
    the boundary iff :math:`\lambda g > 0` there (a multiple with :math:`\lambda = 0`, a constant 0,
    stays off). A unit whose pre-activation is another constant is decided by its sign. Every other
    unit keeps its sign by continuity. Without such degenerate units (generic biases) this is the
    single flip; with them (zero biases, dead layers: regions that are cones) it is the true
    neighbour across the facet, which a single flip would miss."""
    bounds = _unit_layer_bounds(ws)
    layer = int(np.searchsorted(bounds, unit, side="right")) - 1
    new = np.array(bits, dtype=bool)
    new[unit] = not new[unit]
    side = 1.0 if new[unit] else -1.0
    A = c = g = None
    for l, (w, b) in enumerate(zip(ws[:-1], bs[:-1])):
        z_A, z_c = (w, b) if A is None else (w @ A, w @ c + b)
        lo, hi = bounds[l], bounds[l + 1]
        if l == layer:
            g = np.append(z_A[unit - lo], z_c[unit - lo])
            if np.linalg.norm(g[:-1]) <= _TOL * max(1.0, np.linalg.norm(g)):
                return None  # a constant pre-activation has no boundary to cross
        if l >= layer:
            rows = np.column_stack([z_A, z_c])
            row_norm = np.linalg.norm(rows, axis=1)
            lam = rows @ g / (g @ g)
            resid = np.linalg.norm(rows - lam[:, None] * g, axis=1)
            zero = row_norm <= 1e-12 * max(1.0, np.linalg.norm(g))
            proportional = zero | (resid <= 1e-9 * row_norm)
            constant = ~proportional & (np.linalg.norm(z_A, axis=1) <= _TOL * np.maximum(row_norm, 1e-300))
            seg = new[lo:hi]
            seg[proportional] = ~zero[proportional] & (lam[proportional] * side > 0)
            seg[constant] = z_c[constant] > 0
            if l == layer:
                seg[unit - lo] = side > 0
        a = new[lo:hi]
        A, c = a[:, None] * z_A, a * z_c
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
    rng : numpy Generator or int, default 0
        Randomises the QMC integrals (deterministic by default).
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
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    if ws[0].shape[1] != mean.size:
        raise ValueError(f"mean must have {ws[0].shape[1]} entries to match weights[0], got {mean.size}")
    if len(ws) < 2:
        raise ValueError("weights must describe at least one hidden layer (>= 2 linear layers)")
    eps = _float_arg(eps, "eps")
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    max_regions = _int_arg(max_regions, "max_regions", 1)
    _check_options(options, _POLYTOPE_OPTIONS, "support_search")
    ws_u, bs_u = _standardised(ws, bs, mean, cov)
    r = ws_u[0].shape[1]
    rng = _rng(rng)
    seen, heap = set(), []
    counter = {"evaluated": 0, "tie": 0}

    def push(bits):
        if bits is None or bits in seen:
            return
        seen.add(bits)
        on = np.array(bits)
        G, h, _, _ = region(ws_u, bs_u, on)
        p, e = _standard_polytope(G, h, closed=~on, rng=rng, **options)
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
        for bits in patterns_at(np.random.default_rng(0).standard_normal((256, r))):
            push(bits)
    found, mass = [], 0.0
    # eps = 0 empties the queue: with QMC errors the running sum may pass 1 before the last regions
    while heap and (eps == 0 or mass < 1 - eps) and len(found) < max_regions:
        neg_p, _, bits, err = heapq.heappop(heap)
        found.append((bits, -neg_p, err))
        mass += -neg_p
        for i in range(len(bits)):
            push(_neighbour(ws_u, bs_u, bits, i))
    found.sort(key=lambda f: -f[1])
    n_units = sum(w.shape[0] for w in ws[:-1])
    patterns = np.array([f[0] for f in found], dtype=bool).reshape(len(found), n_units)
    probs, errors = np.array([f[1] for f in found]), np.array([f[2] for f in found])
    what = "support_search" + (f" (stopped at max_regions={max_regions})" if len(found) >= max_regions else "")
    _check_mass(float(probs.sum()), 1 - eps, float(np.sqrt((errors**2).sum())), what, at_least=True)
    return Support(patterns, probs, errors, counter["evaluated"])


def mixture_support_search(weights, biases, mix_weights, means, covs, *, eps: float = 1e-3, rng=0,
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
    _check_options(options, _POLYTOPE_OPTIONS, "mixture_support_search")
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
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    t = np.atleast_1d(_numpy(thresholds, "thresholds"))
    if t.ndim != 1 or not np.all(np.isfinite(t)):
        raise ValueError(f"thresholds must be a finite 1-D array, got shape {t.shape}")
    try:
        output = _int_arg(output, "output", 0)
    except ValueError:
        output = -1
    if not 0 <= output < ws[-1].shape[0]:
        raise ValueError(f"output must be an int in [0, {ws[-1].shape[0]}), got {output!r}")
    _check_options(options, _POLYTOPE_OPTIONS, "output_cdf")
    ws_u, bs_u = _standardised(ws, bs, mean, cov)
    rng = _rng(rng)
    total, var = np.zeros(len(t)), np.zeros(len(t))
    for bits in support.patterns:
        G, h, J, c = region(ws_u, bs_u, bits)
        G = np.vstack([G, -J[output]])  # f <= t  <=>  t - J u - c >= 0 (closed, like the off units)
        offsets = np.column_stack([np.broadcast_to(h, (len(t), len(h))), t - c[output]])
        p, e = _standard_polytope(G, offsets, closed=np.append(~bits, True), rng=rng, **options)
        total += p
        var += e**2
    missing = max(0.0, 1.0 - float(support.probs.sum()))
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
    rng = _rng(rng)
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
    ws, bs = _layers(weights, biases)
    mean, cov = _gaussian(mean, cov)
    _check_options(options, _POLYTOPE_OPTIONS, "class_probabilities")
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
            # ties go to the lowest index, as argmax does: z_k > z_j for j < k, z_k >= z_j for j > k
            closed = np.concatenate([~bits, np.arange(n_out)[others] > k])
            p, e = _standard_polytope(Gk, hk, closed=closed, rng=rng, **options)
            total[k] += p[0]
            var[k] += e[0] ** 2
    _check_mass(float(total.sum()), float(support.probs.sum()),
                float(np.sqrt(var.sum() + (support.errors**2).sum())), "class_probabilities")
    missing = max(0.0, 1.0 - float(support.probs.sum()))
    return total, np.sqrt(var) + missing


def pattern_codes(patterns) -> np.ndarray:
    r"""Codes :math:`\sum_i a_i 2^i` of bool patterns (unit ``i`` is bit ``i``), the layout of :func:`pattern_pmf`.

    Parameters
    ----------
    patterns : array-like of bool, shape (N, M) or (M,)

    Returns
    -------
    ndarray, shape (N,) (or a 0-d array for one pattern)
        ``int64`` for ``M <= 62``; otherwise an ``object`` array of Python ints (any width), the
        same numbers as :attr:`Support.codes`.
    """
    bits = np.asarray(patterns.detach().cpu() if isinstance(patterns, torch.Tensor) else patterns)
    if bits.ndim not in (1, 2) or (bits.size and not np.isin(bits, (0, 1)).all()):
        raise ValueError(f"patterns must be a 1-D or 2-D array of bools / 0-1 values, got shape {bits.shape}")
    bits = bits.astype(bool)
    single = bits.ndim == 1
    bits = np.atleast_2d(bits)
    if bits.shape[1] <= 62:
        codes = bits.astype(np.int64) @ (np.int64(1) << np.arange(bits.shape[1], dtype=np.int64))
    else:
        codes = np.array([sum(1 << int(i) for i in np.flatnonzero(row)) for row in bits] + [None], dtype=object)[:-1]
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
    ws, bs = _layers(weights, biases)
    patterns = np.atleast_2d(np.asarray(patterns, dtype=bool))
    probs = np.ones(len(patterns)) if probs is None else _numpy(probs, "probs")
    if probs.shape != (len(patterns),):
        raise ValueError(f"probs must have shape ({len(patterns)},) to match patterns, got {probs.shape}")
    atol = _float_arg(atol, "atol")
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
    from scipy import optimize

    G, h, v = _numpy(G, "G"), _numpy(h, "h"), _numpy(direction, "direction")
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
    n, seed = _check_n(n), _int_arg(seed, "seed", 0)
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
    n, seed = _check_n(n), _int_arg(seed, "seed", 0)
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
        Maps (d,) to (d_out,); evaluated in float64 on the device of its parameters (the draws are
        moved there; the result comes back to the CPU as numpy).
    mean, cov : array-like
    n : int
    seed : int

    Returns
    -------
    ndarray, shape (n, min(d_out, d))
    """
    mean, cov = _gaussian(mean, cov)
    n, seed = _check_n(n), _int_arg(seed, "seed", 0)
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    device = next(iter(params.values())).device if params else torch.device("cpu")
    # the draws are made in numpy (the same as mc_network's) and moved explicitly to the model's device
    x = torch.from_numpy(np.concatenate(list(_sample(mean, cov, n, np.random.default_rng(seed))))).to(device)

    def f(xi):
        return torch.func.functional_call(model, params, (xi,))

    jac = torch.vmap(torch.func.jacrev(f))(x)
    return torch.linalg.svdvals(jac).cpu().numpy()

r"""Gaussian polytope probabilities, the numerical core of the orthant chapter (numpy only).

:func:`orthant_probability` is :math:`P(Z > 0)` through scipy's Genz quasi-Monte Carlo
:cite:p:`genz1992numerical` below dimension 12 and through the polytope route from it on (faster
there, with honest errors); :func:`polytope_probability` is :math:`P(G x + h > 0)` for
:math:`x \sim \mathcal N(\mu, \Sigma)`, any number of rows and a possibly singular covariance:
write :math:`x = \mu + C u`, rotate the rows of :math:`G C` to lower-trapezoidal form (rows ordered
tightest first, after Genz and Bretz :cite:p:`genz2009computation`, and an LQ decomposition) and
integrate variable by variable (separation of variables): a closed form with one effective
variable, Gauss-Legendre quadrature between the kinks with two, randomised QMC (scrambled Sobol'
replicates, error = their standard error) beyond. Rows that are constant on the input decide
feasibility directly (``> 0`` for open rows, ``>= 0`` for ``closed`` ones). Everything is seeded
(``rng=0`` by default).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import integrate, optimize, special
from scipy.stats import multivariate_normal, qmc

from ._common import (TOL, as_float64, as_gaussian, cov_factor, operand_scale, row_exponents,
                              row_norms)
from .._validate import integer, numpy_rng, real

__all__ = ["orthant_probability", "polytope_probability", "standard_polytope", "one_factor_orthant",
           "equicorrelated_orthant", "ORTHANT_POLYTOPE_FROM", "ORTHANT_POLYTOPE_POINTS"]

#: Gauss-Legendre rules per piece: the estimate uses the first, its error is the difference to the second.
_GL_RULES = (np.polynomial.legendre.leggauss(20), np.polynomial.legendre.leggauss(10))


#: Standard-normal range integrated by the quadrature route (the mass outside is < 2e-19).
_GL_RANGE = 9.0


#: From this dimension on, :func:`orthant_probability` (``method="auto"``) takes the polytope route.
ORTHANT_POLYTOPE_FROM = 12

#: Sobol' points per replicate of the polytope route of :func:`orthant_probability`.
ORTHANT_POLYTOPE_POINTS = 2**16


def orthant_probability(mean, cov, *, method: str = "auto", rng=0, n_rep: int = 8, abseps: float | None = None,
                        maxpts: int | None = None, n_points: int | None = None,
                        allow_singular: bool = False) -> tuple[float, float]:
    r"""P(Z > 0 componentwise) for :math:`Z \sim \mathcal N(\text{mean}, \text{cov})`.

    Two routes, both returning one standard error over ``n_rep`` independent replicates:

    * ``"scipy"``: dimension 1 is the closed form :math:`\Phi(\mu/\sigma)`; dimension 2 is scipy's
      bivariate normal routine, exact to rounding (``err = 0``); from dimension 3 on it is scipy's
      Genz quasi-Monte Carlo (``multivariate_normal.cdf`` with ``lower_limit=0``)
      :cite:p:`genz1992numerical`, repeated ``n_rep`` times with independent child generators of
      ``rng`` (the public function returns no error estimate and ignores ``releps``).
    * ``"polytope"``: :func:`polytope_probability` with the rows :math:`I` (separation of variables,
      randomised QMC with ``n_points`` Sobol' points per replicate, default
      :data:`ORTHANT_POLYTOPE_POINTS`).
    * ``"auto"`` (default): ``"scipy"`` below dimension :data:`ORTHANT_POLYTOPE_FROM`, ``"polytope"``
      from it on.

    Why that switch: scipy's time grows steeply with the dimension and, from d = 8 on, with the
    correlation, while the polytope route's cost is fixed by its number of points; from d = 12 on
    the polytope route bounds the cost with honest errors, below it scipy is as fast or faster.
    The measurements (time and error against the exact equicorrelated values of
    :func:`equicorrelated_orthant`) are made and kept by ``benchmarks/bench_orthant.py`` and the
    book's performance page, not here, since they depend on the machine.

    Calibration: a standard error from ``n_rep = 8`` replicates makes ``(p - exact) / err`` a
    :math:`t_7` variable; ``tests/test_polytope.py`` checks the default's coverage on both sides
    of the switch, and chapter 3 bounds the calibration of scipy's bars by a chi-square test.

    Parameters
    ----------
    mean : array-like, shape (k,)
    cov : array-like, shape (k, k)
        Symmetric; positive definite unless ``allow_singular``.
    method : {"auto", "scipy", "polytope"}
    rng : int, numpy or torch Generator, default 0
        Seeds the replicates (deterministic by default; ``None`` is refused: the global RNG and
        fresh entropy are never used).
    n_rep : int
        Independent replicates (>= 2; scipy's route uses them for k >= 3).
    abseps, maxpts
        scipy's route only: passed to ``multivariate_normal.cdf`` (scipy's defaults: 1e-5 and
        ``1e6 * k``).
    n_points : int
        Polytope route only: Sobol' points per replicate (a power of 2).
    allow_singular : bool
        Accept a singular ``cov``: scipy's pivoted Cholesky drops zero pivots, the polytope route
        handles it exactly. Without it a singular ``cov`` raises.

    Returns
    -------
    p, err : float
    """
    mean, cov = as_gaussian(mean, cov)
    k = mean.size
    if method not in ("auto", "scipy", "polytope"):
        raise ValueError(f"method must be 'auto', 'scipy' or 'polytope', got {method!r}")
    if method == "auto":
        method = "scipy" if k < ORTHANT_POLYTOPE_FROM else "polytope"
    given = {"abseps": abseps, "maxpts": maxpts} if method == "polytope" else {"n_points": n_points}
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{name} applies only to the {'scipy' if name != 'n_points' else 'polytope'} route; "
                             f"this call (k = {k}) takes the {method} route: choose the route with method= "
                             "(pattern_pmf: orthant_method=)")
    n_rep = integer(n_rep, "n_rep", minimum=2)
    values = np.linalg.eigvalsh(cov)
    if values[0] <= TOL * values[-1] and not allow_singular:
        raise ValueError(f"cov must be positive definite (smallest eigenvalue {values[0]:.3g}); pass "
                         "allow_singular=True for scipy's degenerate route or use polytope_probability")
    if method == "polytope":
        p, err = polytope_probability(np.eye(k), np.zeros(k), mean, cov, n_rep=n_rep, rng=rng,
                                      n_points=ORTHANT_POLYTOPE_POINTS if n_points is None else n_points)
        return float(p), float(err)
    abseps = 1e-5 if abseps is None else real(abseps, "abseps", low=0.0, low_inclusive=True)
    if maxpts is not None:
        maxpts = integer(maxpts, "maxpts", minimum=1)
    rng = numpy_rng(rng)
    if k == 1:
        return float(special.ndtr(mean[0] / np.sqrt(cov[0, 0]))), 0.0
    upper, lower = np.full(k, np.inf), np.zeros(k)
    if k == 2:
        return float(multivariate_normal.cdf(upper, mean, cov, allow_singular=allow_singular, lower_limit=lower)), 0.0
    reps = [multivariate_normal.cdf(upper, mean, cov, allow_singular=allow_singular, maxpts=maxpts, abseps=abseps,
                                    lower_limit=lower, rng=child)
            for child in rng.spawn(n_rep)]
    return float(np.mean(reps)), float(np.std(reps, ddof=1) / np.sqrt(n_rep))


def one_factor_orthant(mean, loadings, residual) -> float:
    r"""Exact :math:`P(Z > 0)` for a one-factor Gaussian: a one-dimensional integral (the reference).

    :math:`Z_i = \mu_i + \lambda_i W + \sqrt{\delta_i} E_i` with :math:`W, E_i` independent standard
    normals, i.e. :math:`Z \sim \mathcal N(\mu, \operatorname{diag}(\delta) + \lambda \lambda^\top)`.
    Given :math:`W = w` the coordinates are independent, so

    .. math:: P(Z > 0) = \int \varphi(w) \prod_i \Phi\big((\mu_i + \lambda_i w) / \sqrt{\delta_i}\big)\, dw.

    The log-integrand is concave (sum of concave terms, curvature <= -1), so the integrand is
    unimodal with Gaussian-or-lighter tails about its peak: adaptive quadrature over
    ``peak +- 12``, rescaled by the peak value, keeps relative accuracy for tiny probabilities
    (four independent units at -8 standard deviations, 1.5e-61, agree with the product of their
    Phi values to 1e-14 relative).

    Parameters
    ----------
    mean : array-like, shape (k,)
    loadings : array-like, shape (k,)
        :math:`\lambda` (signs give negative correlations).
    residual : array-like, shape (k,)
        :math:`\delta > 0`.

    Returns
    -------
    float
    """
    mean, lam, delta = (np.atleast_1d(as_float64(v, n)) for v, n in
                        ((mean, "mean"), (loadings, "loadings"), (residual, "residual")))
    if mean.ndim != 1 or mean.size == 0 or not np.all(np.isfinite(mean)):
        raise ValueError(f"mean must be a finite non-empty 1-D array, got shape {mean.shape}")
    for name, v in (("loadings", lam), ("residual", delta)):
        if v.shape != mean.shape or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be a finite array of shape {mean.shape}, got {v.shape}")
    if np.any(delta <= 0):
        raise ValueError(f"residual must be > 0, got min {delta.min()!r}")
    sd = np.sqrt(delta)

    def log_f(w):
        w = np.asarray(w, dtype=float)
        return -w**2 / 2 + special.log_ndtr((mean + lam * w[..., None]) / sd).sum(-1)

    # the peak lies within 40 of where some unit crosses its mean (w = -mu_i / lambda_i): search that
    # range on a grid, then refine inside the bracketing grid cell (log_f is concave: unimodal)
    moving = lam != 0
    reach = 40.0 + (np.abs(mean[moving] / lam[moving]).max() if moving.any() else 0.0)
    if not np.isfinite(reach) or reach > 1e150:
        raise ValueError("mean too large relative to loadings: |mean_i / loadings_i| must be <= 1e150")
    grid = np.linspace(-reach, reach, 8001)
    with np.errstate(over="ignore"):
        values = log_f(grid)
    i = int(np.argmax(values))
    if not np.isfinite(values[i]):
        return 0.0  # the integrand underflows everywhere: the probability is below float64's range
    step = grid[1] - grid[0]
    peak = optimize.minimize_scalar(lambda w: -log_f(w), bounds=(grid[i] - step, grid[i] + step),
                                    method="bounded", options={"xatol": 1e-10 * max(1.0, step)}).x
    peak = peak if log_f(peak) >= values[i] else grid[i]
    top = float(log_f(peak))
    value, _ = integrate.quad(lambda w: np.exp(log_f(w) - top), peak - 12, peak + 12, epsabs=0,
                              epsrel=1e-13, limit=400, points=[peak])
    log_p = np.log(value) + top - 0.5 * np.log(2 * np.pi) if value > 0 else -np.inf
    return float(np.exp(log_p))


def equicorrelated_orthant(k: int, rho: float, mu: float = 0.0) -> float:
    r"""Exact :math:`P(Z > 0)` for :math:`Z \sim \mathcal N(\mu \mathbf 1, (1 - \rho) I + \rho \mathbf 1 \mathbf 1^\top)`.

    The one-factor case :math:`\lambda_i = \sqrt\rho`, :math:`\delta_i = 1 - \rho` of
    :func:`one_factor_orthant`; at :math:`\mu = 0` it is :math:`1 / (k + 1)` for
    :math:`\rho = 1/2`. ``rho`` in [0, 1), ``k >= 1``.
    """
    k = integer(k, "k", minimum=1)
    rho = real(rho, "rho", low=0.0, low_inclusive=True, high=1.0, high_inclusive=False)
    mu = real(mu, "mu")
    return one_factor_orthant(np.full(k, mu), np.full(k, np.sqrt(rho)), np.full(k, 1 - rho))


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


def _truncated_normal_quantile(lo, hi, w):
    """Quantile ``w`` of the standard normal restricted to [lo, hi], accurate in both tails.

    Above 0 the interval is mapped through the upper tail (Phi(-x)), so an interval such as
    [8, 9] keeps its relative precision; through Phi itself 1 - Phi(8) rounds to 1e-16 steps and
    the sampled variable (and every later bound) would be wrong, as would rare-event estimates."""
    upper = lo > 0
    with np.errstate(invalid="ignore"):
        t_lo, t_hi = special.ndtr(np.where(upper, -lo, lo)), special.ndtr(np.where(upper, -hi, hi))
        # lower side: Phi(lo) + w (Phi(hi) - Phi(lo)); upper side: Phi(-lo) - w (Phi(-lo) - Phi(-hi))
        u = np.where(upper, t_lo - w * (t_lo - t_hi), t_lo + w * (t_hi - t_lo))
        q = special.ndtri(np.clip(u, 1e-300, 1 - 1e-16))
    return np.where(upper, -q, q)


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
            v[:, :, j] = _truncated_normal_quantile(lo, hi, w[:, j])
    estimates = weight.reshape(len(c), n_rep, n_points).mean(-1)
    return estimates.mean(1), estimates.std(1, ddof=1) / np.sqrt(n_rep)


_STEEP_LEVELS = np.array([0.0, -1.0, 1.0, -2.0, 2.0, -4.0, 4.0, -8.0, 8.0])


def _quadrature_2d(lower, c, last):
    """Two effective variables: integrate phi(v0) [Phi(hi(v0)) - Phi(lo(v0))]^+ piecewise; c (B, k) -> (B,).

    The bound of row i on v1 is the line (-c_i - L_i0 v0) / L_i1 in v0, so the integrand is smooth
    between the points where two active bounds cross; those points, a grid of spacing 1.5 and the points
    where a bound line crosses the levels 0, +-1, +-2, +-4, +-8 (steep lines) split the range. A batch
    whose regions are all empty or of measure zero (the width hi - lo, concave in v0, is nowhere
    positive: a cone's boundary ray in a zero-bias network) returns exact zeros without integrating;
    integrated, such a region gave rounding noise (~1e-19) instead of 0."""
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
    # the width hi1 - lo1 is concave in v0: its largest value on [lo0, hi0] is at an end or a crossing,
    # so where it is nowhere positive the region is empty and the integral exactly 0 (skipped)
    ends_lo, ends_hi = _bounds(t1, c[:, None, second], t0 * np.stack([lo0, hi0], 1)[..., None])
    with np.errstate(invalid="ignore"):
        widest = np.maximum(np.where(inside, hi1 - lo1, -np.inf).max(1, initial=-np.inf), (ends_hi - ends_lo).max(1))
    empty = (widest <= 0) | (lo0 >= hi0)
    if np.all(empty):
        return np.zeros(len(c)), np.zeros(len(c))
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
    err = np.abs(p - integral(*_GL_RULES[1]))
    p[empty], err[empty] = 0.0, 0.0  # a region shown empty is exactly 0, also beside non-empty ones
    return p, err


def standard_polytope(a, c, *, closed=None, method="auto", n_points=1024, n_rep=8, rng=0, scale=None,
                      offset_scale=None):
    r"""Polytope probability in standard coordinates: :math:`P(a u + c > 0)` for :math:`u \sim \mathcal N(0, I_r)`.

    The core of :func:`polytope_probability` (which maps :math:`x = \mu + C u` to this form), for
    callers that already hold the standardised rows (regions of a standardised network).

    Parameters
    ----------
    a : ndarray, shape (k, r)
    c : ndarray, shape (k,) or (B, k)
        Offsets; a batch shares ``a``.
    closed : array-like of bool, shape (k,), optional
        Rows that are ``>= 0`` instead of ``> 0``. The distinction matters only for rows that are
        constant (below), which decide feasibility directly: an open row needs ``c_i > 0``, a
        closed row ``c_i >= 0``.
    method, n_points, n_rep, rng
        As in :func:`polytope_probability`.
    scale : array-like, shape (k,), optional
        Magnitude of the operands that produced each row of ``a`` (e.g. ``|G_i| |C|`` for
        ``a = G C``; see ``operand_scale``). Constancy is judged relative to each row's own scale,
        never against an absolute threshold, so the answer does not depend on the units: row ``i``
        is constant when :math:`|a_i| \le 10^{-10} \max(\text{scale}_i, \min_b |c_{bi}|)`.
        The second term is exact whatever ``scale``: then :math:`\Phi(c_i / |a_i|)` is 0 or 1 to
        rounding. The first catches rounding noise of rows that are 0 in exact arithmetic.
        Default: only the second term (``a`` taken as exact).
    offset_scale : array-like, shape (k,) or (B, k), optional
        Magnitude of the operands of ``c`` (e.g. ``|G_i| |mu| + |h_i|``); a constant row's offset
        within ``1e-12`` of it counts as 0 (a cancellation). Default: offsets taken as exact.

    Returns
    -------
    p, err : ndarray, shape (B,)
    """
    if method not in ("auto", "exact", "quadrature", "qmc"):
        raise ValueError(f"method must be 'auto', 'exact', 'quadrature' or 'qmc', got {method!r}")
    n_points, n_rep = integer(n_points, "n_points", minimum=2), integer(n_rep, "n_rep", minimum=2)
    if n_points & (n_points - 1):
        raise ValueError(f"n_points must be a power of 2 >= 2, got {n_points!r}")
    c = np.atleast_2d(c)
    closed = np.zeros(a.shape[0], bool) if closed is None else np.asarray(closed, dtype=bool)
    if closed.shape != (a.shape[0],):
        raise ValueError(f"closed must be a bool mask of shape ({a.shape[0]},), got {closed.shape}")
    norms = row_norms(a)
    row_scale = np.zeros(a.shape[0]) if scale is None else np.broadcast_to(scale, norms.shape)
    # relative to each row's own scale: operand noise, or an offset that decides the row outright
    zero = norms <= TOL * np.maximum(row_scale, np.abs(c).min(axis=0, initial=np.inf))
    tol = 0.0 if offset_scale is None else 1e-12 * np.broadcast_to(offset_scale, c.shape)[:, zero]
    constant = c[:, zero]
    feasible = np.all(np.where(closed[zero], constant >= -tol, constant > tol), axis=1).astype(float)
    a, c = a[~zero] / norms[~zero, None], c[:, ~zero] / norms[~zero]
    if a.shape[0] == 0:
        return feasible, np.zeros(len(c))
    if a.shape[0] < a.shape[1]:  # a u has covariance a a^T: replace a by a (k, rank) factor of it
        values, vectors = np.linalg.eigh(a @ a.T)
        keep = values > TOL * values[-1]
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
        p, err = _qmc_probability(lower, c, last, n_points, n_rep, numpy_rng(rng))
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
    rng : int, numpy or torch Generator, default 0
        Randomises the QMC replicates; the default makes results reproducible (``None``: fresh
        entropy, scipy's convention; the global RNG is never used).

    Returns
    -------
    p, err : ndarray, shape () or (B,)
        Probability and one standard error (quadrature: difference to half the nodes).
    """
    mean, cov = as_gaussian(mean, cov)
    G = as_float64(G, "G")
    h = as_float64(h, "h")
    if G.ndim != 2 or G.shape[1] != mean.size or not np.all(np.isfinite(G)):
        raise ValueError(f"G must be a finite (k, {mean.size}) array to match mean, got shape {G.shape}")
    if h.shape[-1:] != G.shape[:1] or h.ndim not in (1, 2):
        raise ValueError(f"h must have shape ({G.shape[0]},) or (B, {G.shape[0]}) to match G, got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError(f"h must be finite, got {h.ravel()[np.flatnonzero(~np.isfinite(h))[0]]}")
    # each row G_i x + h_i > 0 divided by a power of 2 (exact, same event): no overflow or underflow later
    shift = row_exponents(np.maximum(np.abs(G).max(axis=1), np.abs(np.atleast_2d(h)).max(axis=0)))
    G, h = np.ldexp(G, -shift[:, None]), np.ldexp(h, -shift)
    factor = cov_factor(cov)
    offset_scale = np.abs(G) @ np.abs(mean) + np.abs(np.atleast_2d(h))
    p, err = standard_polytope(G @ factor, np.atleast_2d(G @ mean + h), closed=closed, method=method,
                               n_points=n_points, n_rep=n_rep, rng=rng, scale=operand_scale(G, factor),
                               offset_scale=offset_scale)
    return (p[0], err[0]) if h.ndim == 1 else (p, err)

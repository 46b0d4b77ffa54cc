"""``nbsupport.orthant.polytope``: orthant and polytope probabilities against closed forms (1-3 D), exact
quadrature, scipy and Monte Carlo with explicit bounds.

Bounds and seeds: see ``orthant_reference``."""

import math
from itertools import product
import warnings

import numpy as np
import pytest
from scipy import integrate, special, stats

from nbsupport.orthant import orthant_probability, polytope_probability, support_search
from nbsupport.orthant.polytope import ORTHANT_POLYTOPE_FROM, equicorrelated_orthant, one_factor_orthant
from orthant_reference import Z, _gaussian, _network, _owen_bivariate, _within


def test_orthant_closed_forms_1d_2d():
    p, err = orthant_probability([0.7], [[2.0]])
    assert err == 0 and p == pytest.approx(0.5 * (1 + math.erf(0.7 / math.sqrt(2.0) / math.sqrt(2))), abs=1e-15)
    for rho in (-0.9, -0.3, 0.0, 0.5, 0.95):
        p, _ = orthant_probability([0, 0], [[1, rho], [rho, 1]])
        assert p == pytest.approx(0.25 + math.asin(rho) / (2 * math.pi), abs=1e-12)
    mean, cov = np.array([0.4, -1.1]), np.array([[2.0, -0.6], [-0.6, 0.5]])
    sd = np.sqrt(np.diag(cov))
    rho = cov[0, 1] / (sd[0] * sd[1])
    # P(X > 0, Y > 0) = P(-X < 0, -Y < 0) = Phi_2(mu_1 / s_1, mu_2 / s_2; rho)
    owen = _owen_bivariate(mean[0] / sd[0], mean[1] / sd[1], rho)
    quad = integrate.quad(lambda x: special.ndtr((mean[1] + rho * sd[1] * x) / (sd[1] * np.sqrt(1 - rho**2)))
                          * np.exp(-x**2 / 2) / np.sqrt(2 * np.pi), -mean[0] / sd[0], np.inf, epsabs=1e-14)[0]
    p, _ = orthant_probability(mean, cov)
    assert p == pytest.approx(owen, abs=1e-12) and p == pytest.approx(quad, abs=1e-10)


def test_orthant_3d_closed_form_and_determinism():
    cov = np.array([[1.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 1.0]])
    exact = 1 / 8 + (math.asin(0.5) + math.asin(-0.3) + math.asin(0.2)) / (4 * math.pi)
    p, err = orthant_probability(np.zeros(3), cov, rng=0)
    assert 0 < err < 1e-4 and abs(p - exact) <= Z * err + 1e-6
    assert orthant_probability(np.zeros(3), cov, rng=0) == (p, err)


def test_orthant_4d_against_monte_carlo():
    mean, cov = _gaussian(4, seed=1)
    p, err = orthant_probability(mean, cov, rng=1)
    n = 400_000
    x = np.random.default_rng(2).multivariate_normal(mean, cov, size=n)
    assert _within(p, (x > 0).all(1).mean(), n, err)


def test_one_factor_orthant_against_closed_forms_and_monte_carlo():
    """The 1-D integral reference against what is known without it: rho = 1/2 gives 1 / (k + 1);
    k = 2, 3 the arcsine formulas (Sheppard; Childs' trivariate); rho = 0 a product of Phi values
    (also in the far tail, 1e-61, to 1e-12 relative); a heterogeneous one-factor covariance with
    signed loadings against 400 000 draws."""
    for k in (1, 2, 5, 12, 30):
        assert equicorrelated_orthant(k, 0.5) == pytest.approx(1 / (k + 1), abs=1e-13)
    for rho in (0.1, 0.7, 0.95):
        assert equicorrelated_orthant(2, rho) == pytest.approx(0.25 + math.asin(rho) / (2 * math.pi), abs=1e-13)
        assert equicorrelated_orthant(3, rho) == pytest.approx(1 / 8 + 3 * math.asin(rho) / (4 * math.pi), abs=1e-13)
    mean = np.array([-8.0, -7.5, -8.5, -8.0])
    assert one_factor_orthant(mean, np.zeros(4), np.ones(4)) == pytest.approx(np.prod(special.ndtr(mean)), rel=1e-12)
    lam, delta, mu = np.array([0.9, -0.4, 0.6, 0.2, -0.8]), np.array([0.5, 1.0, 0.3, 2.0, 0.4]), np.full(5, 0.3)
    cov = np.diag(delta) + np.outer(lam, lam)
    exact = one_factor_orthant(mu, lam, delta)
    n = 400_000
    x = np.random.default_rng(11).multivariate_normal(mu, cov, size=n)
    assert _within(exact, (x > 0).all(1).mean(), n)
    with pytest.raises(ValueError, match="residual"):
        one_factor_orthant(mu, lam, -delta)
    with pytest.raises(ValueError, match="rho"):
        equicorrelated_orthant(3, 1.0)


@pytest.mark.parametrize("k, route", [(5, "scipy"), (ORTHANT_POLYTOPE_FROM, "polytope")])
@pytest.mark.slow
def test_orthant_default_route_and_its_coverage(k, route):
    """The default takes scipy below ORTHANT_POLYTOPE_FROM dimensions and the polytope route from it on,
    and its reported errors cover exact values at the rate they claim.

    A standard error from 8 replicates makes (p - exact) / err a t_7 variable, so |p - exact| <= t err with
    t = t_{7, 0.975} holds with probability 0.95. Over n independent cases (distinct seeds) the misses
    are Binomial(n, 0.05); the test allows the largest count whose upper tail is still above 1e-3."""
    cases = [(rho, mu) for rho in (0.2, 0.5, 0.8, 0.9, 0.95) for mu in (-0.3, 0.3)]
    t = stats.t.ppf(0.975, df=7)
    misses = 0
    for seed, (rho, mu) in enumerate(cases):
        mean, cov = np.full(k, mu), (1 - rho) * np.eye(k) + rho
        p, err = orthant_probability(mean, cov, rng=seed)
        if seed == 0:  # the route: the same numbers as asking for it, not those of the other route
            other = "polytope" if route == "scipy" else "scipy"
            assert orthant_probability(mean, cov, method=route, rng=seed) == (p, err)
            assert orthant_probability(mean, cov, method=other, rng=seed)[0] != p
        assert err > 0
        misses += abs(p - equicorrelated_orthant(k, rho, mu)) > t * err
    allowed = int(stats.binom.isf(1e-3, len(cases), 0.05))
    assert misses <= allowed, (misses, allowed)


def test_orthant_route_options():
    with pytest.raises(ValueError, match="method"):
        orthant_probability(np.zeros(3), np.eye(3), method="genz")
    with pytest.raises(ValueError, match="n_points"):
        orthant_probability(np.zeros(3), np.eye(3), n_points=1024)
    with pytest.raises(ValueError, match="maxpts"):
        orthant_probability(np.zeros(3), np.eye(3), method="polytope", maxpts=1000)
    cov = 0.5 * np.eye(3) + 0.5  # correlation 1/2: P = 1/8 + 3 asin(1/2) / (4 pi) = 1/4
    p, err = orthant_probability(np.zeros(3), cov, method="polytope", n_points=2**12, rng=np.int64(1))
    assert abs(p - 0.25) <= Z * err and err > 0


def test_orthant_singular_covariance():
    """scipy's degenerate route (allow_singular=True) against exact values and the polytope route."""
    for v, exact in (([1.0, 1.0, 1.0], 0.5), ([1.0, 1.0, -1.0], 0.0)):
        with pytest.raises(ValueError, match="cov"):
            orthant_probability(np.zeros(3), np.outer(v, v))
        p, _ = orthant_probability(np.zeros(3), np.outer(v, v), allow_singular=True, rng=0)
        assert p == pytest.approx(exact, abs=1e-6)
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((5, 2)), 0.5 * rng.standard_normal(5)
    p_scipy, err_scipy = orthant_probability(b, w @ w.T, allow_singular=True, rng=0)
    p_poly, err_poly = polytope_probability(w, b, np.zeros(2), np.eye(2))
    assert err_poly < 1e-10 and abs(p_scipy - p_poly) <= Z * err_scipy + 2e-5


def test_orthant_bad_input():
    with pytest.raises(ValueError, match="symmetric"):
        orthant_probability([0, 0], [[1, 0.5], [0.2, 1]])
    with pytest.raises(ValueError, match="positive semi-definite"):
        orthant_probability([0, 0], [[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="cov"):
        orthant_probability([0, 0, 0], np.eye(2))
    with pytest.raises(ValueError, match="mean"):
        orthant_probability([[0, 0]], np.eye(2))
    with pytest.raises(ValueError, match="n_rep"):
        orthant_probability(np.zeros(3), np.eye(3), n_rep=1)


def test_polytope_closed_forms():
    # one half-space: Phi((g mu + h) / sqrt(g S g))
    mean, cov = _gaussian(3, seed=4)
    g, h = np.array([[0.3, -1.0, 2.0]]), np.array([0.4])
    p, err = polytope_probability(g, h, mean, cov)
    assert err == 0 and p == pytest.approx(special.ndtr((g @ mean + h)[0] / np.sqrt(g @ cov @ g.T)[0, 0]), abs=1e-14)
    # the 2-D orthant through the quadrature route
    for rho in (-0.8, 0.1, 0.7):
        p, err = polytope_probability(np.eye(2), np.zeros(2), np.zeros(2), [[1, rho], [rho, 1]])
        assert p == pytest.approx(0.25 + math.asin(rho) / (2 * math.pi), abs=1e-12) and err < 1e-12
    # a wedge plus a redundant row and a deterministic row (zero direction)
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    p, _ = polytope_probability(g, [0, 0, 0, 1.0], np.zeros(2), np.eye(2))
    assert p == pytest.approx(0.25, abs=1e-12)
    p, _ = polytope_probability(g, [0, 0, 0, -1.0], np.zeros(2), np.eye(2))
    assert p == 0


def test_polytope_empty_and_singular():
    # x1 > 1 and x1 < 0 (plus a second coordinate): exactly 0 on every route
    g = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    h = np.array([-1.0, 0.0, 0.3])
    for method in ("auto", "qmc"):
        assert polytope_probability(g, h, np.zeros(3), np.eye(3), method=method, rng=0)[0] == 0
    # a rank-1 covariance in 3-D: x = mu + t v, so the polytope is an interval of t
    v, mu = np.array([1.0, 2.0, -1.0]), np.array([0.1, 0.0, 0.2])
    g = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.5], [0.0, 1.0, 1.0]])
    h = np.array([0.2, 1.0, 0.5])
    a, c = g @ v, g @ mu + h  # a_i t + c_i > 0
    lo = max(-ci / ai for ai, ci in zip(a, c) if ai > 0)
    hi = min(-ci / ai for ai, ci in zip(a, c) if ai < 0)
    p, _ = polytope_probability(g, h, mu, np.outer(v, v))
    assert p == pytest.approx(special.ndtr(hi) - special.ndtr(lo), abs=1e-14)


def test_quadrature_route_empty_triangle_is_exactly_zero():
    """x2 > 1 + x1 and x2 < -1 - x1 meet at x1 = -1: with x1 > -t the region is a triangle for t > 1 and
    empty for t <= 1 (no single row or pair of rows shows it). The quadrature route skips empty regions;
    batched and single calls agree with the 1-D integral."""
    g = np.array([[-1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
    h = np.array([[-1.0, -1.0, t] for t in (0.5, 1.0, 2.0)])
    p, err = polytope_probability(g, h, np.zeros(2), np.eye(2))
    assert p[0] == 0 and err[0] == 0 and p[1] == 0 and err[1] == 0
    exact = integrate.quad(lambda u: np.exp(-u**2 / 2) / np.sqrt(2 * np.pi) * (special.ndtr(-1 - u) - special.ndtr(1 + u)),
                           -2, -1, epsabs=1e-15)[0]
    assert p[2] == pytest.approx(exact, abs=1e-13) and err[2] < 1e-12
    assert polytope_probability(g, h[0], np.zeros(2), np.eye(2)) == (0.0, 0.0)
    assert polytope_probability(g, h[2], np.zeros(2), np.eye(2))[0] == pytest.approx(p[2], abs=1e-15)


@pytest.mark.parametrize("d, k", [(2, 6), (3, 3), (3, 7), (4, 9)])
def test_polytope_against_monte_carlo(d, k):
    mean, cov = _gaussian(d, seed=10 + d + k)
    rng = np.random.default_rng(d * k)
    g, h = rng.standard_normal((k, d)), 0.7 * rng.standard_normal(k) + 0.5
    p, err = polytope_probability(g, h, mean, cov, rng=0)
    n = 400_000
    x = np.random.default_rng(1).multivariate_normal(mean, cov, size=n)
    assert p > 1e-3 and _within(p, (x @ g.T + h > 0).all(1).mean(), n, err)


def test_polytope_routes_and_batch_agree():
    mean, cov = _gaussian(2, seed=5)
    rng = np.random.default_rng(6)
    g, h = rng.standard_normal((5, 2)), rng.standard_normal((4, 5)) + 1.0
    p_quad, err_quad = polytope_probability(g, h, mean, cov)
    p_qmc, err_qmc = polytope_probability(g, h, mean, cov, method="qmc", n_points=4096, rng=0)
    assert np.all(err_quad < 1e-11) and np.all(np.abs(p_quad - p_qmc) <= Z * err_qmc + 1e-12)
    single = [polytope_probability(g, hb, mean, cov)[0] for hb in h]
    np.testing.assert_allclose(p_quad, single, atol=1e-15)


def test_polytope_bad_input():
    with pytest.raises(ValueError, match="G"):
        polytope_probability(np.ones((2, 3)), np.zeros(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="h"):
        polytope_probability(np.ones((2, 2)), np.zeros(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="n_points"):
        polytope_probability(np.ones((2, 2)), np.zeros(2), np.zeros(2), np.eye(2), n_points=1000)
    with pytest.raises(ValueError, match="method"):
        polytope_probability(np.eye(3), np.zeros(3), np.zeros(3), np.eye(3), method="quadrature")
    with pytest.raises(ValueError, match="positive semi-definite"):
        polytope_probability(np.eye(2), np.zeros(2), np.zeros(2), -np.eye(2))


def test_orthant_small_probabilities_keep_relative_accuracy():
    """scipy's tolerance is absolute (abseps = 1e-5), yet separation of variables keeps tiny
    probabilities relatively accurate: independent units, exact product of Phi values."""
    mean = np.array([-3.0, -3.5, -2.5, -3.0])
    exact = np.prod(special.ndtr(mean))
    p, _ = orthant_probability(mean, np.eye(4), rng=0)
    assert abs(p - exact) <= 1e-6 * exact
    p, _ = polytope_probability(np.eye(4), np.zeros(4), mean, np.eye(4), rng=0)
    assert abs(p - exact) <= 1e-6 * exact


def test_quadrature_route_on_thin_strips_and_extreme_correlation():
    """Nearly parallel or anti-parallel constraints make the bound on v1 a very steep line in v0;
    the 2-D quadrature must still match the bivariate normal (scipy's 2-D orthant route) and its
    error estimate must not under-report."""
    rng = np.random.default_rng(7)
    cases = [(np.array([[0.2877, -1.1826], [-0.1674, 0.6865]]), np.array([0.636, 0.492]))]
    for rho in (0.9999, -0.9999):
        cases.append((np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]])), np.array([0.3, -0.2])))
    for _ in range(40):
        row = rng.normal(size=2)
        other = -row * rng.uniform(0.3, 3.0) + rng.normal(scale=1e-2, size=2)   # anti-parallel: a thin strip
        cases.append((np.stack([row, other]), rng.normal(size=2)))
    for G, h in cases:
        p, err = polytope_probability(G, h, np.zeros(2), np.eye(2), method="quadrature")
        reference, _ = orthant_probability(h, G @ G.T)
        p, err = float(np.ravel(p)[0]), float(np.ravel(err)[0])
        assert abs(p - reference) <= max(5 * err, 1e-9), (G, h, p, err, reference)


def test_defaults_are_deterministic_and_none_is_fresh_entropy():
    """rng: int or Generator, default 0 (reproducible); a generator's stream changes the QMC
    replicates but neither uses nor advances numpy's global RNG; None (fresh entropy) is refused."""
    mean, cov = _gaussian(4, seed=21)
    g, h = np.random.default_rng(0).standard_normal((5, 4)), np.ones(5)
    assert polytope_probability(g, h, mean, cov) == polytope_probability(g, h, mean, cov)
    assert orthant_probability(mean[:3], cov[:3, :3]) == orthant_probability(mean[:3], cov[:3, :3])
    _, ws, bs = _network((4, 5, 1), seed=0)
    a, b = support_search(ws, bs, mean, cov, eps=0.0), support_search(ws, bs, mean, cov, eps=0.0)
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.errors, b.errors)
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    stream = np.random.default_rng(11)
    fresh = [polytope_probability(g, h, mean, cov, rng=stream)[0] for _ in range(2)]
    assert fresh[0] != fresh[1] and np.array_equal(np.random.get_state()[1], state)
    p0, e0 = polytope_probability(g, h, mean, cov)
    assert abs(fresh[0] - p0) <= Z * np.sqrt(2) * e0
    generator = np.random.default_rng(3)
    assert polytope_probability(g, h, mean, cov, rng=generator) != polytope_probability(g, h, mean, cov, rng=generator)
    with pytest.raises(ValueError, match="rng"):
        polytope_probability(g, h, mean, cov, rng=-1)
    for bad in ("a", None):
        with pytest.raises(ValueError, match="rng"):
            polytope_probability(g, h, mean, cov, rng=bad)


@pytest.mark.parametrize("scale", [1e-22, 1e8])
def test_results_do_not_depend_on_the_scale(scale):
    """Orthant and polytope probabilities are scale-invariant; constancy of a row must be judged
    relative to its own scale. Scale-free references: a half-space is 1/2; the equicorrelated
    orthant with rho = 1/2 is 1 / (k + 1) exactly, at d = 3 (scipy) and d = 12 (polytope route);
    a 2-D polytope equals the same polytope at scale 1 by quadrature (exact to 1e-13)."""
    s = np.sqrt(scale)
    for row in ([[s, 0.0]], [[s, s]]):
        assert polytope_probability(row, [0.0], np.zeros(2), np.eye(2))[0] == pytest.approx(0.5, abs=1e-15)
        assert polytope_probability([[1.0, 0.0]], [0.0], np.zeros(2), scale * np.eye(2))[0] == pytest.approx(0.5)
    R = 0.5 * np.eye(12) + 0.5
    for k in (3, ORTHANT_POLYTOPE_FROM):
        p, err = orthant_probability(np.zeros(k), scale * R[:k, :k], rng=0)
        assert err > 0 and abs(p - 1 / (k + 1)) <= Z * err
    rng = np.random.default_rng(4)
    G, h = rng.standard_normal((6, 2)), 1.0 + np.abs(rng.standard_normal(6))
    mean, cov = _gaussian(2, seed=3)
    p1, e1 = polytope_probability(G, h, mean, cov)
    assert p1 > 0.01 and e1 < 1e-12
    # x -> s x: G x + h > 0 at scale 1 is the same event as G (s x) / s + h > 0 with mean s mu, cov s^2 cov
    ps, es = polytope_probability(G, s * h, s * mean, scale * cov)
    assert abs(ps - p1) < 1e-12 and es < 1e-12
    ps, _ = polytope_probability(G / s, h, s * mean, scale * cov)
    assert abs(ps - p1) < 1e-12


def test_rounding_noise_rows_stay_constant():
    """A row orthogonal to the range of a singular covariance is constant; G C then holds rounding
    noise (~1e-17), which must be judged against the operands' scale, not treated as a half-space:
    cov = v v^T, v = (1, 1) / sqrt 2, row (1, -1) has G x = 0 for every draw. Its constant decides."""
    v = np.array([1.0, 1.0]) / np.sqrt(2)
    cov = np.outer(v, v) * 3.0
    for sc in (1e-20, 1.0, 1e10):
        row = sc * np.array([[1.0, -1.0]])
        # a closed row with constant 0 holds everywhere, an open one nowhere
        assert polytope_probability(row, [0.0], np.zeros(2), cov, closed=[True])[0] == 1.0
        assert polytope_probability(row, [0.0], np.zeros(2), cov)[0] == 0.0
        p, _ = polytope_probability(np.vstack([row, [[sc, sc]]]), [0.0, 0.0], np.zeros(2), cov, closed=[True, False])
        assert p == pytest.approx(0.5, abs=1e-15)


def test_rare_events_keep_relative_accuracy_in_the_upper_tail():
    """Equicorrelated (rho = 1/2, k = 5) orthants down to 2.5e-41 (mean -10): the QMC route's
    estimate is within 5 of its errors of the exact 1-D integral, and those errors stay a few
    per cent of the value. Before the upper-tail fix of the sampling step (Phi(lo) rounded to 1
    for lo > 8) the estimate at mean -10 was 0 +- 1e-50 and at -8 off by 36 % with 0.2 % errors."""
    cov = 0.5 * np.eye(5) + 0.5
    for mu in (-6.0, -8.0, -10.0):
        exact = equicorrelated_orthant(5, 0.5, mu)
        p, err = orthant_probability(np.full(5, mu), cov, method="polytope", n_points=1024, rng=0)
        assert abs(p - exact) <= Z * err and err < 0.1 * exact, (mu, p, err, exact)


# --- review fixes: ill-conditioned covariance and extreme scales (against scipy / closed forms) ---

def _rotation(theta):
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


@pytest.mark.parametrize("small", [1e-11, 1e-14])
@pytest.mark.parametrize("theta", [0.0, 0.7])
def test_ill_conditioned_cov_matches_scipy(small, theta):
    from scipy.stats import multivariate_normal
    R = _rotation(theta)
    cov = R @ np.diag([1.0, small]) @ R.T
    cov = (cov + cov.T) / 2
    G = np.array([[0.0, 1.0]]) @ R.T  # the small direction
    for h in (0.0, 0.5 * np.sqrt(small)):
        p, _ = polytope_probability(G, [h], [0.0, 0.0], cov)
        # P(g.x + h > 0) with g.x ~ N(0, small): Phi(h / sqrt(small)); scipy on the 1-D variance
        ref = 1 - multivariate_normal.cdf(-h, 0.0, G @ cov @ G.T)
        # a rotated cov's entries are rounded at eps: its small variance is known only to ~eps / small
        tol = 1e-6 + (0.0 if theta == 0 else 50 * np.finfo(float).eps / small)
        assert abs(p - ref) < tol, (small, theta, h, p, ref)


@pytest.mark.parametrize("s", [1e-200, 1e-160, 1e155, 1e160, 1e200])
def test_extreme_row_scales_are_scale_free(s):
    from scipy.special import ndtr
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        p, _ = polytope_probability([[s, s]], [s], [0.0, 0.0], np.eye(2))
    assert abs(p - ndtr(1 / np.sqrt(2))) < 1e-12  # s (x1 + x2 + 1) > 0 <=> N(0, 2) > -1


def test_infinite_h_is_blamed_as_not_finite():
    with pytest.raises(ValueError, match="h must be finite"):
        polytope_probability([[1.0]], [np.inf], [0.0], [[1.0]])


def test_one_factor_orthant_far_means_finite_and_right():
    # Z = (30, -30) + W + E: a one-dimensional integral done directly (peak at w = 15)
    f = lambda w: np.exp(-w * w / 2 + special.log_ndtr(30 + w) + special.log_ndtr(w - 30)) / np.sqrt(2 * np.pi)
    ref = integrate.quad(f, 0, 40, epsabs=0, epsrel=1e-12, points=[15], limit=200)[0]
    assert abs(one_factor_orthant([30.0, -30.0], [1.0, 1.0], [1.0, 1.0]) / ref - 1) < 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        # true value ~ exp(-250000): below float64, so exactly 0 (was NaN with overflow warnings)
        assert one_factor_orthant([1e3, -1e3], [1.0, 1.0], [1.0, 1.0]) == 0.0


def test_support_search_zero_cov_blames_cov():
    ws, bs = [np.eye(2), np.ones((1, 2))], [np.zeros(2), np.zeros(1)]
    with pytest.raises(ValueError, match="^cov must not be all zero"):
        support_search(ws, bs, [0.0, 0.0], np.zeros((2, 2)))

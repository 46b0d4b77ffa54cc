"""nbsupport.orthant against closed forms (1-3 D), Monte Carlo with explicit bounds, and torch.

Monte Carlo bounds: a frequency from n draws is compared with a probability p by
|freq - p| <= Z sqrt(p (1 - p) / n) + Z err (err the function's own standard error) with Z = 5,
a two-sided false-alarm rate of 5.7e-7 per entry (<= 1e-3 per test even over 2**10 entries), and
every seed is fixed, so the tests are deterministic. Empirical CDFs use the DKW bound
sup |F_n - F| <= sqrt(log(2 / alpha) / (2 n)) with alpha = 1e-6.
"""

import math
from itertools import product

import numpy as np
import pytest
import torch
from scipy import integrate, special

from nbsupport.models import mlp
from nbsupport.orthant import (MAX_FULL_PMF_UNITS, MassWarning, class_probabilities, jacobian_singular_values,
                               mc_jacobian_singular_values, mc_network, mc_network_pmf, mc_pattern_pmf,
                               mixture_output_cdf, mixture_pattern_pmf, mixture_support_search, mlp_layers,
                               network_patterns, orthant_probability, output_cdf, output_range,
                               pattern_codes, pattern_pmf, polytope_probability, region, support_search,
                               affine_maps)

Z = 5.0


def _within(estimate, freq, n, err=0.0):
    """Binomial Z-sigma bound, with the estimate's own error (p clipped away from 0 for the width)."""
    estimate, freq = np.asarray(estimate), np.asarray(freq)
    p = np.clip(estimate, 1.0 / n, 1.0)
    bound = Z * np.sqrt(p * (1 - p) / n) + Z * np.asarray(err) + 1e-12
    return np.abs(estimate - freq) <= bound


def _gaussian(d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d) * 0.3, scale * (a @ a.T / d + 0.2 * np.eye(d))


def _owen_bivariate(h, k, rho):
    """P(X <= h, Y <= k) for a standard bivariate normal, through Owen's T function (Owen 1956)."""
    def term(x, y):
        return special.owens_t(x, (y - rho * x) / (x * np.sqrt(1 - rho**2)))
    beta = 0.0 if h * k > 0 or (h * k == 0 and h + k >= 0) else 0.5
    return 0.5 * (special.ndtr(h) + special.ndtr(k)) - term(h, k) - term(k, h) - beta


# --------------------------------------------------------------------------------------------- orthant


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


# --------------------------------------------------------------------------------------------- polytope


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


# --------------------------------------------------------------------------------------------- first layer


def test_mc_pattern_pmf_layout_and_independent_units():
    """Independent units (W = I, diagonal cov): P(a) = prod_i Phi(+-mu_i / s_i); unit i is bit i."""
    mean, sd = np.array([0.5, -0.2, 1.0]), np.array([1.0, 0.5, 2.0])
    on = special.ndtr(mean / sd)
    exact = np.array([np.prod([on[i] if (code >> i) & 1 else 1 - on[i] for i in range(3)]) for code in range(8)])
    n = 300_000
    mc = mc_pattern_pmf(np.eye(3), np.zeros(3), mean, np.diag(sd**2), n=n, seed=0)
    assert mc.shape == (8,) and mc.dtype == np.float64 and np.all(_within(exact, mc, n))
    assert np.array_equal(mc, mc_pattern_pmf(np.eye(3), np.zeros(3), mean, np.diag(sd**2), n=n, seed=0))
    always_on = mc_pattern_pmf(np.eye(2), [50.0, 0.0], np.zeros(2), np.eye(2), n=1000, seed=0)
    assert always_on[0::2].sum() == 0  # bit 0 (unit 0) is set in every pattern seen
    for route in ("orthant", "polytope"):
        p, err = pattern_pmf(np.eye(3), np.zeros(3), mean, np.diag(sd**2), method=route, return_err=True, rng=0)
        assert np.all(np.abs(p - exact) <= Z * err + 1e-6)


def test_pattern_pmf_nonsingular_routes_agree_and_match_mc():
    mean, cov = _gaussian(4, seed=7)
    rng = np.random.default_rng(8)
    w, b = rng.standard_normal((3, 4)), 0.5 * rng.standard_normal(3)
    p1, e1 = pattern_pmf(w, b, mean, cov, method="orthant", return_err=True, rng=0)
    p2, e2 = pattern_pmf(w, b, mean, cov, method="polytope", return_err=True, rng=0)
    assert np.all(np.abs(p1 - p2) <= Z * np.hypot(e1, e2) + 1e-6)
    n = 300_000
    assert np.all(_within(p1, mc_pattern_pmf(w, b, mean, cov, n=n, seed=1), n, e1))


@pytest.mark.parametrize("m", [5, 8])
def test_pattern_pmf_singular_exact_zeros_and_region_count(m):
    """m > d = 2: exactly the 1 + m + m(m-1)/2 cells of a generic line arrangement are possible."""
    rng = np.random.default_rng(m)
    angles = np.pi * (np.arange(m) + 0.3 * rng.random(m)) / m  # well-separated directions
    w = np.column_stack([np.cos(angles), np.sin(angles)]) * rng.uniform(0.5, 2.0, (m, 1))
    b = -np.einsum("ij,ij->i", w, rng.uniform(-0.5, 0.5, (m, 2)))  # each line through a point near 0
    mean, cov = np.zeros(2), 2.0 * np.eye(2)
    # every pairwise intersection lies within 3 standard deviations, so every cell has visible mass
    crossings = [np.linalg.solve(w[[i, j]], -b[[i, j]]) for i in range(m) for j in range(i)]
    assert max(np.linalg.norm(x) for x in crossings) < 3 * np.sqrt(2.0)
    p, err = pattern_pmf(w, b, mean, cov, return_err=True)
    assert np.count_nonzero(p) == 1 + m + m * (m - 1) // 2
    assert abs(p.sum() - 1) <= Z * np.sqrt((err**2).sum()) + 1e-12
    n = 400_000
    mc = mc_pattern_pmf(w, b, mean, cov, n=n, seed=2)
    assert np.all(mc[p == 0] == 0) and np.all(_within(p, mc, n, err))


def test_pattern_pmf_singular_3d_qmc_route():
    mean, cov = _gaussian(3, seed=9)
    rng = np.random.default_rng(10)
    w, b = rng.standard_normal((6, 3)), 0.5 * rng.standard_normal(6)
    p, err = pattern_pmf(w, b, mean, cov, return_err=True, rng=0)
    n = 400_000
    mc = mc_pattern_pmf(w, b, mean, cov, n=n, seed=3)
    assert np.all(mc[p == 0] == 0) and np.all(_within(p, mc, n, err))
    assert abs(p.sum() - 1) <= Z * np.sqrt((err**2).sum()) + 1e-12


def test_mixture_pattern_pmf_against_monte_carlo():
    rng = np.random.default_rng(11)
    w, b = rng.standard_normal((4, 2)), 0.3 * rng.standard_normal(4)
    weights, means = np.array([0.3, 0.7]), np.array([[-1.0, 0.5], [1.0, -0.2]])
    covs = np.array([0.3 * np.eye(2), [[0.5, 0.2], [0.2, 0.4]]])
    p, err = mixture_pattern_pmf(w, b, weights, means, covs, return_err=True)
    n = 400_000
    draw = np.random.default_rng(12)
    comp = draw.random(n) < weights[0]
    x = np.where(comp[:, None], draw.multivariate_normal(means[0], covs[0], n), draw.multivariate_normal(means[1], covs[1], n))
    codes = ((x @ w.T + b) > 0) @ (1 << np.arange(4))
    assert np.all(_within(p, np.bincount(codes, minlength=16) / n, n, err))
    with pytest.raises(ValueError, match="weights"):
        mixture_pattern_pmf(w, b, [0.5, 0.6], means, covs)
    with pytest.raises(ValueError, match="means"):
        mixture_pattern_pmf(w, b, [1.0], means, covs)


def test_pattern_pmf_bad_input():
    with pytest.raises(ValueError, match="support_search"):
        pattern_pmf(np.ones((MAX_FULL_PMF_UNITS + 1, 2)), np.zeros(MAX_FULL_PMF_UNITS + 1), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="weight"):
        pattern_pmf(np.ones((3, 2)), np.zeros(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="bias"):
        pattern_pmf(np.ones((3, 2)), np.zeros(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="symmetric"):
        pattern_pmf(np.ones((3, 2)), np.zeros(3), np.zeros(2), [[1, 0.1], [0, 1]])
    with pytest.raises(ValueError, match="orthant"):
        pattern_pmf(np.ones((3, 2)), np.zeros(3), np.zeros(2), np.eye(2), method="orthant")
    with pytest.raises(ValueError, match="n must"):
        mc_pattern_pmf(np.ones((3, 2)), np.zeros(3), np.zeros(2), np.eye(2), n=0, seed=0)
    with pytest.raises(ValueError, match="n_rep"):      # options reach the core's checks from every caller
        pattern_pmf(np.ones((3, 2)), np.zeros(3), np.zeros(2), np.eye(2), method="polytope", n_rep=1)
    with pytest.raises(ValueError, match="n_points"):
        pattern_pmf(np.ones((3, 2)), np.zeros(3), np.zeros(2), np.eye(2), method="polytope", n_points=0)
    with pytest.raises(ValueError, match="weights"):
        mixture_pattern_pmf(np.ones((3, 2)), np.zeros(3), [np.nan, 1.0], [np.zeros(2)] * 2, [np.eye(2)] * 2)


# --------------------------------------------------------------------------------------------- networks


def _network(widths, seed):
    torch.manual_seed(seed)
    net = mlp(list(widths)).double()
    return net, *mlp_layers(net)


@pytest.mark.parametrize("widths", [(3, 5, 4, 2), (3, 4, 5, 3, 2)])
def test_region_is_lemma_1_and_gives_the_affine_map(widths):
    net, ws, bs = _network(widths, seed=0)
    x = torch.randn(200, 3, dtype=torch.float64)
    bits = network_patterns(ws, bs, x.numpy())
    jac = torch.vmap(torch.func.jacrev(net))(x)
    for i in range(0, 200, 20):
        G, h, J, c = region(ws, bs, bits[i])
        assert np.all(G @ x[i].numpy() + h > 0)  # the sample lies in its own polytope
        np.testing.assert_allclose(J @ x[i].numpy() + c, net(x[i]).detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(J, jac[i].detach().numpy(), atol=1e-12)
        other = bits[i].copy()
        other[3] = not other[3]
        G2, h2, _, _ = region(ws, bs, other)
        assert not np.all(G2 @ x[i].numpy() + h2 > 0)
    with pytest.raises(ValueError, match="pattern"):
        region(ws, bs, bits[0][:5])
    with pytest.raises(ValueError, match="biases"):
        region(ws, bs[:-1] + [np.zeros(3)], bits[0])


def _mc_codes(bits):
    return bits @ (1 << np.arange(bits.shape[1]))


@pytest.mark.parametrize("widths", [(2, 6, 5, 1), (3, 4, 3, 1), (2, 4, 4, 3, 1)])
def test_support_search_full_against_monte_carlo(widths):
    _, ws, bs = _network(widths, seed=1)
    mean, cov = _gaussian(widths[0], seed=12)
    sup = support_search(ws, bs, mean, cov, eps=0.0, rng=0)
    n = 300_000
    _, bits, _ = mc_network(ws, bs, mean, cov, n=n, seed=4)
    codes, counts = np.unique(_mc_codes(bits), return_counts=True)
    found = dict(zip(sup.codes, zip(sup.probs, sup.errors)))
    assert set(codes) <= set(found)  # every pattern Monte Carlo saw was found
    for code, count in zip(codes, counts):
        p, err = found[code]
        assert _within(p, count / n, n, err)
    assert abs(sup.probs.sum() - 1) <= Z * np.sqrt((sup.errors**2).sum()) + 1e-9
    assert np.all(np.diff(sup.probs) <= 0)
    chunked_codes, freqs = mc_network_pmf(ws, bs, mean, cov, n=n, seed=4)  # same draws, chunked counting
    assert np.array_equal(chunked_codes, codes) and np.array_equal(freqs, counts / n)


def test_support_search_stops_at_the_requested_mass():
    _, ws, bs = _network((2, 8, 8, 1), seed=2)
    mean, cov = np.array([0.2, -0.1]), 0.5 * np.eye(2)
    sup = support_search(ws, bs, mean, cov, eps=0.05)
    assert sup.probs.sum() >= 0.95
    n = 200_000
    _, bits, _ = mc_network(ws, bs, mean, cov, n=n, seed=5)
    codes, counts = np.unique(_mc_codes(bits), return_counts=True)
    # any pattern with mass clearly above eps must have been found
    big = codes[counts / n > 0.05 + Z * np.sqrt(0.05 / n)]
    assert set(big) <= set(sup.codes)
    with pytest.raises(ValueError, match="eps"):
        support_search(ws, bs, mean, cov, eps=1.0)
    with pytest.raises(ValueError, match="mean"):
        support_search(ws, bs, np.zeros(3), np.eye(3))


def test_output_cdf_against_empirical_cdf():
    _, ws, bs = _network((2, 6, 6, 1), seed=3)
    mean, cov = np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.3]])
    sup = support_search(ws, bs, mean, cov, eps=0.0)
    n = 200_000
    _, _, out = mc_network(ws, bs, mean, cov, n=n, seed=6)
    t = np.quantile(out[:, 0], np.linspace(0.01, 0.99, 25))
    cdf, err = output_cdf(ws, bs, mean, cov, t, sup)
    empirical = (out[:, 0][None, :] <= t[:, None]).mean(1)
    dkw = np.sqrt(np.log(2 / 1e-6) / (2 * n))
    assert np.all(np.abs(cdf - empirical) <= dkw + Z * err) and np.all(np.diff(cdf) >= -1e-12)
    with pytest.raises(ValueError, match="output"):
        output_cdf(ws, bs, mean, cov, t, sup, output=1)


def test_class_probabilities_against_monte_carlo():
    _, ws, bs = _network((3, 5, 3), seed=4)
    mean, cov = _gaussian(3, seed=13)
    sup = support_search(ws, bs, mean, cov, eps=0.0, rng=0)
    probs, err = class_probabilities(ws, bs, mean, cov, sup, rng=0)
    n = 300_000
    _, _, out = mc_network(ws, bs, mean, cov, n=n, seed=7)
    freq = np.bincount(out.argmax(1), minlength=3) / n
    assert np.all(_within(probs, freq, n, err)) and abs(probs.sum() - 1) <= Z * np.sqrt((err**2).sum()) + 1e-9


def test_jacobian_singular_values_match_torch():
    net, ws, bs = _network((3, 6, 5, 2), seed=5)
    mean, cov = _gaussian(3, seed=14)
    mc = mc_jacobian_singular_values(net, mean, cov, n=300, seed=8)
    x, bits, _ = mc_network(ws, bs, mean, cov, n=300, seed=8)  # the same draws
    np.testing.assert_allclose(jacobian_singular_values(ws, bs, bits), mc, atol=1e-12)
    reference = torch.autograd.functional.jacobian(net, torch.from_numpy(x[0]))
    np.testing.assert_allclose(mc[0], torch.linalg.svdvals(reference).numpy(), atol=1e-12)
    assert mc.shape == (300, 2)


def test_mlp_layers_and_network_patterns():
    net, ws, bs = _network((2, 3, 1), seed=6)
    assert [w.shape for w in ws] == [(3, 2), (1, 3)] and ws[0].dtype == np.float64
    x = np.random.default_rng(0).standard_normal((10, 2))
    expected = (x @ ws[0].T + bs[0]) > 0
    assert np.array_equal(network_patterns(ws, bs, x), expected)
    with pytest.raises(ValueError, match="bias"):
        mlp_layers(mlp([2, 3, 1], bias=False))
    with pytest.raises(ValueError, match="hidden"):
        support_search(ws[:1], bs[:1], np.zeros(2), np.eye(2))


def test_product_is_independent_reference_for_search():
    """A single hidden layer with W = I: patterns are independent bits, P = prod Phi (no sampling)."""
    mean, sd = np.array([0.3, -0.4, 0.1]), np.array([1.0, 0.7, 1.5])
    ws, bs = [np.eye(3), np.ones((1, 3))], [np.zeros(3), np.zeros(1)]
    sup = support_search(ws, bs, mean, np.diag(sd**2), eps=0.0, rng=0)
    on = special.ndtr(mean / sd)
    for bits, p, err in zip(sup.patterns, sup.probs, sup.errors):
        exact = np.prod(np.where(bits, on, 1 - on))
        assert abs(p - exact) <= Z * err + 1e-9
    assert len(sup.probs) == 8 and {tuple(b) for b in sup.patterns} == set(product([False, True], repeat=3))


def test_mixture_support_and_cdf_against_monte_carlo():
    _, ws, bs = _network((2, 5, 4, 1), seed=7)
    pis, means = np.array([0.6, 0.4]), np.array([[-0.5, 0.3], [0.8, -0.4]])
    covs = np.array([[[0.3, 0.1], [0.1, 0.2]], 0.2 * np.eye(2)])
    merged, components = mixture_support_search(ws, bs, pis, means, covs, eps=0.0)
    n = 300_000
    draw = np.random.default_rng(15)
    comp = draw.random(n) < pis[0]
    x = np.where(comp[:, None], draw.multivariate_normal(means[0], covs[0], n), draw.multivariate_normal(means[1], covs[1], n))
    codes, counts = np.unique(_mc_codes(network_patterns(ws, bs, x)), return_counts=True)
    found = dict(zip(merged.codes, zip(merged.probs, merged.errors)))
    assert set(codes) <= set(found) and abs(merged.probs.sum() - 1) < 1e-9 and np.all(np.diff(merged.probs) <= 0)
    for code, count in zip(codes, counts):
        assert _within(found[code][0], count / n, n, found[code][1])
    h = np.maximum(x @ ws[0].T + bs[0], 0)
    out = (np.maximum(h @ ws[1].T + bs[1], 0) @ ws[2].T + bs[2])[:, 0]
    t = np.quantile(out, np.linspace(0.02, 0.98, 15))
    cdf, err = mixture_output_cdf(ws, bs, pis, means, covs, t, components)
    dkw = np.sqrt(np.log(2 / 1e-6) / (2 * n))
    assert np.all(np.abs(cdf - (out[None, :] <= t[:, None]).mean(1)) <= dkw + Z * err)
    with pytest.raises(ValueError, match="components"):
        mixture_output_cdf(ws, bs, pis, means, covs, t, components[:1])
    with pytest.raises(ValueError, match="mix_weights"):
        mixture_support_search(ws, bs, [0.5, 0.4], means, covs)


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


# --------------------------------------------------------------------------------------------- boundary convention
# A unit is off when z <= 0. These networks have pre-activations that are constant on whole regions
# (zero biases behind an all-off layer, dead layers), where the closed inequality decides; under the
# open one (the code before the fix) such regions got probability 0 and the search missed them.


def _zero_bias(widths, seed, zero_layers=None):
    _, ws, bs = _network(widths, seed)
    zero_layers = range(len(bs)) if zero_layers is None else zero_layers
    return ws, [np.zeros_like(b) if l in zero_layers else b for l, b in enumerate(bs)]


def _compare_with_monte_carlo(ws, bs, mean, cov, sup, n, seed):
    codes, freqs = mc_network_pmf(ws, bs, mean, cov, n=n, seed=seed)
    found = dict(zip(sup.codes, zip(sup.probs, sup.errors)))
    missing = {c: f for c, f in zip(codes.tolist(), freqs) if c not in found}
    assert not missing, f"patterns seen by Monte Carlo but not found: {missing}"
    for code, freq in zip(codes.tolist(), freqs):
        assert _within(found[code][0], freq, n, found[code][1]), (code, found[code], freq)
    # found patterns Monte Carlo never saw must be rare: P(no hit) = (1 - p)^n < 1e-6 needs p < 14 / n
    unseen = [p for c, (p, _) in found.items() if c not in set(codes.tolist())]
    assert all(p < 14 / n for p in unseen)
    assert abs(sup.probs.sum() - 1) <= Z * np.sqrt((sup.errors**2).sum()) + 1e-9


@pytest.mark.filterwarnings("error::nbsupport.orthant.MassWarning")
@pytest.mark.parametrize("widths, at_apex", [((2, 2, 3, 1), True), ((2, 2, 3, 1), False), ((3, 4, 4, 1), True),
                                              ((2, 3, 3, 3, 1), True), ((3, 5, 4, 3, 1), False)])
def test_support_search_zero_bias_networks(widths, at_apex):
    """All biases zero: regions are cones meeting at 0, layers behind an all-off layer are constant 0.
    The issue's reproducer is (2, 2, 3, 1) at the apex: mass 0.86 found, pattern 0 (MC 0.136) missing."""
    ws, bs = _zero_bias(widths, seed=0)
    mean = np.zeros(widths[0]) if at_apex else np.linspace(0.3, -0.2, widths[0])
    cov = _gaussian(widths[0], seed=20)[1]
    sup = support_search(ws, bs, mean, cov, eps=0.0, rng=0)
    _compare_with_monte_carlo(ws, bs, mean, cov, sup, n=200_000, seed=9)


@pytest.mark.filterwarnings("error::nbsupport.orthant.MassWarning")
@pytest.mark.parametrize("widths, zero_layers", [((2, 2, 3, 1), [1]), ((2, 4, 3, 2, 1), [2]), ((3, 3, 3, 3, 1), [1, 2])])
def test_support_search_dead_layers(widths, zero_layers):
    """Only some layers without bias, and the first layer pushed off (negative biases) so that all-off
    layers, and with them constant rows, carry visible mass."""
    ws, bs = _zero_bias(widths, seed=1, zero_layers=zero_layers)
    bs[0] = bs[0] - 0.8
    mean, cov = np.zeros(widths[0]), np.eye(widths[0])
    sup = support_search(ws, bs, mean, cov, eps=0.0, rng=0)
    _compare_with_monte_carlo(ws, bs, mean, cov, sup, n=200_000, seed=10)


def test_dead_layer_with_zero_weights_is_always_off():
    """Layer 2 has W = 0, b = 0: its units are constant 0, hence off on every region."""
    _, ws, bs = _network((2, 3, 2, 1), seed=2)
    ws[1], bs[1] = np.zeros_like(ws[1]), np.zeros_like(bs[1])
    sup = support_search(ws, bs, np.zeros(2), np.eye(2), eps=0.0)
    assert abs(sup.probs.sum() - 1) < 1e-9 and not sup.patterns[:, 3:].any()
    # first layer: a unit with a zero row and zero bias is off, exactly
    p = pattern_pmf(np.array([[1.0, 0.0], [0.0, 0.0]]), np.zeros(2), np.zeros(2), np.eye(2))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0, 0.0], atol=1e-14)


def test_output_cdf_and_class_probabilities_on_constant_regions():
    """Behind an all-off last hidden layer the output is the constant b_L: the CDF jumps there (f <= t
    is closed) and tied logits go to the lowest class, as argmax does."""
    ws, bs = _zero_bias((2, 3, 3, 2), seed=3)
    mean, cov = np.array([0.2, -0.1]), np.eye(2)
    sup = support_search(ws, bs, mean, cov, eps=0.0)
    n = 200_000
    _, _, out = mc_network(ws, bs, mean, cov, n=n, seed=11)
    atom = (out[:, 0] == 0).mean()
    assert atom > 0.05  # the constant region carries visible mass
    t = np.array([-1e-3, 0.0, 1e-3])
    cdf, err = output_cdf(ws, bs, mean, cov, t, sup)
    dkw = np.sqrt(np.log(2 / 1e-6) / (2 * n))
    assert np.all(np.abs(cdf - (out[:, 0][None, :] <= t[:, None]).mean(1)) <= dkw + Z * err)
    probs, err = class_probabilities(ws, bs, mean, cov, sup)
    freq = np.bincount(out.argmax(1), minlength=2) / n
    assert np.all(_within(probs, freq, n, err)) and abs(probs.sum() - 1) < 1e-9


def test_mass_warning_when_the_search_stops_early():
    _, ws, bs = _network((2, 6, 5, 1), seed=1)
    with pytest.warns(MassWarning, match="max_regions"):
        support_search(ws, bs, np.zeros(2), np.eye(2), eps=0.0, max_regions=2)


# --------------------------------------------------------------------------------------------- arguments


def test_defaults_are_deterministic_and_none_is_refused():
    mean, cov = _gaussian(4, seed=21)
    g, h = np.random.default_rng(0).standard_normal((5, 4)), np.ones(5)
    assert polytope_probability(g, h, mean, cov) == polytope_probability(g, h, mean, cov)
    assert orthant_probability(mean[:3], cov[:3, :3]) == orthant_probability(mean[:3], cov[:3, :3])
    _, ws, bs = _network((4, 5, 1), seed=0)
    a, b = support_search(ws, bs, mean, cov, eps=0.0), support_search(ws, bs, mean, cov, eps=0.0)
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.errors, b.errors)
    with pytest.raises(ValueError, match="rng"):
        polytope_probability(g, h, mean, cov, rng=None)


def test_options_are_checked_by_name():
    w, b = np.eye(3), np.zeros(3)
    with pytest.raises(ValueError, match="n_points"):
        pattern_pmf(w, b, np.zeros(3), np.eye(3), method="orthant", n_points=64)
    with pytest.raises(ValueError, match="abseps"):
        pattern_pmf(w, b, np.zeros(3), np.eye(3), method="polytope", abseps=1e-6)
    _, ws, bs = _network((2, 3, 1), seed=0)
    with pytest.raises(ValueError, match="n_point"):
        support_search(ws, bs, np.zeros(2), np.eye(2), n_point=64)


def test_numpy_scalars_zero_d_tensors_and_tensor_arrays_are_accepted():
    _, ws, bs = _network((2, 4, 1), seed=0)
    mean, cov = np.array([0.1, 0.2]), np.eye(2)
    reference = support_search(ws, bs, mean, cov, eps=0.0, method="qmc", n_points=256, n_rep=4)
    for eps, n_points, n_rep in ((np.float64(0.0), np.int64(256), np.int32(4)),
                                 (torch.tensor(0.0), torch.tensor(256), torch.tensor(4))):
        sup = support_search([torch.from_numpy(w) for w in ws], [torch.from_numpy(b) for b in bs],
                             torch.from_numpy(mean), torch.from_numpy(cov).float().double(), eps=eps,
                             max_regions=np.int64(100), method="qmc", n_points=n_points, n_rep=n_rep)
        assert np.array_equal(sup.probs, reference.probs)
    assert np.array_equal(mc_pattern_pmf(np.eye(2), np.zeros(2), mean, cov, n=np.int64(100), seed=torch.tensor(3)),
                          mc_pattern_pmf(np.eye(2), np.zeros(2), mean, cov, n=100, seed=3))
    cdf = output_cdf(ws, bs, mean, cov, [0.0], reference, output=np.int64(0))[0]
    assert cdf == output_cdf(ws, bs, mean, cov, [0.0], reference, output=torch.tensor(0))[0]
    for bad in (0.5, True, torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="max_regions"):
            support_search(ws, bs, mean, cov, max_regions=bad)
    with pytest.raises(ValueError, match="eps"):
        support_search(ws, bs, mean, cov, eps="0.1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_mc_jacobian_on_the_model_device():
    net, ws, bs = _network((3, 6, 2), seed=5)
    mean, cov = _gaussian(3, seed=14)
    cpu = mc_jacobian_singular_values(net, mean, cov, n=50, seed=8)
    gpu = mc_jacobian_singular_values(net.cuda(), mean, cov, n=50, seed=8)
    np.testing.assert_allclose(gpu, cpu, atol=1e-10)


# --------------------------------------------------------------------------------------------- helpers


def test_pattern_codes_against_a_loop():
    bits = np.random.default_rng(0).random((50, 10)) < 0.5
    loop = [sum(2**i for i in range(10) if row[i]) for row in bits]
    assert pattern_codes(bits).dtype == np.int64 and pattern_codes(bits).tolist() == loop
    wide = np.random.default_rng(1).random((5, 70)) < 0.5
    assert pattern_codes(wide).tolist() == [sum(2**i for i in range(70) if row[i]) for row in wide]
    assert int(pattern_codes(bits[3])) == loop[3]
    _, ws, bs = _network((2, 4, 3, 1), seed=0)
    sup = support_search(ws, bs, np.zeros(2), np.eye(2), eps=0.0)
    assert pattern_codes(sup.patterns).tolist() == sup.codes
    with pytest.raises(ValueError, match="patterns"):
        pattern_codes(np.full((2, 2), 2))


def test_affine_maps_against_pairwise_grouping():
    """A 2-3-1-1 network: wherever the single layer-2 unit is off, every layer-1 pattern gives f = b_3."""
    _, ws, bs = _network((2, 3, 1, 1), seed=3)
    sup = support_search(ws, bs, np.zeros(2), np.eye(2), eps=0.0)
    maps = affine_maps(ws, bs, sup.patterns, sup.probs)
    # reference: group by pairwise np.allclose in a loop
    reps, totals = [], []
    for bits, p in zip(sup.patterns, sup.probs):
        _, _, J, c = region(ws, bs, bits)
        key = np.concatenate([J.ravel(), c])
        for k, other in enumerate(reps):
            if np.allclose(key, other, atol=1e-9):
                totals[k] += p
                break
        else:
            reps.append(key)
            totals.append(p)
    assert len(maps.probs) == len(reps) < len(sup.probs)
    np.testing.assert_allclose(np.sort(maps.probs), np.sort(totals), atol=1e-15)
    np.testing.assert_allclose(np.bincount(maps.inverse, weights=sup.probs), maps.probs, atol=1e-15)
    for k, bits in enumerate(sup.patterns):
        _, _, J, c = region(ws, bs, bits)
        np.testing.assert_allclose(maps.J[maps.inverse[k]], J, atol=1e-12)
        np.testing.assert_allclose(maps.c[maps.inverse[k]], c, atol=1e-12)
    constant = np.flatnonzero(np.abs(maps.J).sum((1, 2)) == 0)
    assert len(constant) == 1 and np.allclose(maps.c[constant[0]], bs[-1])


def test_output_range_against_vertex_enumeration():
    rng = np.random.default_rng(5)
    for _ in range(20):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 6))
        G = -np.column_stack([np.cos(angles), np.sin(angles)])  # x . n_i <= r_i: bounded when normals surround 0
        h = rng.uniform(0.5, 2.0, 6)
        v = rng.standard_normal(2)
        vertices = [np.linalg.solve(G[[i, j]], -h[[i, j]]) for i in range(6) for j in range(i)
                    if abs(np.linalg.det(G[[i, j]])) > 1e-12]
        inside = [x for x in vertices if np.all(G @ x + h >= -1e-9)]
        lo, hi = output_range(G, h, v)
        if max(np.diff(np.append(angles, angles[0] + 2 * np.pi))) < np.pi:
            assert lo == pytest.approx(min(v @ x for x in inside), abs=1e-8)
            assert hi == pytest.approx(max(v @ x for x in inside), abs=1e-8)
        else:
            assert not (np.isfinite(lo) and np.isfinite(hi))
    assert output_range([[1.0, 0.0]], [1.0], [1.0, 0.0]) == (-1.0, np.inf)
    assert np.isnan(output_range([[1.0, 0.0], [-1.0, 0.0]], [-2.0, 1.0], [1.0, 0.0])[0])
    with pytest.raises(ValueError, match="direction"):
        output_range(np.eye(2), np.zeros(2), np.zeros(3))


def test_orthant_reexports_the_split_modules():
    """nbsupport.orthant keeps every public name (DESIGN.md's and the chapter's) as the very objects of
    the modules that define them: polytope, regions, pattern_law, orthant_mc."""
    import nbsupport.orthant as orthant
    from nbsupport import orthant_mc, pattern_law, polytope, regions

    homes = {}
    for module in (polytope, regions, pattern_law, orthant_mc):
        for name in module.__all__:
            homes.setdefault(name, getattr(module, name))
    for name in ("orthant_probability", "pattern_pmf", "mc_pattern_pmf", "polytope_probability", "support_search",
                 "region", "output_cdf", "Support", "MassWarning", "pattern_codes", "affine_maps", "output_range"):
        assert name in orthant.__all__
    for name in orthant.__all__:
        assert getattr(orthant, name) is homes[name], name

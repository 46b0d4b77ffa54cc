"""``nbsupport.orthant.pattern_law``: pattern PMFs, support search, output CDFs, class probabilities and
mixtures against Monte Carlo with binomial / DKW bounds and exact products; the boundary
convention (off is z <= 0) on zero-bias and dead-layer networks.

Bounds and seeds: see ``orthant_reference``."""

from itertools import product
import warnings

import numpy as np
import pytest
import torch
from scipy import special

from nbsupport.orthant import (MAX_FULL_PMF_UNITS, MassWarning, PatternPMF, class_probabilities, mc_network,
                               mc_network_pmf, mc_pattern_pmf, mixture_output_cdf, mixture_pattern_pmf,
                               mixture_pattern_pmf_with_err, mixture_support_search, network_patterns, output_cdf,
                               pattern_pmf, pattern_pmf_with_err, region, support_search)
from orthant_reference import Z, _compare_with_monte_carlo, _gaussian, _mc_codes, _network, _within, _zero_bias


def test_pattern_pmf_nonsingular_routes_agree_and_match_mc():
    mean, cov = _gaussian(4, seed=7)
    rng = np.random.default_rng(8)
    w, b = rng.standard_normal((3, 4)), 0.5 * rng.standard_normal(3)
    p1, e1 = pattern_pmf_with_err(w, b, mean, cov, method="orthant", rng=0)
    p2, e2 = pattern_pmf_with_err(w, b, mean, cov, method="polytope", rng=0)
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
    p, err = pattern_pmf_with_err(w, b, mean, cov)
    assert np.count_nonzero(p) == 1 + m + m * (m - 1) // 2
    assert abs(p.sum() - 1) <= Z * np.sqrt((err**2).sum()) + 1e-12
    n = 400_000
    mc = mc_pattern_pmf(w, b, mean, cov, n=n, seed=2)
    assert np.all(mc[p == 0] == 0) and np.all(_within(p, mc, n, err))


def test_pattern_pmf_singular_3d_qmc_route():
    mean, cov = _gaussian(3, seed=9)
    rng = np.random.default_rng(10)
    w, b = rng.standard_normal((6, 3)), 0.5 * rng.standard_normal(6)
    p, err = pattern_pmf_with_err(w, b, mean, cov, rng=0)
    n = 400_000
    mc = mc_pattern_pmf(w, b, mean, cov, n=n, seed=3)
    assert np.all(mc[p == 0] == 0) and np.all(_within(p, mc, n, err))
    assert abs(p.sum() - 1) <= Z * np.sqrt((err**2).sum()) + 1e-12


def test_mixture_pattern_pmf_against_monte_carlo():
    rng = np.random.default_rng(11)
    w, b = rng.standard_normal((4, 2)), 0.3 * rng.standard_normal(4)
    weights, means = np.array([0.3, 0.7]), np.array([[-1.0, 0.5], [1.0, -0.2]])
    covs = np.array([0.3 * np.eye(2), [[0.5, 0.2], [0.2, 0.4]]])
    p, err = mixture_pattern_pmf_with_err(w, b, weights, means, covs)
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


@pytest.mark.parametrize("method", ["orthant", "polytope"])
def test_one_return_type_per_function(method):
    """pattern_pmf returns the array alone, pattern_pmf_with_err a PatternPMF whose pmf is the same
    array bit for bit (same rng); the former switch return_err is refused naming the other function.
    The mixture pair likewise."""
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((3, 3)), 0.2 * rng.standard_normal(3)
    mean, cov = np.array([0.1, -0.2, 0.3]), np.diag([1.0, 0.5, 2.0])
    alone = pattern_pmf(w, b, mean, cov, method=method, rng=3)
    pair = pattern_pmf_with_err(w, b, mean, cov, method=method, rng=3)
    assert isinstance(alone, np.ndarray) and alone.shape == (8,) and alone.dtype == np.float64
    assert isinstance(pair, PatternPMF) and pair.err.shape == (8,) and np.all(pair.err >= 0)
    np.testing.assert_array_equal(pair.pmf, alone)
    with pytest.raises(ValueError, match="pattern_pmf_with_err"):
        pattern_pmf(w, b, mean, cov, method=method, return_err=True)
    weights, means, covs = [0.4, 0.6], [mean, -mean], [cov, 0.5 * cov]
    alone = mixture_pattern_pmf(w, b, weights, means, covs, method=method, rng=3)
    pair = mixture_pattern_pmf_with_err(w, b, weights, means, covs, method=method, rng=3)
    assert isinstance(alone, np.ndarray) and isinstance(pair, PatternPMF)
    np.testing.assert_array_equal(pair.pmf, alone)
    # errors in quadrature over the components, each from its own stream of rng=3
    parts = [pattern_pmf_with_err(w, b, m, c, method=method, rng=child)
             for m, c, child in zip(means, covs, np.random.default_rng(3).spawn(2))]
    np.testing.assert_allclose(pair.err, np.hypot(0.4 * parts[0].err, 0.6 * parts[1].err), rtol=1e-12)
    with pytest.raises(ValueError, match="mixture_pattern_pmf_with_err"):
        mixture_pattern_pmf(w, b, weights, means, covs, return_err=True)


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


def test_pattern_pmf_passes_the_orthant_route_and_its_options_on():
    weight, bias = np.array([[1.0, 0.5], [-0.3, 1.0]]), np.array([0.2, -0.1])
    mean, cov = np.array([0.1, 0.4]), np.array([[1.0, 0.3], [0.3, 0.8]])
    exact = pattern_pmf(weight, bias, mean, cov, method="polytope", rng=0)  # 2-D: quadrature, to ~1e-13
    pmf, err = pattern_pmf_with_err(weight, bias, mean, cov, method="orthant", orthant_method="polytope",
                                    n_points=1024, rng=0)
    assert np.all(np.abs(pmf - exact) <= 5 * err + 1e-12) and np.any(err > 0)  # QMC errors, not scipy's
    with pytest.raises(ValueError, match="orthant_method="):  # n_points without the route that takes it
        pattern_pmf(weight, bias, mean, cov, method="orthant", n_points=1024)
    with pytest.raises(ValueError, match="orthant_method"):
        pattern_pmf(weight, bias, mean, cov, method="polytope", orthant_method="scipy")


def _scaled(ws, bs, mean, cov, s):
    """The same patterns at another scale: x -> s x (mean s mu, cov s^2 Sigma) with the first-layer
    bias s b_1, so every pre-activation of every layer is multiplied by s... for layer 1, and the
    deeper layers see s h_1: their biases are scaled too. Patterns are then identical draw by draw."""
    return [w.copy() for w in ws], [s * b for b in bs], s * mean, s**2 * cov


@pytest.mark.parametrize("s", [1e-11, 1e4])
def test_pattern_pmf_does_not_depend_on_the_scale(s):
    """cov 1e-22 I (s = 1e-11) or 1e8 I (s = 1e4): the same PMF as at scale 1 (exact 2-D quadrature,
    itself checked against Monte Carlo above), on both routes; Monte Carlo at the scaled input agrees."""
    rng = np.random.default_rng(8)
    w, b = rng.standard_normal((5, 2)), 0.5 * rng.standard_normal(5)
    mean, cov = np.array([0.2, -0.1]), np.array([[1.0, 0.3], [0.3, 0.7]])
    reference = pattern_pmf(w, b, mean, cov)
    scaled = pattern_pmf(w, s * b, s * mean, s**2 * cov)
    assert np.max(np.abs(scaled - reference)) < 1e-12
    n = 200_000
    assert np.all(_within(scaled, mc_pattern_pmf(w, s * b, s * mean, s**2 * cov, n=n, seed=2), n))
    w3, b3 = w[:3], b[:3]  # m = d + 1 = 3 on a 2-D input is singular; m = 2 takes the orthant route
    for weight, bias in ((w3, b3), (w[:2], b[:2])):
        p1, e1 = pattern_pmf_with_err(weight, bias, mean, cov)
        ps, es = pattern_pmf_with_err(weight, s * bias, s * mean, s**2 * cov)
        assert np.all(np.abs(ps - p1) <= Z * (e1 + es) + 1e-12)


@pytest.mark.parametrize("s", [1e-11, 1e4])
def test_support_search_does_not_depend_on_the_scale(s):
    """The whole network at another scale (inputs and every bias times s): the same regions and
    probabilities as at scale 1, and against Monte Carlo drawn at that scale every pattern seen is
    found with binomial agreement (the search once found 1 region of mass 1 where there were 14)."""
    _, ws, bs = _network((2, 6, 5, 1), seed=1)
    mean, cov = _gaussian(2, seed=12)
    reference = support_search(ws, bs, mean, cov, eps=0.0)
    args = _scaled(ws, bs, mean, cov, s)
    sup = support_search(*args, eps=0.0)
    assert len(reference.probs) > 10 and sup.codes == reference.codes
    assert np.max(np.abs(sup.probs - reference.probs)) < 1e-12
    _compare_with_monte_carlo(*args, sup, n=200_000, seed=3)
    # output CDF and class probabilities scale with the output: thresholds times s
    t = np.array([-0.5, 0.0, 0.4])
    np.testing.assert_allclose(output_cdf(*args, s * t, sup)[0], output_cdf(ws, bs, mean, cov, t, reference)[0],
                               atol=1e-12)


@pytest.mark.parametrize("s", [1e-11, 1e8])
def test_support_search_with_a_rescaled_first_layer(s):
    """Scaling the first layer's weights and bias by s changes no pattern of that layer, and the
    second layer then sees s h_1 beside its own bias: against Monte Carlo on that network (the
    search once found 1 region where Monte Carlo saw 29)."""
    _, ws, bs = _network((2, 6, 5, 1), seed=3)
    ws[0], bs[0] = s * ws[0], s * bs[0]
    ws[1] = ws[1] / s  # the layer-2 pre-activations are then those of the original network
    mean, cov = _gaussian(2, seed=5)
    sup = support_search(ws, bs, mean, cov, eps=0.0)
    assert len(sup.probs) > 10
    _compare_with_monte_carlo(ws, bs, mean, cov, sup, n=200_000, seed=4)


def test_non_finite_and_empty_input_is_refused_by_name():
    _, ws, bs = _network((2, 4, 3, 1), seed=0)
    mean, cov = np.zeros(2), np.eye(2)
    for l in range(3):
        bad = [w.copy() for w in ws]
        bad[l][0, 0] = np.nan
        with pytest.raises(ValueError, match=rf"weights\[{l}\] must be finite"):
            support_search(bad, bs, mean, cov)
        bad_b = [b.copy() for b in bs]
        bad_b[l][0] = np.inf
        with pytest.raises(ValueError, match=rf"biases\[{l}\] must be finite"):
            support_search(ws, bad_b, mean, cov)
    with pytest.raises(ValueError, match="weight must be finite"):
        pattern_pmf([[np.nan, 1.0]], [0.0], mean, cov)
    with pytest.raises(ValueError, match="bias must be finite"):
        pattern_pmf([[1.0, 1.0]], [-np.inf], mean, cov)
    with pytest.raises(ValueError, match="mean"):
        pattern_pmf([[1.0, 1.0]], [0.0], [np.nan, 0.0], cov)
    with pytest.raises(ValueError, match="cov"):
        support_search(ws, bs, mean, [[1.0, np.inf], [np.inf, 1.0]])
    with pytest.raises(ValueError, match="weight must have shape"):  # m = 0
        pattern_pmf(np.zeros((0, 2)), np.zeros(0), mean, cov)
    with pytest.raises(ValueError, match=r"weights\[1\] must be a non-empty"):
        support_search([ws[0], np.zeros((0, 4)), np.zeros((1, 0))], [bs[0], np.zeros(0), bs[2]], mean, cov)
    sup = support_search(ws, bs, mean, cov, eps=0.0)
    with pytest.raises(ValueError, match="thresholds"):
        output_cdf(ws, bs, mean, cov, [], sup)
    with pytest.raises(ValueError, match="support"):
        output_cdf(ws, bs, mean, cov, [0.0], sup._replace(patterns=sup.patterns[:, :3]))
    # finite weights whose products overflow: refused, not "1 region of mass 1" with warnings
    huge = [1e200 * w for w in ws]
    with pytest.raises(ValueError, match="weights too large"):
        support_search(huge, bs, mean, cov)


@pytest.mark.slow
def test_pattern_pmf_auto_cost_is_proportional_from_12_units():
    """m >= 12 units (non-singular, d = 12): "auto" takes the polytope route at its own n_points
    (1024 per replicate), the same numbers as asking for it, not orthant_probability's 2**16 points
    per pattern. Its PMF sums to 1 and matches the independent-unit product (W = I)."""
    m = 12
    mean = np.linspace(-0.5, 0.5, m)
    auto, err = pattern_pmf_with_err(np.eye(m), np.zeros(m), mean, np.eye(m), n_points=256, n_rep=2)
    chosen = pattern_pmf(np.eye(m), np.zeros(m), mean, np.eye(m), method="polytope", n_points=256, n_rep=2)
    assert np.array_equal(auto, chosen)
    on = special.ndtr(mean)
    codes = np.arange(2**m)
    bits = (codes[:, None] >> np.arange(m)) & 1
    exact = np.prod(np.where(bits, on, 1 - on), axis=1)
    assert np.all(np.abs(auto - exact) <= Z * err + 1e-12)
    with pytest.raises(ValueError, match="n_points"):  # the orthant route's option is not taken here
        pattern_pmf(np.eye(m), np.zeros(m), mean, np.eye(m), abseps=1e-5)


def test_output_cdf_and_merged_mixture_check_their_mass():
    """A CDF above the support's mass, or a merged mixture support short of 1 - eps, warns."""
    _, ws, bs = _network((2, 4, 3, 1), seed=0)
    mean, cov = np.zeros(2), np.eye(2)
    sup = support_search(ws, bs, mean, cov, eps=0.0)
    # every region twice, probabilities halved: the listed mass is 1 but the CDF reaches 2
    inflated = sup._replace(patterns=np.repeat(sup.patterns, 2, axis=0), probs=np.repeat(sup.probs, 2) / 2,
                            errors=np.repeat(sup.errors, 2) / 2)
    with pytest.warns(MassWarning, match="output_cdf"):
        output_cdf(ws, bs, mean, cov, [1e3], inflated)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", MassWarning)
        output_cdf(ws, bs, mean, cov, [-1.0, 0.0, 1e3], sup)
    with pytest.warns(MassWarning, match="merged"):
        mixture_support_search(ws, bs, [0.5, 0.5], [mean, mean + 1], [cov, cov], eps=0.0, max_regions=2)


def test_support_codes_are_exact_beyond_63_units():
    """Support.codes is pattern_codes (one implementation), exact for any width: a loop over bits
    with Python ints is the reference (the old numpy-int shift overflowed past 63 units)."""
    from nbsupport.orthant import Support
    bits = np.random.default_rng(0).random((4, 70)) < 0.5
    sup = Support(bits, np.zeros(4), np.zeros(4), 0)
    assert sup.codes == [sum(1 << int(i) for i in np.flatnonzero(row)) for row in bits]
    assert Support(np.zeros((0, 5), bool), np.zeros(0), np.zeros(0), 0).codes == []


# --- review fixes: ill-conditioned covariance and extreme scales ---

@pytest.mark.parametrize("small", [1e-11, 1e-14])
@pytest.mark.parametrize("theta", [0.0, 0.7])
def test_pattern_pmf_ill_conditioned_cov(small, theta):
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cov = R @ np.diag([1.0, small]) @ R.T
    cov = (cov + cov.T) / 2
    W = np.array([[0.0, 1.0], [1.0, 0.0]]) @ R.T  # the two principal directions: independent signs
    with warnings.catch_warnings():
        warnings.simplefilter("error", MassWarning)
        pmf = pattern_pmf(W, [0.0, 0.0], [0.0, 0.0], cov)
    np.testing.assert_allclose(pmf, 0.25, atol=1e-6)


@pytest.mark.parametrize("s", [1e-200, 1e155, 1e200])
def test_pattern_pmf_extreme_scales(s):
    from scipy.special import ndtr
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pmf = pattern_pmf(np.diag([s, s]), [s, 0.0], [0.0, 0.0], np.eye(2))
        iso = pattern_pmf(s * np.eye(2), [0.0, 0.0], [0.0, 0.0], np.eye(2))
    on0 = ndtr(1.0)  # unit 0 on: s (x0 + 1) > 0
    ref = np.array([(1 - on0) * 0.5, on0 * 0.5, (1 - on0) * 0.5, on0 * 0.5])
    np.testing.assert_allclose(pmf, ref, atol=1e-9)
    np.testing.assert_allclose(iso, 0.25, atol=1e-9)

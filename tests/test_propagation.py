"""nbsupport.propagation against independent references: closed forms, scipy quadrature and Monte
Carlo over random networks with tolerances derived from the number of networks."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from nbsupport.propagation import (SAMPLERS, empirical_kernels, excess_kurtosis_estimate, excess_kurtosis_theory,
                                   fit_decay, gradient_norms, kernel_correlation, kernel_log_ratio_moments,
                                   kernel_ratio_moments, CRITICAL_A, excess_kurtosis_from_moments, fit_next_order,
                                   gradient_norm_theory, preactivation_moments, relu_coactivation,
                                   kernel_recursion, kernel_summary, linear_kernels_wishart, preactivations,
                                   relu_correlation_map,
                                   relu_expectation)

# Monte Carlo checks: |estimate - truth| < K_SIGMA standard errors. For one comparison a true law
# fails with probability 7e-6 under normal theory (at most 4.9 % by Chebyshev, whatever the tails);
# an ``.all()`` over m comparisons fails with probability <= m * 7e-6 (Bonferroni).
K_SIGMA = 4.5


def _inputs(n=4, d=30, rng=0):
    g = torch.Generator().manual_seed(rng)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _g0(x):
    return x @ x.T / x.shape[1]


def _relu_pair_reference(kaa, kbb, kab):
    """E[relu(u) relu(v)] for (u, v) ~ N(0, [[kaa, kab], [kab, kbb]]) by 1-d quadrature.

    Write u = sqrt(kaa) g, v = m g + s h with g, h independent standard normals; the inner
    expectation over h has the closed form E relu(mu + s h) = mu Phi(mu/s) + s phi(mu/s).
    """
    m = kab / math.sqrt(kaa)
    s = math.sqrt(max(kbb - m * m, 0.0))

    def psi(t):  # t Phi(t) + phi(t), without cancellation for t < 0 (scaled complementary error function)
        phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
        if t >= 0:
            return t * 0.5 * math.erfc(-t / math.sqrt(2)) + phi
        return phi * (1 + t * math.sqrt(math.pi / 2) * special.erfcx(-t / math.sqrt(2)))

    def inner(g):
        return max(m * g, 0.0) if s == 0 else s * psi(m * g / s)

    value, _ = integrate.quad(lambda g: math.sqrt(kaa) * g * inner(g) * math.exp(-g * g / 2) / math.sqrt(2 * math.pi),
                              0, np.inf, epsabs=1e-15, epsrel=1e-12)
    return value


def _recursion_reference(g0, depth, C_W, C_b, activation):
    """Plain loops over entries: G1 = C_b + C_W G0, then G_{l+1} = C_b + C_W E[s(u)s(v)]."""
    g0 = np.asarray(g0, dtype=float)
    n = len(g0)
    out = [g0, C_b + C_W * g0]
    for _ in range(depth - 1):
        prev, nxt = out[-1], np.empty((n, n))
        for a in range(n):
            for b in range(n):
                e = prev[a, b] if activation == "linear" else _relu_pair_reference(prev[a, a], prev[b, b], prev[a, b])
                nxt[a, b] = C_b + C_W * e
        out.append(nxt)
    return np.stack(out[:depth + 1])


# --- the recursion against closed forms and quadrature -----------------------------------------

def test_linear_recursion_is_cw_power():
    g0 = _g0(_inputs())
    ks = kernel_recursion(g0, depth=6, C_W=1.7)
    for l in range(7):
        torch.testing.assert_close(ks[l], 1.7**l * g0, rtol=1e-14, atol=0)
    with_bias = kernel_recursion(g0, depth=3, C_W=0.5, C_b=0.2)
    torch.testing.assert_close(with_bias[3], 0.2 * (1 + 0.5 + 0.25) + 0.125 * g0, rtol=1e-14, atol=1e-15)


def test_relu_expectation_matches_quadrature_and_monte_carlo():
    k = torch.tensor([[2.0, 0.9, -0.5], [0.9, 1.0, 0.2], [-0.5, 0.2, 0.7]], dtype=torch.float64)
    exact = relu_expectation(k)
    reference = torch.tensor([[_relu_pair_reference(k[a, a].item(), k[b, b].item(), k[a, b].item()) for b in range(3)]
                              for a in range(3)], dtype=torch.float64)
    torch.testing.assert_close(exact, reference, rtol=1e-9, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    h = torch.relu(torch.randn(400_000, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(k).T)
    products = h.unsqueeze(2) * h.unsqueeze(1)
    mc, se = products.mean(0), products.std(0) / math.sqrt(len(h))
    assert bool(((mc - exact).abs() < K_SIGMA * se).all()), (mc, exact)


def test_relu_expectation_when_rounding_pushes_the_correlation_past_one():
    # K_ab a hair above sqrt(K_aa K_bb): arccos of the ratio would be NaN; the map must give K/2
    k = torch.tensor([[2.0, 2.0 * (1 + 4e-16)], [2.0 * (1 + 4e-16), 2.0]], dtype=torch.float64)
    torch.testing.assert_close(relu_expectation(k), torch.full((2, 2), 1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    theta = 1e-4  # small angle against the closed form evaluated with the angle given exactly
    k = torch.tensor([[1.0, math.cos(theta)], [math.cos(theta), 1.0]], dtype=torch.float64)
    expected = (math.sin(theta) + (math.pi - theta) * math.cos(theta)) / (2 * math.pi)
    assert relu_expectation(k)[0, 1].item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="kernel"):
        relu_expectation(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]))


@pytest.mark.parametrize("C_W, C_b", [(2.0, 0.0), (1.5, 0.1), (2.3, 0.05)])
def test_relu_recursion_matches_quadrature(C_W, C_b):
    x = _inputs(n=3, d=12)
    ks = kernel_recursion(_g0(x), depth=4, C_W=C_W, C_b=C_b, activation="relu")
    reference = _recursion_reference(_g0(x).numpy(), 4, C_W, C_b, "relu")
    np.testing.assert_allclose(ks.numpy(), reference, rtol=1e-8, atol=1e-12)


def test_correlation_map_matches_quadrature_and_fixed_point():
    for c in (-0.9, -0.3, 0.0, 0.5, 0.95):
        expected = 2 * _relu_pair_reference(1.0, 1.0, c)  # C_W = 2 with unit variances: c' = 2 E[relu relu]
        assert relu_correlation_map(torch.tensor(c, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-10)
    c = torch.linspace(-1, 1, 201, dtype=torch.float64)
    assert bool((relu_correlation_map(c)[:-1] > c[:-1]).all())  # c* = 1 is the only fixed point on [-1, 1]
    assert relu_correlation_map(torch.tensor(1.0)).item() == pytest.approx(1.0, abs=1e-15)
    assert relu_correlation_map(torch.tensor(-1.0)).item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="c must"):
        relu_correlation_map(torch.tensor([1.5]))


def test_critical_relu_correlation_decays_as_inverse_square():
    # 1 - c' = e - a e^{3/2} + O(e^2), a = 2 sqrt(2) / (3 pi), gives 1 - c_l ~ 9 pi^2 / (2 l^2)
    g0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    eps = 1 - kernel_correlation(kernel_recursion(g0, 6000, 2.0, activation="relu"))[:, 0, 1]
    assert (6000**2 * eps[6000]).item() == pytest.approx(9 * math.pi**2 / 2, rel=0.01)
    fit = fit_decay(torch.arange(1000, 6001), eps[1000:])
    assert fit.exponent == pytest.approx(-2, abs=0.03) and fit.power_rms < fit.exponential_rms / 10


def test_relu_with_bias_has_a_fixed_point_approached_exponentially():
    # C_W < 2, C_b > 0: K* = C_b / (1 - C_W/2); 1 - c shrinks by C_W/2 per layer near c = 1
    C_W, C_b = 1.5, 0.1
    ks = kernel_recursion(_g0(_inputs(n=2)), 200, C_W, C_b, activation="relu")
    torch.testing.assert_close(torch.diagonal(ks[-1]), torch.full((2,), C_b / (1 - C_W / 2), dtype=torch.float64))
    eps = 1 - kernel_correlation(ks[:60])[:, 0, 1]
    assert (eps[59] / eps[58]).item() == pytest.approx(C_W / 2, rel=1e-3)


# --- Monte Carlo over random networks ------------------------------------------------------------

def _assert_within(mc_per_network, truth, k=K_SIGMA, slack=0.0):
    """Every entry of the mean over networks within k standard errors (from the networks' spread)."""
    mean = mc_per_network.mean(0)
    se = mc_per_network.std(0) / math.sqrt(len(mc_per_network))
    bad = (mean - truth).abs() > k * se + slack
    assert not bool(bad.any()), ((mean - truth)[bad], se[bad])


@pytest.mark.parametrize("sampler, width", [("conditional", 64), ("gaussian", 16), ("rademacher", 16)])
def test_linear_empirical_kernels_are_exact_on_average_at_any_width(sampler, width):
    x = _inputs(n=3, d=20)
    theory = kernel_recursion(_g0(x), depth=4, C_W=1.3)
    per = empirical_kernels(x, depth=4, width=width, C_W=1.3, n_networks=4000, rng=3, per_network=True,
                            sampler=sampler)
    torch.testing.assert_close(per[:, 0], theory[0].expand(4000, -1, -1))
    _assert_within(per[:, 1:], theory[1:])


@pytest.mark.parametrize("C_W, C_b", [(2.0, 0.0), (2.0, 0.1), (1.5, 0.0)])
def test_relu_empirical_kernels_converge_to_the_recursion(C_W, C_b):
    # the diagonal is exact at any width (z is symmetric, so E relu(z)^2 = E z^2 / 2); the off-diagonal
    # has an O(l / n) finite-width bias, which at n = 2048, l <= 3 is below 1e-3 of the entries
    x = _inputs(n=3, d=20)
    theory = kernel_recursion(_g0(x), depth=3, C_W=C_W, C_b=C_b, activation="relu")
    per = empirical_kernels(x, depth=3, width=2048, C_W=C_W, C_b=C_b, activation="relu", n_networks=200, rng=4,
                            per_network=True)
    _assert_within(torch.diagonal(per[:, 1:], dim1=2, dim2=3), torch.diagonal(theory[1:], dim1=1, dim2=2))
    _assert_within(per[:, 1:], theory[1:], slack=1e-3 * theory[1:].abs().max().item())


@pytest.mark.parametrize("sampler", ["gaussian", "rademacher"])
def test_neurons_are_uncorrelated_when_weights_are_drawn(sampler):
    # E[z_i;a z_j;b] = delta_ij G_ab, measured on drawn weight matrices (nothing built in)
    x = _inputs(n=2, d=10)
    z = preactivations(x, depth=2, width=6, C_W=1.0, n_networks=20_000, rng=6, sampler=sampler)  # (2, N, 2, 6)
    theory = kernel_recursion(_g0(x), 2, 1.0)
    for l in range(2):
        products = z[l, :, 0, :].unsqueeze(2) * z[l, :, 1, :].unsqueeze(1)  # (N, 6, 6): z_i;a z_j;b
        _assert_within(products, theory[l + 1, 0, 1] * torch.eye(6, dtype=torch.float64))
    tied = z[0, :, 0, :1].expand(-1, 6).unsqueeze(2) * z[0, :, 1, :1].expand(-1, 6).unsqueeze(1)  # one row copied
    assert (tied.mean(0)[0, 1] - 0).abs() > K_SIGMA * tied[:, 0, 1].std() / math.sqrt(len(tied))  # null is caught


def test_kernel_ratio_moments_match_chi_square_and_monte_carlo():
    for width in (1, 4, 16):
        for order in range(5):
            per_layer = stats.chi2(width).moment(order) / width**order
            torch.testing.assert_close(kernel_ratio_moments(6, width, order),
                                       per_layer ** torch.arange(7, dtype=torch.float64), rtol=1e-12, atol=0)
    # one input of a linear network: K_l / G_l sampled through drawn weights
    x = torch.ones(1, 8, dtype=torch.float64)
    per = empirical_kernels(x, 5, 4, 0.7, n_networks=40_000, rng=8, per_network=True, sampler="gaussian")
    ratio = per[:, :, 0, 0] / kernel_recursion(_g0(x), 5, 0.7)[:, 0, 0]
    mean_square = kernel_ratio_moments(5, 4, 2)
    var_of_square = kernel_ratio_moments(5, 4, 4) - mean_square**2
    assert bool(((ratio**2).mean(0) - mean_square).abs().le(K_SIGMA * (var_of_square / len(per)).sqrt()).all())


def test_kernel_log_ratio_moments_match_quadrature_and_monte_carlo():
    for width in (1, 3, 16, 256):
        law = stats.chi2(width)
        mean1 = law.expect(lambda v: math.log(v / width))
        var1 = law.expect(lambda v: (math.log(v / width) - mean1) ** 2)
        mean, var = kernel_log_ratio_moments(5, width)
        np.testing.assert_allclose(mean.numpy(), mean1 * np.arange(6), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(var.numpy(), var1 * np.arange(6), rtol=1e-6, atol=1e-12)
    x = torch.ones(1, 8, dtype=torch.float64)
    per = empirical_kernels(x, 6, 4, 1.3, n_networks=20_000, rng=10, per_network=True)[:, :, 0, 0]
    log_ratio = (per / kernel_recursion(_g0(x), 6, 1.3)[:, 0, 0]).log()[:, 1:]
    mean, var = kernel_log_ratio_moments(6, 4)
    assert bool(((log_ratio.mean(0) - mean[1:]).abs() < K_SIGMA * (var[1:] / len(per)).sqrt()).all())


@pytest.mark.parametrize("activation, C_W", [("linear", 1.0), ("relu", 2.0)])
@pytest.mark.parametrize("sampler", ["gaussian", "conditional"])
def test_excess_kurtosis_matches_monte_carlo(activation, C_W, sampler):
    width, depth = 8, 5
    x = torch.ones(1, 10, dtype=torch.float64)
    theory = excess_kurtosis_theory(depth, width, activation)
    z = preactivations(x, depth, width, C_W, 0.0, activation, n_networks=40_000, rng=5, sampler=sampler)
    estimate, se = excess_kurtosis_estimate(z[:, :, 0, :])  # networks as the independent unit
    assert bool(((estimate - theory).abs() < K_SIGMA * se).all()), (estimate, theory, se)
    assert theory[0] == 0 and theory[-1] > 1


def test_kurtosis_stderr_is_calibrated_on_iid_normals():
    g = torch.Generator().manual_seed(9)
    z = torch.randn(200, 8000, 1, generator=g, dtype=torch.float64)  # 200 replicates of 8000 iid draws
    estimate, se = excess_kurtosis_estimate(z)
    assert se.mean().item() == pytest.approx(math.sqrt(24 / 8000), rel=0.1)
    assert estimate.std().item() == pytest.approx(math.sqrt(24 / 8000), rel=0.2)  # chi: 200 replicates
    assert excess_kurtosis_estimate(z.float())[0].dtype == torch.float32


@pytest.mark.parametrize("activation, C_W, chi", [("linear", 1.5, 1.5), ("relu", 2.5, 1.25)])
def test_gradient_norms_follow_cw_chi(activation, C_W, chi):
    x = _inputs(n=2, d=16)
    per = gradient_norms(x, depth=6, width=128, C_W=C_W, activation=activation, n_networks=300, rng=0,
                         per_network=True)
    theory = torch.tensor([chi ** (5 - l) for l in range(6)], dtype=torch.float64)
    _assert_within(per, theory)
    small = gradient_norms(x, 3, 16, C_W, 0.0, activation, n_networks=5, rng=1, per_network=True)
    torch.testing.assert_close(small.mean(0), gradient_norms(x, 3, 16, C_W, 0.0, activation, n_networks=5, rng=1))


def test_empirical_kernels_shapes_and_determinism():
    x = _inputs(n=2, d=5)
    per = empirical_kernels(x, depth=3, width=8, C_W=1.0, n_networks=7, rng=0, per_network=True)
    assert per.shape == (7, 4, 2, 2)
    torch.testing.assert_close(per.mean(0), empirical_kernels(x, depth=3, width=8, C_W=1.0, n_networks=7, rng=0))
    assert not torch.equal(per, empirical_kernels(x, 3, 8, 1.0, n_networks=7, rng=1, per_network=True))
    for sampler in SAMPLERS:
        assert preactivations(x, 2, 8, 1.0, n_networks=3, sampler=sampler).shape == (2, 3, 2, 8)
    signs = preactivations(torch.eye(1, dtype=torch.float64), 1, 50, 1.0, n_networks=4, sampler="rademacher")
    assert set(signs.abs().unique().tolist()) == {1.0}  # weights are +-sqrt(C_W / n_0)


# --- summaries ---------------------------------------------------------------------------------

def test_kernel_correlation_against_a_loop():
    k = torch.tensor([[[2.0, 0.5, -0.3], [0.5, 1.0, 0.1], [-0.3, 0.1, 0.5]]], dtype=torch.float32)
    corr = kernel_correlation(k)
    for a in range(3):
        for b in range(3):
            assert corr[0, a, b].item() == pytest.approx(k[0, a, b].item() / math.sqrt(k[0, a, a] * k[0, b, b]), rel=1e-6)
    assert corr.dtype == torch.float32
    with pytest.raises(ValueError, match="kernels"):
        kernel_correlation(torch.zeros(2, 2))


def test_kernel_summary_linear_keeps_cosines_and_relu_matches_quadrature():
    x = _inputs(n=4, d=9)
    linear = kernel_summary(x, 5, 1.2, activation="linear")
    xn = x.numpy()
    cos = [xn[a] @ xn[b] / np.linalg.norm(xn[a]) / np.linalg.norm(xn[b]) for a in range(4) for b in range(4) if a != b]
    np.testing.assert_allclose(linear.mean_correlation.numpy(), np.mean(cos), rtol=1e-12)
    np.testing.assert_allclose(linear.min_correlation.numpy(), np.min(cos), rtol=1e-12)
    np.testing.assert_allclose(linear.mean_variance.numpy(), 1.2 ** np.arange(6) * (xn**2).sum(1).mean() / 9, rtol=1e-12)
    relu = kernel_summary(x, 3, 2.0, C_b=0.05, activation="relu")
    reference = _recursion_reference(_g0(x).numpy(), 3, 2.0, 0.05, "relu")
    corr = [[reference[l, a, b] / math.sqrt(reference[l, a, a] * reference[l, b, b]) for a in range(4) for b in range(4)
             if a != b] for l in range(4)]
    np.testing.assert_allclose(relu.mean_correlation.numpy(), np.mean(corr, axis=1), rtol=1e-8)
    np.testing.assert_allclose(relu.min_correlation.numpy(), np.min(corr, axis=1), rtol=1e-8)
    np.testing.assert_allclose(relu.mean_variance.numpy(), np.diagonal(reference, axis1=1, axis2=2).mean(1), rtol=1e-8)


def test_fit_decay_recovers_laws():
    l = np.arange(5, 60)
    power = fit_decay(l, 3.0 * l**-2.0)
    assert power.exponent == pytest.approx(-2, abs=1e-12) and power.power_rms < 1e-12 < power.exponential_rms
    expo = fit_decay(l, 0.5 * 0.75**l)
    assert expo.rate == pytest.approx(math.log(0.75), abs=1e-12) and expo.exponential_rms < 1e-12 < expo.power_rms
    shifted = fit_decay(l, (0.15 * l + 0.7) ** -2.0)
    assert shifted.inverse_square_slope == pytest.approx(0.15, rel=1e-10) and shifted.inverse_square_rms < 1e-10
    assert shifted.power_rms > 1e-3 and expo.inverse_square_rms > 0.1  # a shift bends the log-log line
    np.testing.assert_allclose(power.power_rms, np.std(np.log(3.0 * l**-2.0) - np.polyval(
        np.polyfit(np.log(l), np.log(3.0 * l**-2.0), 1), np.log(l))), atol=1e-12)


@pytest.mark.parametrize("call, word", [
    (lambda: kernel_recursion(torch.tensor([[1.0, 0.5], [0.2, 1.0]]), 2, 1.0), "symmetric"),
    (lambda: kernel_recursion(torch.eye(2), 2, -1.0), "C_W"),
    (lambda: kernel_recursion(torch.eye(2), 2, 1.0, C_b=-0.1), "C_b"),
    (lambda: kernel_recursion(torch.eye(2), -1, 1.0), "depth"),
    (lambda: kernel_recursion(torch.eye(2), 2, 1.0, activation="tanh"), "activation"),
    (lambda: kernel_recursion(torch.ones(2, 3), 2, 1.0), "G0"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 0, 1.0), "width"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 4, 1.0, n_networks=0), "n_networks"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 4, 1.0, sampler="uniform"), "sampler"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 4, 1.0, rng=-1), "rng"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 4, 1.0, rng=None), "rng"),
    (lambda: gradient_norms(torch.ones(2, 3), 2, 4, 1.0, rng="a"), "rng"),
    (lambda: empirical_kernels(torch.ones(3), 2, 4, 1.0), "x must"),
    (lambda: gradient_norms(torch.ones(2, 3), 0, 4, 1.0), "depth"),
    (lambda: empirical_kernels(torch.ones(2, 0), 2, 4, 1.0), "x must"),
    (lambda: empirical_kernels(torch.full((2, 3), float("nan")), 2, 4, 1.0), "finite"),
    (lambda: relu_correlation_map(torch.tensor([float("nan")])), "c must"),
    (lambda: kernel_ratio_moments(3, 0, 2), "width"),
    (lambda: kernel_ratio_moments(3, 4, -1), "order"),
    (lambda: kernel_log_ratio_moments(3, 0), "width"),
    (lambda: kernel_summary(torch.ones(1, 3), 2, 2.0), "x must"),
    (lambda: kernel_summary(torch.zeros(2, 3), 2, 2.0), "zero row"),
    (lambda: excess_kurtosis_estimate(torch.ones(1, 3)), "z must"),
    (lambda: fit_decay([1, 2], [1.0, 0.5]), "layers"),
    (lambda: fit_decay([1, 2, 3], [1.0, 0.0, 0.5]), "values"),
    (lambda: fit_next_order([1, 2, 3], [1.0, 0.5, 0.2]), "layers"),
    (lambda: fit_next_order([1, 2, 3, 4], [1.0, 0.5, -0.2, 0.1]), "values"),
    (lambda: gradient_norm_theory(0, 4, 2.0), "depth"),
    (lambda: gradient_norm_theory(3, 0, 2.0), "width"),
    (lambda: excess_kurtosis_from_moments(torch.ones(3), torch.ones(4)), "m2 and m4"),
    (lambda: preactivation_moments(torch.ones(2, 3), 2, 4, 1.0, orders=(0,)), "orders"),
    (lambda: relu_coactivation(torch.zeros(2, 2)), "kernels"),
])
def test_bad_input(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_numpy_and_tensor_scalars_accepted():
    """Scalars go through nbsupport._validate: NumPy scalars and 0-d tensors give the same results."""
    G0 = torch.tensor([[1.0, 0.4], [0.4, 2.0]], dtype=torch.float64)
    ref = kernel_recursion(G0, 3, C_W=1.5, C_b=0.1, activation="relu")
    assert torch.equal(kernel_recursion(G0, np.int64(3), C_W=np.float64(1.5), C_b=np.float64(0.1),
                                        activation="relu"), ref)
    assert torch.equal(kernel_recursion(G0, torch.tensor(3), C_W=torch.tensor(1.5), C_b=0.1, activation="relu"), ref)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(activation="relu", sampler="gaussian")
    ref = empirical_kernels(x, 2, 4, 2.0, n_networks=3, rng=1, **kw)
    assert torch.equal(empirical_kernels(x, np.int64(2), np.int32(4), np.float64(2.0), n_networks=torch.tensor(3),
                                         rng=np.uint8(1), **kw), ref)
    assert torch.equal(kernel_ratio_moments(np.int64(4), np.int64(8), torch.tensor(2)), kernel_ratio_moments(4, 8, 2))


@pytest.mark.parametrize("call, word", [
    (lambda: kernel_recursion(torch.eye(2), True, 1.0), "depth"),
    (lambda: kernel_recursion(torch.eye(2), 2.0, 1.0), "depth"),
    (lambda: kernel_recursion(torch.eye(2), 2, True), "C_W"),
    (lambda: kernel_recursion(torch.eye(2), 2, float("nan")), "C_W"),
    (lambda: kernel_recursion(torch.eye(2), 2, 1.0, C_b=np.bool_(True)), "C_b"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, True, 1.0), "width"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 4, 1.0, n_networks=torch.tensor(True)), "n_networks"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 4, 1.0, rng=False), "rng"),
    (lambda: kernel_ratio_moments(3, 4, True), "order"),
    (lambda: excess_kurtosis_theory(np.float64(2.5), 4), "depth"),
])
def test_bools_and_non_integers_refused_by_name(call, word):
    with pytest.raises(ValueError, match=word):
        call()


# --- one vocabulary: rng, positions, defaults (issue 25) ----------------------------------------

def test_rng_is_an_int_or_a_generator_and_never_the_global_rng():
    x = _inputs(n=2, d=5)
    call = lambda rng: empirical_kernels(x, 3, 8, 1.0, n_networks=4, rng=rng, per_network=True)
    torch.testing.assert_close(call(3), call(3))  # an int: a fresh generator each call
    torch.testing.assert_close(call(torch.Generator().manual_seed(3)), call(3))
    g = torch.Generator().manual_seed(3)
    first, second = call(g), call(g)  # a generator is advanced
    assert not torch.equal(first, second)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    torch.testing.assert_close(call(a), call(b))  # a numpy generator: one seed drawn from it
    assert not torch.equal(call(a), call(np.random.default_rng(6)))
    state = torch.get_rng_state()
    gradient_norms(x, 2, 8, 1.0, n_networks=3, rng=0)
    preactivation_moments(x, 2, 8, 1.0, n_networks=3, rng=0)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is neither used nor advanced


def test_monte_carlo_functions_share_one_positional_order():
    import inspect
    names = lambda f: [p.name for p in inspect.signature(f).parameters.values()
                       if p.kind is p.POSITIONAL_OR_KEYWORD]
    order = ["x", "depth", "width", "C_W", "C_b", "activation"]
    for f in (empirical_kernels, preactivations, preactivation_moments, gradient_norms):
        assert names(f) == order, f.__name__
        assert inspect.signature(f).parameters["rng"].kind is inspect.Parameter.KEYWORD_ONLY
    for f in (kernel_recursion, kernel_summary, empirical_kernels, gradient_norms):
        assert inspect.signature(f).parameters["activation"].default == "linear", f.__name__
    x = _inputs(n=3, d=6)
    torch.testing.assert_close(kernel_summary(x, 4, 1.3).mean_variance,
                               kernel_recursion(_g0(x), 4, 1.3).diagonal(dim1=1, dim2=2).mean(1))


def test_gradient_norms_with_a_bias_are_those_of_a_linear_loop():
    # the backward pass of a linear network does not see the bias: the same draws with C_b > 0
    x = _inputs(n=2, d=6)
    with_bias = gradient_norms(x, 3, 8, 1.2, 0.3, n_networks=4, rng=2, per_network=True)
    torch.testing.assert_close(with_bias, gradient_norms(x, 3, 8, 1.2, 0.0, n_networks=4, rng=2, per_network=True))


# --- exact finite-width laws ---------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 4])
def test_relu_gradient_norms_are_exact_up_to_dead_layers(width):
    # (C_W / 2)^(L - l) (1 - 2^-n)^(l - 1): measured at widths where the dead-layer factor is large
    x = _inputs(n=1, d=6)
    depth, n = 6, 60_000
    per = gradient_norms(x, depth, width, 2.0, 0.0, "relu", n_networks=n, rng=11, per_network=True)
    theory = gradient_norm_theory(depth, width, 2.0, "relu")
    _assert_within(per, theory)
    alive = torch.tensor([(1 - 2.0**-width) ** (l - 1) for l in range(1, depth)] + [1.0], dtype=torch.float64)
    torch.testing.assert_close(theory, alive, rtol=1e-14, atol=0)  # C_W = 2: only the dead-layer factor
    se = per.std(0) / math.sqrt(n)
    assert ((per.mean(0) - 1).abs() > K_SIGMA * se)[2:depth - 1].all()  # null: the infinite-width law


def test_gradient_norm_theory_linear_and_wide_relu():
    np.testing.assert_allclose(gradient_norm_theory(5, 3, 1.5).numpy(), 1.5 ** (5 - np.arange(1, 6)), rtol=1e-14)
    wide = gradient_norm_theory(5, 64, 2.4, "relu").numpy()
    np.testing.assert_allclose(wide, 1.2 ** (5 - np.arange(1, 6)), rtol=1e-15)


def test_relu_coactivation_against_scipy_and_monte_carlo():
    k = torch.tensor([[2.0, 0.9, -0.5], [0.9, 1.0, 0.2], [-0.5, 0.2, 0.7]], dtype=torch.float64)
    p = relu_coactivation(k)
    for a in range(3):
        for b in range(3):
            cov = k[[a, b]][:, [a, b]].numpy()
            if a == b:
                assert p[a, b].item() == pytest.approx(0.5, abs=1e-15)
                continue
            reference = stats.multivariate_normal(mean=[0, 0], cov=cov).cdf([0, 0])  # P(u < 0, v < 0), same by symmetry
            assert p[a, b].item() == pytest.approx(reference, abs=1e-6)
    g = torch.Generator().manual_seed(12)
    z = torch.randn(200_000, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(k).T
    on = (z > 0).double()
    both = (on.unsqueeze(2) * on.unsqueeze(1))
    se = both.std(0) / math.sqrt(len(z))
    assert bool(((both.mean(0) - p).abs() < K_SIGMA * se + 1e-12).all())
    assert bool(((both.mean(0)[0, 1] - 0.25).abs() > K_SIGMA * se[0, 1]))  # null: independent gates


def test_preactivation_moments_are_those_of_preactivations():
    x = _inputs(n=2, d=7)
    for sampler in ("conditional", "gaussian"):
        z = preactivations(x, 4, 9, 2.0, 0.1, "relu", n_networks=5, rng=4, sampler=sampler)
        m = preactivation_moments(x, 4, 9, 2.0, 0.1, "relu", n_networks=5, rng=4, orders=(1, 2, 4), sampler=sampler)
        for j, k in enumerate((1, 2, 4)):
            torch.testing.assert_close(m[j], (z**k).mean(-1), rtol=1e-13, atol=1e-15)
    estimate, se = excess_kurtosis_from_moments((z**2).mean(-1).transpose(1, 2), (z**4).mean(-1).transpose(1, 2))
    ref_estimate, ref_se = excess_kurtosis_estimate(z.transpose(1, 2))
    torch.testing.assert_close(estimate, ref_estimate)
    torch.testing.assert_close(se, ref_se)


def test_fit_next_order_recovers_a_synthetic_law_and_the_recursion():
    l = np.arange(20, 400)
    y = (0.3 * l + 0.5 * np.log(l) + 2.0) ** -2.0
    fit = fit_next_order(l, y)
    assert (fit.slope, fit.log_coefficient, fit.intercept) == pytest.approx((0.3, 0.5, 2.0), rel=1e-9)
    assert fit.rms < 1e-10
    # the critical recursion, from two starting correlations: slope a/2 and ln-coefficient 3a/4
    for c0 in (0.0, 0.9):
        g0 = torch.tensor([[1.0, c0], [c0, 1.0]], dtype=torch.float64)
        eps = 1 - kernel_correlation(kernel_recursion(g0, 5000, 2.0, activation="relu"))[:, 0, 1]
        law = fit_next_order(torch.arange(1000, 5001), eps[1000:])
        assert law.slope == pytest.approx(CRITICAL_A / 2, rel=1e-4)
        assert law.log_coefficient == pytest.approx(3 * CRITICAL_A / 4, rel=0.03)  # O(ln l / l) terms left
    bare = fit_next_order(torch.arange(500, 5001), (CRITICAL_A / 2 * torch.arange(500, 5001.0)) ** -2.0)
    assert abs(bare.log_coefficient) < 1e-6  # null: the pure l^-2 law has no ln l term


def test_linear_kernels_wishart_mean_and_variance_laws():
    """Mean C_W^l G0 (exact at any width) and Var(K_aa) / G_aa^2 = (1 + 2/n)^l - 1."""
    G0 = torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=torch.float64)
    depth, width, C_W, n = 6, 8, 1.3, 40_000
    K = linear_kernels_wishart(G0, depth, width, C_W, n_networks=n, rng=3)
    assert K.shape == (depth + 1, n, 2, 2)
    assert torch.equal(K[0, 0], G0)
    for layer in (1, depth):
        mean, se = K[layer].mean(0), K[layer].std(0) / math.sqrt(n)
        assert ((mean - C_W**layer * G0).abs() < K_SIGMA * se).all()
        rel = K[layer, :, 1, 1] / (C_W**layer * G0[1, 1])
        v = rel.var().item()
        exact = (1 + 2 / width) ** layer - 1
        # se of a sample variance from the fourth central moment of the draws
        se_v = math.sqrt(((rel - rel.mean()) ** 4).mean().item() - v * v) / math.sqrt(n)
        assert abs(v - exact) < K_SIGMA * se_v
        # null: the infinite-width value 0 and the linearised 2 l / n are rejected
        assert v > K_SIGMA * se_v
    assert abs(v - 2 * depth / width) > K_SIGMA * se_v


def test_linear_kernels_wishart_matches_drawn_networks():
    """The per-network correlation has the same spread as in networks drawn unit by unit."""
    x = _inputs(2, 30, rng=4)
    depth, width, n = 12, 8, 4000
    drawn = empirical_kernels(x, depth, width, 1.0, n_networks=n, rng=5, sampler="gaussian",
                              per_network=True)[:, -1]
    wishart = linear_kernels_wishart(_g0(x), depth, width, n_networks=n, rng=6)[-1]
    c_drawn = kernel_correlation(drawn)[:, 0, 1].numpy()
    c_wish = kernel_correlation(wishart)[:, 0, 1].numpy()
    # two-sample Kolmogorov-Smirnov: same law
    assert stats.ks_2samp(c_drawn, c_wish).pvalue > 1e-3
    # null: a Wishart product of width 2 * width spreads visibly less
    wider = linear_kernels_wishart(_g0(x), depth, 2 * width, n_networks=n, rng=7)[-1]
    assert stats.ks_2samp(c_drawn, kernel_correlation(wider)[:, 0, 1].numpy()).pvalue < 1e-6


def test_linear_kernels_wishart_rng_and_validation():
    G0 = torch.eye(3, dtype=torch.float64)
    a = linear_kernels_wishart(G0, 3, 5, n_networks=4, rng=1)
    assert torch.equal(a, linear_kernels_wishart(G0, 3, 5, n_networks=4, rng=1))
    assert not torch.equal(a, linear_kernels_wishart(G0, 3, 5, n_networks=4, rng=2))
    with pytest.raises(ValueError, match="width"):
        linear_kernels_wishart(G0, 3, 2)
    with pytest.raises(ValueError, match="G0"):
        linear_kernels_wishart(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 3, 5)
    with pytest.raises(ValueError, match="n_networks"):
        linear_kernels_wishart(G0, 3, 5, n_networks=0)

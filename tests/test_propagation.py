"""nbsupport.propagation against closed forms and Monte Carlo over random networks."""

import math

import pytest
import torch

from nbsupport.propagation import (empirical_kernels, excess_kurtosis_theory, gradient_norms, kernel_recursion,
                                   relu_correlation_map, relu_expectation)


def _inputs(n=4, d=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _g0(x):
    return x @ x.T / x.shape[1]


def test_linear_recursion_is_cw_power():
    g0 = _g0(_inputs())
    ks = kernel_recursion(g0, depth=6, C_W=1.7)
    for l in range(7):
        torch.testing.assert_close(ks[l], 1.7**l * g0, rtol=1e-14, atol=0)
    with_bias = kernel_recursion(g0, depth=3, C_W=0.5, C_b=0.2)
    torch.testing.assert_close(with_bias[3], 0.2 * (1 + 0.5 + 0.25) + 0.125 * g0, rtol=1e-14, atol=1e-15)


def test_relu_expectation_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    k = torch.tensor([[2.0, 0.9, -0.5], [0.9, 1.0, 0.2], [-0.5, 0.2, 0.7]], dtype=torch.float64)
    samples = torch.randn(2_000_000, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(k).T
    h = torch.relu(samples)
    products = h.unsqueeze(2) * h.unsqueeze(1)
    mc, se = products.mean(0), products.std(0) / math.sqrt(len(h))
    exact = relu_expectation(k)
    assert bool(((mc - exact).abs() < 4 * se).all()), (mc, exact)
    torch.testing.assert_close(torch.diagonal(exact), torch.diagonal(k) / 2)  # E relu(u)^2 = k / 2


def test_relu_expectation_when_rounding_pushes_the_correlation_past_one():
    # K_ab a hair above sqrt(K_aa K_bb): arccos of the ratio would be NaN; the map must give K/2
    k = torch.tensor([[2.0, 2.0 * (1 + 4e-16)], [2.0 * (1 + 4e-16), 2.0]], dtype=torch.float64)
    torch.testing.assert_close(relu_expectation(k), torch.full((2, 2), 1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    # small angle against the closed form evaluated with the angle given exactly
    theta = 1e-4
    k = torch.tensor([[1.0, math.cos(theta)], [math.cos(theta), 1.0]], dtype=torch.float64)
    expected = (math.sin(theta) + (math.pi - theta) * math.cos(theta)) / (2 * math.pi)
    assert relu_expectation(k)[0, 1].item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="kernel"):
        relu_expectation(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]))


def test_relu_one_step_and_correlation_map():
    x = _inputs()
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(x.shape[1])  # unit G0 diagonal
    ks = kernel_recursion(_g0(x), depth=8, C_W=2.0, activation="relu")
    torch.testing.assert_close(ks[2], 2.0 * relu_expectation(ks[1]))
    diag = torch.diagonal(ks, dim1=1, dim2=2)
    torch.testing.assert_close(diag, torch.full_like(diag, 2.0).index_fill(0, torch.tensor([0]), 1.0))  # norms kept
    corr = ks[1:] / 2.0
    for l in range(1, 8):
        torch.testing.assert_close(corr[l], relu_correlation_map(corr[l - 1]), rtol=1e-12, atol=1e-12)
    off = corr[:, 0, 1]
    assert bool((off[1:] > off[:-1]).all())  # correlations climb towards 1


def test_correlation_map_fixed_point():
    c = torch.linspace(-1, 1, 201, dtype=torch.float64)
    image = relu_correlation_map(c)
    assert relu_correlation_map(torch.tensor(1.0)).item() == pytest.approx(1.0, abs=1e-15)
    assert bool((image[:-1] > c[:-1]).all())  # c* = 1 is the only fixed point on [-1, 1]
    assert relu_correlation_map(torch.tensor(-1.0)).item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="c must"):
        relu_correlation_map(torch.tensor([1.5]))


@pytest.mark.parametrize("activation, C_W, C_b", [("linear", 1.3, 0.0), ("relu", 2.0, 0.1), ("relu", 1.5, 0.0)])
def test_empirical_kernels_converge_to_the_recursion(activation, C_W, C_b):
    x = _inputs(n=3, d=20)
    theory = kernel_recursion(_g0(x), depth=4, C_W=C_W, C_b=C_b, activation=activation)
    mc = empirical_kernels(x, depth=4, width=1024, C_W=C_W, C_b=C_b, activation=activation, n_networks=20, seed=3)
    torch.testing.assert_close(mc[0], theory[0])
    for l in range(1, 5):
        rel = torch.linalg.matrix_norm(mc[l] - theory[l]) / torch.linalg.matrix_norm(theory[l])
        assert rel < 0.05, (l, rel.item())


def test_empirical_kernels_shapes_and_determinism():
    x = _inputs(n=2, d=5)
    per = empirical_kernels(x, depth=3, width=8, C_W=1.0, n_networks=7, seed=0, per_network=True)
    assert per.shape == (7, 4, 2, 2)
    torch.testing.assert_close(per.mean(0), empirical_kernels(x, depth=3, width=8, C_W=1.0, n_networks=7, seed=0))
    assert not torch.equal(per, empirical_kernels(x, 3, 8, 1.0, n_networks=7, seed=1, per_network=True))


@pytest.mark.parametrize("activation, C_W", [("linear", 1.0), ("relu", 2.0)])
def test_excess_kurtosis_matches_monte_carlo(activation, C_W):
    width, depth = 8, 5
    x = torch.ones(1, 10, dtype=torch.float64)
    from nbsupport.propagation import _networks, preactivations
    theory = excess_kurtosis_theory(depth, width, activation)
    drawn = {True: _networks(x, depth, width, C_W, 0.0, activation, n_networks=40_000, seed=5, weights=True),
             False: preactivations(x, depth, width, C_W, 0.0, activation, n_networks=40_000, seed=5)}
    for weights, zs in drawn.items():  # drawing weights, or each layer from its conditional Gaussian law
        for l, z in enumerate(zs):
            measured = (z**4).mean() / (z**2).mean() ** 2 - 3
            assert abs(measured - theory[l]) < 0.08 + 0.1 * theory[l], (weights, l, measured.item(), theory[l].item())
    assert theory[0] == 0 and theory[-1] > 1


@pytest.mark.parametrize("activation, C_W, chi", [("linear", 1.5, 1.5), ("relu", 2.5, 1.25)])
def test_gradient_norms_follow_cw_chi(activation, C_W, chi):
    x = _inputs(n=2, d=16)
    measured = gradient_norms(x, depth=6, width=256, C_W=C_W, activation=activation, n_networks=200, seed=0)
    theory = torch.tensor([chi ** (5 - l) for l in range(6)], dtype=torch.float64)
    assert bool(((measured / theory - 1).abs() < 0.1).all()), (measured, theory)


@pytest.mark.parametrize("call, word", [
    (lambda: kernel_recursion(torch.tensor([[1.0, 0.5], [0.2, 1.0]]), 2, 1.0), "symmetric"),
    (lambda: kernel_recursion(torch.eye(2), 2, -1.0), "C_W"),
    (lambda: kernel_recursion(torch.eye(2), 2, 1.0, C_b=-0.1), "C_b"),
    (lambda: kernel_recursion(torch.eye(2), -1, 1.0), "depth"),
    (lambda: kernel_recursion(torch.eye(2), 2, 1.0, activation="tanh"), "activation"),
    (lambda: kernel_recursion(torch.ones(2, 3), 2, 1.0), "G0"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 0, 1.0), "width"),
    (lambda: empirical_kernels(torch.ones(2, 3), 2, 4, 1.0, n_networks=0), "n_networks"),
    (lambda: empirical_kernels(torch.ones(3), 2, 4, 1.0), "x must"),
    (lambda: gradient_norms(torch.ones(2, 3), 0, 4, 1.0), "depth"),
    (lambda: empirical_kernels(torch.ones(2, 0), 2, 4, 1.0), "x must"),
    (lambda: empirical_kernels(torch.full((2, 3), float("nan")), 2, 4, 1.0), "finite"),
    (lambda: relu_correlation_map(torch.tensor([float("nan")])), "c must"),
])
def test_bad_input(call, word):
    with pytest.raises(ValueError, match=word):
        call()

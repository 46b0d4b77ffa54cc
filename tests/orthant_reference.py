"""nbsupport.orthant against closed forms (1-3 D), Monte Carlo with explicit bounds, and torch.

Monte Carlo bounds: a frequency from n draws is compared with a probability p by
|freq - p| <= Z sqrt(p (1 - p) / n) + Z err (err the function's own standard error) with Z = 5,
a two-sided false-alarm rate of 5.7e-7 per entry (<= 1e-3 per test even over 2**10 entries), and
every seed is fixed, so the tests are deterministic. Empirical CDFs use the DKW bound
sup |F_n - F| <= sqrt(log(2 / alpha) / (2 n)) with alpha = 1e-6.

Shared by the tests of the orthant modules (test_polytope, test_regions, test_pattern_law,
test_orthant_mc)."""

import numpy as np
import torch
from scipy import special

from nbsupport.models import mlp
from nbsupport.orthant import mc_network_pmf, mlp_layers

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


def _network(widths, seed):
    torch.manual_seed(seed)
    net = mlp(list(widths)).double()
    return net, *mlp_layers(net)


def _mc_codes(bits):
    return bits @ (1 << np.arange(bits.shape[1]))


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

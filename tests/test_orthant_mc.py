"""``nbsupport.orthant.mc``: the Monte Carlo references against exact products, their own chunked
counting and torch's Jacobians, on the model's device.

Bounds and seeds: see ``orthant_reference``."""

import numpy as np
import pytest
import torch
from scipy import special

from nbsupport.orthant import mc_jacobian_singular_values, mc_pattern_pmf, pattern_pmf_with_err
from orthant_reference import Z, _gaussian, _network, _within


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
        p, err = pattern_pmf_with_err(np.eye(3), np.zeros(3), mean, np.diag(sd**2), method=route, rng=0)
        assert np.all(np.abs(p - exact) <= Z * err + 1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_mc_jacobian_on_the_model_device():
    net, ws, bs = _network((3, 6, 2), seed=5)
    mean, cov = _gaussian(3, seed=14)
    cpu = mc_jacobian_singular_values(net, mean, cov, n=50, seed=8)
    gpu = mc_jacobian_singular_values(net.cuda(), mean, cov, n=50, seed=8)
    np.testing.assert_allclose(gpu, cpu, atol=1e-10)


def test_seed_follows_the_rng_rule():
    """seed: int (reproducible), Generator (its stream); numpy's global RNG is neither used nor
    advanced; None (fresh entropy), negative or non-integer seeds are refused by name."""
    w, b, mean, cov = np.eye(2), np.zeros(2), np.zeros(2), np.eye(2)
    np.random.seed(1)
    state = np.random.get_state()[1].copy()
    by_int = mc_pattern_pmf(w, b, mean, cov, n=1000, seed=7)
    assert np.array_equal(by_int, mc_pattern_pmf(w, b, mean, cov, n=1000, seed=np.random.default_rng(7)))
    generator = np.random.default_rng(7)
    streamed = [mc_pattern_pmf(w, b, mean, cov, n=1000, seed=generator) for _ in range(2)]
    assert not np.array_equal(*streamed) and np.array_equal(np.random.get_state()[1], state)
    for bad in (-1, 0.5, "a", None):
        with pytest.raises(ValueError, match="seed"):
            mc_pattern_pmf(w, b, mean, cov, n=10, seed=bad)

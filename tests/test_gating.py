"""nbsupport.gating against brute-force pattern loops, Monte Carlo bounds and the tau -> 0 limit."""

import itertools
from copy import deepcopy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbsupport.gating import (all_patterns, bernoulli_kl, elbo, gated_forward, log_marginal_likelihood,
                              sample_gates, soft_gates)
from nbsupport.models import mlp


def _net(widths=(3, 5, 4), n=7, seed=0):
    torch.manual_seed(seed)
    net = mlp(list(widths)).double()
    x = torch.randn(n, widths[0], dtype=torch.float64)
    y = torch.randint(0, widths[-1], (n,))
    return net, x, y


def test_soft_gates_limits():
    z = torch.tensor([-2.0, -1e-3, 1e-3, 3.0], dtype=torch.float64)
    torch.testing.assert_close(soft_gates(z, 1.0), torch.sigmoid(z))
    assert torch.equal(soft_gates(z, 1e-6), (z > 0).double())
    assert soft_gates(torch.zeros(1), 0.1).item() == 0.5
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            soft_gates(z, bad)


def test_sample_gates_frequencies():
    probs = torch.tensor([[0.1, 0.5], [0.9, 0.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = sample_gates(probs, 20_000, generator=g)
    assert draws.shape == (20_000, 2, 2) and set(draws.unique().tolist()) <= {0.0, 1.0}
    se = (probs * (1 - probs) / 20_000).sqrt()
    assert bool(((draws.mean(0) - probs).abs() <= 4 * se + 1e-12).all())
    again = sample_gates(probs, 20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    with pytest.raises(ValueError, match="probs"):
        sample_gates(torch.tensor([1.5]), 3)
    with pytest.raises(ValueError, match="n_samples"):
        sample_gates(probs, 0)


def test_sample_gates_is_an_independent_bernoulli_law_against_a_chi_square_reference():
    """The draws (uniform noise compared with p, not torch.bernoulli) have the law of independent
    Bernoulli(p) gates: the joint frequencies of two gates and of two successive draws of one gate
    match the product law by Pearson's chi-square (scipy's quantile, 3 degrees of freedom), the
    endpoints p = 0 and p = 1 are exact, and float32 probabilities give float32 gates."""
    from scipy import stats
    probs = torch.tensor([0.3, 0.8], dtype=torch.float64)
    n = 40_000
    draws = sample_gates(probs, n, rng=11)
    critical = stats.chi2.ppf(1 - 1e-4, df=3)           # a true law fails once in 10 000 runs

    def chi_square(a, b, pa, pb):
        observed = np.array([[((a == i) & (b == j)).sum() for j in (0, 1)] for i in (0, 1)])
        expected = len(a) * np.outer([1 - pa, pa], [1 - pb, pb])
        return ((observed - expected) ** 2 / expected).sum()

    two_units = draws.numpy()
    assert chi_square(two_units[:, 0], two_units[:, 1], 0.3, 0.8) < critical
    one_unit = two_units[:, 0]
    assert chi_square(one_unit[:-1], one_unit[1:], 0.3, 0.3) < critical        # draws independent
    # the same statistic rejects a dependent pair (the null: a gate against itself)
    assert chi_square(one_unit, one_unit, 0.3, 0.3) > critical
    ends = sample_gates(torch.tensor([0.0, 1.0]), 5000, rng=2)
    assert ends[:, 0].sum() == 0 and ends[:, 1].sum() == 5000
    single = sample_gates(torch.full((3,), 0.5, dtype=torch.float32), 4, rng=0)
    assert single.dtype == torch.float32 and single.shape == (4, 3)


def test_gated_forward_hard_gates_is_the_relu_network():
    net, x, _ = _net((3, 6, 5, 2))
    torch.testing.assert_close(gated_forward(net, x, lambda l, z: (z > 0).to(z.dtype)), net(x))
    fixed = [torch.ones(6, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)]
    torch.testing.assert_close(gated_forward(net, x, fixed), net[4].bias.expand(len(x), -1))  # layer 2 off
    stacked = gated_forward(net, x.expand(4, -1, -1), lambda l, z: soft_gates(z, 0.5))  # leading sample axis
    assert stacked.shape == (4, len(x), 2)
    with pytest.raises(ValueError, match="gates"):
        gated_forward(net, x, fixed[:1])


def _brute_force(net, x, y, tau):
    """A loop over samples and patterns, with probabilities multiplied out unit by unit."""
    z = net[0](x)
    out = []
    for i in range(len(x)):
        total = 0.0
        for bits in itertools.product([0.0, 1.0], repeat=z.shape[1]):
            a = torch.tensor(bits, dtype=torch.float64)
            prior = 1.0
            for zi, ai in zip(z[i], bits):
                p_on = 1 / (1 + math.exp(-zi.item() / tau))
                prior *= p_on if ai else 1 - p_on
            lik = torch.softmax(net[2](a * z[i]), 0)[y[i]].item()
            total += prior * lik
        out.append(math.log(total))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_exact_marginal_matches_brute_force(tau):
    net, x, y = _net()
    torch.testing.assert_close(log_marginal_likelihood(net, x, y, tau), _brute_force(net, x, y, tau),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("widths", [(3, 1, 4), (2, 5, 3), (3, 6, 2)])
def test_exact_marginal_any_width_and_bias(widths):
    """Odd and tiny widths split into low/high halves correctly; a second layer without bias too."""
    net, x, y = _net(widths, n=5, seed=6)
    torch.testing.assert_close(log_marginal_likelihood(net, x, y, 0.4), _brute_force(net, x, y, 0.4),
                               rtol=1e-12, atol=1e-12)
    no_bias = torch.nn.Sequential(net[0], net[1], torch.nn.Linear(widths[1], widths[2], bias=False).double())
    with torch.no_grad():
        no_bias[2].weight.copy_(net[2].weight)
        net[2].bias.zero_()
    torch.testing.assert_close(log_marginal_likelihood(no_bias, x, y, 0.4), _brute_force(net, x, y, 0.4),
                               rtol=1e-12, atol=1e-12)


def test_exact_marginal_survives_logits_spread_over_thousands_of_nats():
    """The factorised class normaliser underflows here; the fallback recomputes those entries directly."""
    net, x, y = _net((3, 6, 4), n=6, seed=7)
    with torch.no_grad():
        net[2].weight.mul_(2000.0)
    exact = log_marginal_likelihood(net, x, y, 0.7)
    assert bool(exact.isfinite().all())
    torch.testing.assert_close(exact, _brute_force(net, x, y, 0.7), rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(exact.sum(), list(net.parameters()))
    assert all(bool(g.isfinite().all()) for g in grads)


def test_exact_marginal_chunks_and_normalises():
    net, x, _ = _net((3, 8, 4), n=5)
    per_class = torch.stack([log_marginal_likelihood(net, x, torch.full((5,), k), 0.7) for k in range(4)])
    torch.testing.assert_close(per_class.exp().sum(0), torch.ones(5, dtype=torch.float64))  # a distribution over y
    y = torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(log_marginal_likelihood(net, x, y, 0.7, chunk=50), log_marginal_likelihood(net, x, y, 0.7))


def test_monte_carlo_interval_covers_exact():
    net, x, y = _net((3, 10, 4), n=20, seed=2)
    exact = log_marginal_likelihood(net, x, y, 0.5)
    mc = log_marginal_likelihood(net, x, y, 0.5, method="mc", n_samples=20_000,
                                 generator=torch.Generator().manual_seed(0))
    z = (mc.estimate - exact) / mc.stderr
    assert bool((z.abs() < 4.5).all()), z  # 20 intervals at ~4.5 sigma


def test_tau_to_zero_is_the_relu_network():
    net, x, y = _net((3, 6, 4), n=10, seed=3)
    relu = F.log_softmax(net(x), 1).gather(1, y.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(log_marginal_likelihood(net, x, y, 1e-4), relu, rtol=1e-6, atol=1e-6)


def test_elbo_is_a_lower_bound_with_known_cases():
    net, x, y = _net((3, 6, 4), n=10, seed=4)
    tau = 0.8
    exact = log_marginal_likelihood(net, x, y, tau)
    prior = soft_gates(net[0](x), tau)
    g = torch.Generator().manual_seed(0)
    for q in (prior, torch.rand(prior.shape, generator=g, dtype=torch.float64), torch.full_like(prior, 0.5)):
        assert bool((elbo(net, x, y, tau, q) <= exact + 1e-12).all())
    # q = prior: the bound is E_prior[log P(y|x,a)], checked against the enumeration by hand
    patterns = all_patterns(6)
    z = net[0](x)
    weights = torch.exp(patterns @ F.logsigmoid(z / tau).T + (1 - patterns) @ F.logsigmoid(-z / tau).T).T
    loglik = torch.stack([F.log_softmax(net[2](z * a), 1).gather(1, y.view(-1, 1)).squeeze(1) for a in patterns], 1)
    torch.testing.assert_close(elbo(net, x, y, tau, prior), (weights * loglik).sum(1))


def test_bernoulli_kl_closed_form():
    q, p = torch.tensor([[0.2, 0.7]], dtype=torch.float64), torch.tensor([[0.5, 0.1]], dtype=torch.float64)
    ref = sum(qi * math.log(qi / pi) + (1 - qi) * math.log((1 - qi) / (1 - pi)) for qi, pi in [(0.2, 0.5), (0.7, 0.1)])
    assert bernoulli_kl(q, torch.logit(p)).item() == pytest.approx(ref, rel=1e-12)
    assert bernoulli_kl(p, torch.logit(p)).abs().item() < 1e-15
    # saturated prior: sigma(50) rounds to 1 in float64, the KL of q = 1/2 must still be exact
    half = torch.tensor([[0.5]], dtype=torch.float64)
    exact = 0.5 * math.log(0.5) * 2 - 0.5 * F.logsigmoid(torch.tensor(50.0, dtype=torch.float64)).item() + 0.5 * 50
    exact = math.log(0.5) - 0.5 * (F.logsigmoid(torch.tensor(50.0, dtype=torch.float64)).item()
                                   + F.logsigmoid(torch.tensor(-50.0, dtype=torch.float64)).item())
    assert bernoulli_kl(half, torch.tensor([[50.0]], dtype=torch.float64)).item() == pytest.approx(exact, rel=1e-12)
    assert bernoulli_kl(torch.tensor([[0.0, 1.0]]), torch.tensor([[-3.0, 2.0]])).isfinite().all()


def _brute_force_elbo(net, x, y, tau, q):
    """Sum over patterns of q(a) [log P(y|x,a) - log q(a) + log P(a|x)], unit by unit, in log space."""
    z = net[0](x)
    out = []
    for i in range(len(x)):
        total = 0.0
        for bits in itertools.product([0, 1], repeat=z.shape[1]):
            log_q, log_p = 0.0, 0.0
            for u, bit in enumerate(bits):
                qu = q[i, u].item()
                if (bit and qu == 0) or (not bit and qu == 1):
                    log_q = -math.inf
                    break
                log_q += math.log(qu if bit else 1 - qu)
                log_p += F.logsigmoid((1 if bit else -1) * z[i, u] / tau).item()
            if log_q == -math.inf:
                continue
            a = torch.tensor(bits, dtype=z.dtype)
            lik = F.log_softmax(net[2](a * z[i]), 0)[y[i]].item()
            total += math.exp(log_q) * (lik - log_q + log_p)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.01, 1.0])
def test_elbo_matches_brute_force_even_when_saturated(tau):
    net, x, y = _net((3, 5, 4), n=6, seed=5)
    g = torch.Generator().manual_seed(1)
    q = torch.rand(6, 5, generator=g, dtype=torch.float64)
    q[0, 0], q[1, 1] = 0.0, 1.0  # deterministic gates in q
    torch.testing.assert_close(elbo(net, x, y, tau, q), _brute_force_elbo(net, x, y, tau, q), rtol=1e-10, atol=1e-10)


def test_float32_and_strongly_rejected_labels_stay_finite():
    torch.manual_seed(0)
    net = mlp([3, 6, 4])
    with torch.no_grad():
        net[2].bias.copy_(torch.tensor([0.0, -300.0, -300.0, -300.0]))  # every pattern rejects labels 1..3
    x, y = torch.randn(8, 3), torch.randint(1, 4, (8,))
    exact = log_marginal_likelihood(net, x, y, 0.05)
    mc = log_marginal_likelihood(net, x, y, 0.05, method="mc", n_samples=4000, generator=torch.Generator().manual_seed(0))
    assert exact.max() < -250 and bool(mc.estimate.isfinite().all()) and bool(mc.stderr.isfinite().all())
    # exp(-300) underflows float32; the tolerance is 5 standard errors of the 4000 draws plus 16 float32
    # ulps of |log P| ~ 300 (both routes round logits of size 300 a few times)
    rounding = 16 * torch.finfo(torch.float32).eps * exact.abs()
    assert bool(((mc.estimate - exact).abs() < 5 * mc.stderr + rounding).all())
    assert bool(elbo(net, x, y, 0.01, torch.ones(8, 6)).isfinite().all())
    assert bool((elbo(net, x, y, 0.05, soft_gates(net[0](x), 0.05)) <= exact + rounding).all())
    with pytest.raises(ValueError, match="n_samples"):
        log_marginal_likelihood(net, x, y, 0.05, method="mc", n_samples=1)


def test_bad_input():
    net, x, y = _net()
    with pytest.raises(ValueError, match="method"):
        log_marginal_likelihood(net, x, y, 1.0, method="vi")
    with pytest.raises(ValueError, match="Linear, ReLU, Linear"):
        log_marginal_likelihood(mlp([3, 4, 4, 2]).double(), x, y, 1.0)
    with pytest.raises(ValueError, match="x must"):
        log_marginal_likelihood(net, x, y[:-1], 1.0)
    with pytest.raises(ValueError, match="m must"):
        all_patterns(17)
    with pytest.raises(ValueError, match="q_probs"):
        elbo(net, x, y, 1.0, torch.full((len(x), 5), 1.5, dtype=torch.float64))


def test_fisher_identity_needs_the_posterior_and_the_prior_score():
    """Source 001 writes grad log P(y|x) = E_prior[grad log P(y|x,A)]; Fisher's identity uses the posterior
    and adds grad log P(A|x) when the gate probabilities depend on the parameters."""
    from nbsupport.gating import pattern_log_probs
    net, x, y = _net((3, 5, 4), n=6, seed=6)
    tau = 0.5
    params = list(net.parameters())

    def flat(scalar):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params, retain_graph=True)])

    exact = flat(log_marginal_likelihood(net, x, y, tau).sum())
    lp = pattern_log_probs(net, x, y, tau)
    posterior = torch.softmax(lp.log_lik + lp.log_prior, dim=1).detach()
    prior = lp.log_prior.exp().detach()
    fisher = flat((posterior * (lp.log_lik + lp.log_prior)).sum())
    posterior_without_score = flat((posterior * lp.log_lik).sum())
    as_written = flat((prior * lp.log_lik).sum())
    torch.testing.assert_close(fisher, exact, rtol=1e-10, atol=1e-12)
    gap = lambda g: ((g - exact).norm() / exact.norm()).item()
    assert gap(as_written) > 1e-2 and gap(posterior_without_score) > 1e-2


def _brute_force_information(z, y, tau):
    """Joint table P(x, y, a) with x uniform, built with loops, then entropies by definition."""
    n, m = z.shape
    table = {}
    for i in range(n):
        for bits in itertools.product([0, 1], repeat=m):
            p = 1.0 / n
            for u, bit in enumerate(bits):
                on = 1 / (1 + math.exp(-z[i, u].item() / tau))
                p *= on if bit else 1 - on
            table[(i, int(y[i]), bits)] = p

    def h(keys):
        marg = {}
        for key, p in table.items():
            k = keys(key)
            marg[k] = marg.get(k, 0.0) + p
        return -sum(p * math.log(p) for p in marg.values() if p > 0)

    h_a = h(lambda k: k[2])
    h_a_x = h(lambda k: (k[0], k[2])) - h(lambda k: k[0])
    h_a_y = h(lambda k: (k[1], k[2])) - h(lambda k: k[1])
    return h_a, h_a_x, h_a_y


def test_gate_information_matches_brute_force_and_limits():
    from nbsupport.gating import gate_information
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    info = gate_information(z, y, 0.7)
    h_a, h_a_x, h_a_y = _brute_force_information(z, y, 0.7)
    assert info.H_A == pytest.approx(h_a, rel=1e-12) and info.H_A_given_X == pytest.approx(h_a_x, rel=1e-12)
    assert info.H_A_given_Y == pytest.approx(h_a_y, rel=1e-12)
    assert 0 <= info.I_AY <= info.I_AX + 1e-12 <= info.H_A + 1e-12  # data processing: Y depends on A only through X
    same = gate_information(z[:1].expand(12, -1), y, 0.7)   # gates independent of x: no information
    assert abs(same.I_AX) < 1e-12 and abs(same.I_AY) < 1e-12
    hard = gate_information(z, y, 1e-6)                     # hard gates: A is a function of X
    counts = torch.unique(z > 0, dim=0, return_counts=True)[1].double() / 12
    assert hard.H_A_given_X < 1e-6 and hard.I_AX == pytest.approx(-(counts * counts.log()).sum().item(), abs=1e-6)


def test_plugin_entropy_is_close_to_exact_and_corrected():
    from nbsupport.gating import plugin_entropy
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([0.4, 0.3, 0.2, 0.05, 0.05], dtype=torch.float64)
    exact = -(p * p.log()).sum().item()
    samples = torch.multinomial(p, 200, replacement=True, generator=g)
    plain, corrected = plugin_entropy(samples, miller_madow=False), plugin_entropy(samples)
    assert corrected - plain == pytest.approx((len(samples.unique()) - 1) / 400)
    # averaged over many small samples, the correction removes most of the bias
    runs = [torch.multinomial(p, 50, replacement=True, generator=g) for _ in range(400)]
    bias_plain = sum(plugin_entropy(r, miller_madow=False) for r in runs) / 400 - exact
    bias_mm = sum(plugin_entropy(r) for r in runs) / 400 - exact
    assert bias_plain < -0.02 and abs(bias_mm) < abs(bias_plain) / 3
    rows = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 1]])
    assert plugin_entropy(rows, miller_madow=False) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def _log_prob_sds(z, y, tau):
    """Standard deviations of log P(A) and log P(A | Y) under the joint law (X uniform over the rows),
    from the full table of patterns built with itertools and explicit products of gate probabilities."""
    on = torch.sigmoid(z / tau)
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=z.shape[1])), dtype=torch.float64)
    table = torch.stack([torch.prod(torch.where(patterns.bool(), row, 1 - row), dim=1) for row in on])  # P(a | x_i)
    p_a = table.mean(0)
    sd_a = math.sqrt(max(0.0, (p_a * p_a.log() ** 2).sum().item() - (p_a * p_a.log()).sum().item() ** 2))
    second, first = 0.0, 0.0
    for c in y.unique():
        p_c = (y == c).double().mean().item()
        p_ac = table[y == c].mean(0)
        second += p_c * (p_ac * p_ac.log() ** 2).sum().item()
        first += p_c * (p_ac * p_ac.log()).sum().item()
    return sd_a, math.sqrt(max(0.0, second - first**2))


@pytest.mark.parametrize("estimator, n", [("plugin", 200_000), ("density", 20_000)])
def test_gate_information_sampled_agrees_with_exact_when_both_run(estimator, n):
    from nbsupport.gating import gate_information, gate_information_sampled
    g = torch.Generator().manual_seed(2)
    z = torch.randn(40, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (40,), generator=g)
    exact = gate_information(z, y, 0.5)
    sampled = gate_information_sampled(z, y, 0.5, n, estimator=estimator, generator=torch.Generator().manual_seed(3))
    assert sampled.H_A_given_X == pytest.approx(exact.H_A_given_X, rel=1e-12)   # exact in both
    # either estimate averages -log P(a_s) (or its plug-in version) over n draws: standard deviation
    # sd(log P(A)) / sqrt(n); I(A;Y) differences two such averages of the same draws
    sd_a, sd_ay = _log_prob_sds(z, y, 0.5)
    tolerance = {"H_A": 5 * sd_a, "I_AX": 5 * sd_a, "H_A_given_Y": 5 * sd_ay, "I_AY": 5 * (sd_a + sd_ay)}
    for name, tol in tolerance.items():
        assert getattr(sampled, name) == pytest.approx(getattr(exact, name), abs=tol / n**0.5 + 1e-12), name


def test_density_estimate_stays_right_where_the_plugin_saturates():
    """12 nearly fair gates: H(A) is about 12 log 2 = 8.3 nats, far above log(2000) = 7.6."""
    from nbsupport.gating import gate_information, gate_information_sampled
    g = torch.Generator().manual_seed(4)
    z = torch.randn(30, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=g)
    exact = gate_information(z, y, 5.0)
    density = gate_information_sampled(z, y, 5.0, 2000, generator=torch.Generator().manual_seed(5))
    plugin = gate_information_sampled(z, y, 5.0, 2000, estimator="plugin", generator=torch.Generator().manual_seed(5))
    sd_a, sd_ay = _log_prob_sds(z, y, 5.0)          # 5 standard errors of the 2000-draw averages
    assert density.H_A == pytest.approx(exact.H_A, abs=5 * sd_a / 2000**0.5)
    assert density.H_A_given_Y == pytest.approx(exact.H_A_given_Y, abs=5 * sd_ay / 2000**0.5)
    assert plugin.H_A < exact.H_A - 0.5 and plugin.H_A <= math.log(2000) + 0.5


def test_gate_information_sampled_bad_input():
    from nbsupport.gating import gate_information_sampled
    z, y = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="n_samples"):
        gate_information_sampled(z, y, 0.5, 1)
    with pytest.raises(ValueError, match="estimator"):
        gate_information_sampled(z, y, 0.5, 10, estimator="knn")
    with pytest.raises(ValueError, match="z must"):
        gate_information_sampled(z, y[:-1], 0.5, 10)


def _weighted_moments_loop(x, z, tau, pattern):
    """P(a), E[X | a], Cov(X | a) by Bayes' rule, one sample at a time in numpy."""
    import numpy as np
    xs, zs = x.numpy(), z.numpy()
    probs = np.array([np.prod([1 / (1 + np.exp(-zi / tau)) if ai else 1 - 1 / (1 + np.exp(-zi / tau))
                               for zi, ai in zip(row, pattern)]) for row in zs])
    w = probs / probs.sum()
    mean = (w[:, None] * xs).sum(0)
    cov = sum(wi * np.outer(xi - mean, xi - mean) for wi, xi in zip(w, xs))
    return probs.mean(), mean, cov


def test_pattern_moments_match_a_loop_and_the_total_covariance():
    from nbsupport.gating import pattern_moments
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    z = x @ torch.randn(3, 4, generator=g, dtype=torch.float64) + 0.3
    moments = pattern_moments(x, z, 0.6)
    assert moments.prob.shape == (16,) and moments.cov.shape == (16, 3, 3)
    for code in (0, 5, 15):
        pattern = [(code >> i) & 1 for i in range(4)]
        p, mean, cov = _weighted_moments_loop(x, z, 0.6, pattern)
        assert moments.prob[code].item() == pytest.approx(p, rel=1e-10)
        torch.testing.assert_close(moments.mean[code], torch.from_numpy(mean), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(moments.cov[code], torch.from_numpy(cov), rtol=1e-10, atol=1e-12)
    assert moments.prob.sum().item() == pytest.approx(1.0, abs=1e-12)
    offsets = moments.mean - x.mean(0)
    total = (moments.prob.view(-1, 1, 1) * (moments.cov + offsets[:, :, None] * offsets[:, None, :])).sum(0)
    torch.testing.assert_close(total, torch.cov(x.T, correction=0), rtol=1e-10, atol=1e-12)


def test_pattern_moments_stay_finite_and_exact_for_impossible_patterns_and_shifted_data():
    """At a small tau most of the 2**6 patterns have P(a | x) = 0 for every row (underflow); shifting
    the data by 1e8 must not destroy the covariances by cancellation."""
    from nbsupport.gating import pattern_moments
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64)
    z = x @ torch.randn(2, 6, generator=g, dtype=torch.float64)
    moments = pattern_moments(x, z, 1e-3)
    assert bool(moments.mean.isfinite().all() and moments.cov.isfinite().all())
    offsets = moments.mean - x.mean(0)
    total = (moments.prob.view(-1, 1, 1) * (moments.cov + offsets[:, :, None] * offsets[:, None, :])).sum(0)
    torch.testing.assert_close(total, torch.cov(x.T, correction=0), rtol=1e-10, atol=1e-12)
    shifted = pattern_moments(x + 1e8, z, 0.5)
    reference = pattern_moments(x, z, 0.5)
    torch.testing.assert_close(shifted.cov, reference.cov, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(shifted.mean - 1e8, reference.mean, rtol=0, atol=1e-6)


def test_pattern_moments_hard_limit_and_given_patterns():
    from nbsupport.covariance import group_moments
    from nbsupport.gating import pattern_moments
    from nbsupport.patterns import group_by_pattern
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    z = x @ torch.randn(2, 3, generator=g, dtype=torch.float64)
    groups = group_by_pattern(z > 0)
    hard = group_moments(x, groups.inverse, ddof=0)
    patterns = groups.patterns.double()
    soft = pattern_moments(x, z, 1e-9, patterns=patterns)
    torch.testing.assert_close(soft.prob, groups.counts.double() / 200, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(soft.mean, hard.means, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(soft.cov, hard.covariances, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="patterns"):
        pattern_moments(x, z, 0.5, patterns=torch.full((2, 3), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x and z"):
        pattern_moments(x, z[:-1], 0.5)


@pytest.mark.parametrize("estimator", ["reinforce", "concrete"])
def test_elbo_surrogate_value_and_gradient(estimator):
    """REINFORCE: unbiased for the ELBO and its gradient (5 standard errors over 30 independent runs).
    Concrete at a small relaxation temperature: its value approaches the ELBO."""
    from nbsupport.gating import elbo_surrogate
    net, x, y = _net((3, 4, 3), n=5, seed=8)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9), requires_grad=True)
    params = [logits, *net.parameters()]
    exact = elbo(net, x, y, 0.7, torch.sigmoid(logits)).sum()
    exact_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact, params)])
    g = torch.Generator().manual_seed(10)
    values, grads = [], []
    relaxation = 0.5 if estimator == "reinforce" else 0.02
    for _ in range(30):
        s = elbo_surrogate(net, x, y, 0.7, logits, n_samples=2000, estimator=estimator, relaxation=relaxation,
                           generator=g).sum()
        values.append(s.item())
        grads.append(torch.cat([g_.reshape(-1) for g_ in torch.autograd.grad(s, params)]))
    values, grads = torch.tensor(values, dtype=torch.float64), torch.stack(grads)
    se = values.std() / 30**0.5
    if estimator == "reinforce":
        assert abs(values.mean() - exact.item()) < 5 * se
        z = (grads.mean(0) - exact_grad) / (grads.std(0) / 30**0.5 + 1e-12)
        assert bool((z.abs() < 5).all()), z
    else:
        assert abs(values.mean() - exact.item()) < 5 * se + 0.02 * abs(exact.item())


def test_elbo_surrogate_bad_input():
    from nbsupport.gating import elbo_surrogate
    net, x, y = _net()
    logits = torch.zeros(len(x), 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="q_logits"):
        elbo_surrogate(net, x, y, 1.0, logits[:, :3])
    with pytest.raises(ValueError, match="estimator"):
        elbo_surrogate(net, x, y, 1.0, logits, estimator="gumbel")
    with pytest.raises(ValueError, match="relaxation"):
        elbo_surrogate(net, x, y, 1.0, logits, estimator="concrete", relaxation=0.0)
    with pytest.raises(ValueError, match="n_samples"):
        elbo_surrogate(net, x, y, 1.0, logits, n_samples=1)


def test_gate_posterior_sees_the_label_only_when_asked():
    from nbsupport.gating import GatePosterior
    torch.manual_seed(0)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    with_label, without = GatePosterior(3, 5, n_classes=3), GatePosterior(3, 5)
    assert with_label(x, y).shape == (6, 5) == without(x, y).shape
    assert not torch.equal(with_label(x, y), with_label(x, (y + 1) % 3))
    assert torch.equal(without(x, y), without(x, (y + 1) % 3))


def test_sampled_gate_grads_match_autograd_with_the_drawn_gates():
    from nbsupport.gating import sampled_gate_grads
    net, x, y = _net((3, 5, 4, 3), n=6, seed=11)
    grads, gates = sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=1)
    assert grads.shape == (3, 6, sum(p.numel() for p in net.parameters())) and gates.shape == (3, 6, 9)
    again = sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=1)
    assert torch.equal(again[0], grads) and torch.equal(again[1], gates)
    explicit = sampled_gate_grads(net, x, y, 0.5, n_draws=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(explicit[1], gates)                              # seed = a fresh generator with that seed
    assert not torch.equal(sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=2)[1], gates)
    for draw, i in [(0, 0), (2, 5), (1, 3)]:
        net.zero_grad()
        hidden = gates[draw, i:i + 1].double()
        out = gated_forward(net, x[i:i + 1], [hidden[:, :5], hidden[:, 5:]])
        F.log_softmax(out, 1)[0, y[i]].backward()
        reference = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(grads[draw, i], reference, rtol=1e-12, atol=1e-12)


def test_sampled_gate_grads_draw_first_layer_gates_with_the_right_frequency():
    from nbsupport.gating import sampled_gate_grads
    net, x, y = _net((3, 4, 2), n=5, seed=12)
    _, gates = sampled_gate_grads(net, x, y, 0.8, n_draws=4000, rng=2)
    probs = soft_gates(net[0](x), 0.8).detach()
    se = (probs * (1 - probs) / 4000).sqrt()
    assert bool(((gates.double().mean(0) - probs).abs() < 5 * se + 1e-12).all())
    with pytest.raises(ValueError, match="n_draws"):
        sampled_gate_grads(net, x, y, 0.8, n_draws=0)


def test_fit_variational_approaches_the_posterior_and_keeps_the_bound():
    """With the model fixed and q(a | x, y), maximising the ELBO closes most of its gap to log P(y | x)."""
    from nbsupport.gating import GatePosterior, fit_variational
    net, x, y = _net((2, 4, 2), n=64, seed=13)
    torch.manual_seed(0)
    q = GatePosterior(2, 4, n_classes=2).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = fit_variational(net, q, x, y, 0.5, steps=150, lr=3e-2, batch_size=64, train_model=False, rng=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())   # model untouched
    gaps = torch.tensor(history["log_marginal"]) - torch.tensor(history["elbo"])
    assert bool((gaps >= -1e-12).all())
    assert gaps[-10:].mean() < 0.5 * gaps[:10].mean(), (gaps[:10].mean(), gaps[-10:].mean())
    with pytest.raises(ValueError, match="batch_size"):
        fit_variational(net, q, x, y, 0.5, steps=1, batch_size=65)


def _global_rng_states():
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available():
        states += [s.clone() for s in torch.cuda.get_rng_state_all()]
    return states


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_sampling_functions_leave_the_global_random_state_untouched(device):
    """CPU and (where present) every CUDA generator: explicit generators only, nothing reseeded."""
    from nbsupport.gating import (ESTIMATORS, GatePosterior, elbo_surrogate, fit_variational,
                                  gate_information_sampled, logit_gradient_estimates,
                                  sampled_gate_grads, train_latent_gates)
    net, x, y = _net((3, 5, 4, 3), n=6, seed=11)
    net, x, y = net.to(device), x.to(device), y.to(device)
    torch.manual_seed(123)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(456)
    before = _global_rng_states()
    sample_gates(torch.full((4,), 0.5, dtype=torch.float64, device=device), 3)
    log_marginal_likelihood(net[:3], x, y, 0.5, method="mc", n_samples=10)
    elbo_surrogate(net[:3], x, y, 0.5, torch.zeros(6, 5, dtype=torch.float64, device=device))
    gate_information_sampled(net[0](x), y, 0.5, 20)
    for estimator in ESTIMATORS:
        logit_gradient_estimates(net[:3], x, y, torch.zeros(6, 5, dtype=torch.float64, device=device),
                                 estimator, n_samples=4, n_repeats=2)
    assert all(torch.equal(a, b) for a, b in zip(before, _global_rng_states()))
    sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=1)
    sampled_gate_grads(net, x, y, 0.5, n_draws=3, generator=torch.Generator(device=device).manual_seed(3))
    one, x1, y1 = _net((3, 4, 3), n=8, seed=12)
    one, x1, y1 = one.to(device), x1.to(device), y1.to(device)
    log_marginal_likelihood(one, x1, y1, 0.5, method="mc", n_samples=10,
                            generator=torch.Generator(device=device).manual_seed(0))
    q = GatePosterior(3, 4, n_classes=3).double().to(device)
    before_q = _global_rng_states()
    fit_variational(one, q, x1, y1, 0.5, steps=2, batch_size=4, rng=0)
    train_latent_gates(one, x1, y1, 0.5, epochs=1, batch_size=4)
    after = _global_rng_states()
    assert all(torch.equal(a, b) for a, b in zip(before_q, after)) and len(before_q) == len(after)
    assert len(before) == len(before_q)


def test_sampled_gate_grads_generator_advances_and_deeper_gates_follow_earlier_ones():
    from nbsupport.gating import sampled_gate_grads
    net, x, y = _net((3, 5, 4, 3), n=6, seed=11)
    g = torch.Generator().manual_seed(5)
    first = sampled_gate_grads(net, x, y, 0.5, n_draws=2, generator=g)[1]
    second = sampled_gate_grads(net, x, y, 0.5, n_draws=2, generator=g)[1]
    assert not torch.equal(first, second)                               # the generator was advanced
    # with hard-ish layer-1 gates forced off (huge negative bias), layer 2 sees only its bias: its gates
    # must then follow sigma(b2 / tau), whatever x is
    with torch.no_grad():
        net[0].bias.fill_(-1e6)
    _, gates = sampled_gate_grads(net, x, y, 0.5, n_draws=4000, rng=3)
    assert not gates[..., :5].any()
    probs = torch.sigmoid(net[2].bias.detach() / 0.5)
    se = (probs * (1 - probs) / (4000 * 6)).sqrt()
    assert bool(((gates[..., 5:].double().mean((0, 1)) - probs).abs() < 5 * se + 1e-12).all())


def _posterior_marginals_loop(net, x, y, tau):
    """P(a_i = 1 | x, y) from a loop over samples and patterns with products unit by unit."""
    z = net[0](x)
    out = torch.zeros(z.shape, dtype=torch.float64)
    for i in range(len(x)):
        weights, pats = [], []
        for bits in itertools.product([0.0, 1.0], repeat=z.shape[1]):
            prior = 1.0
            for zi, ai in zip(z[i], bits):
                p_on = 1 / (1 + math.exp(-zi.item() / tau))
                prior *= p_on if ai else 1 - p_on
            lik = torch.softmax(net[2](torch.tensor(bits, dtype=torch.float64) * z[i]), 0)[y[i]].item()
            weights.append(prior * lik)
            pats.append(bits)
        w = torch.tensor(weights, dtype=torch.float64)
        out[i] = (w / w.sum()) @ torch.tensor(pats, dtype=torch.float64)
    return out


def test_posterior_marginals_match_a_loop_and_ignore_nothing():
    from nbsupport.gating import posterior_marginals
    net, x, y = _net((3, 5, 4), n=6, seed=14)
    with torch.no_grad():
        marginals = posterior_marginals(net, x, y, 0.6)
        torch.testing.assert_close(marginals, _posterior_marginals_loop(net, x, y, 0.6), rtol=1e-10, atol=1e-12)
        # a label-independent likelihood (zero readout) leaves the prior unchanged
        net[2].weight.zero_()
        torch.testing.assert_close(posterior_marginals(net, x, y, 0.6), soft_gates(net[0](x), 0.6))


def test_importance_sampling_covers_the_exact_marginal():
    """Importance sampling from a defensive mix of the exact posterior marginals: intervals of 3 delta-method
    standard errors cover the exact value on all but a binomial handful of 60 points (P(miss) ~ 0.27 % each,
    so more than 3 misses has probability < 1e-3)."""
    from nbsupport.gating import posterior_marginals
    net, x, y = _net((3, 8, 4), n=60, seed=15)
    tau = 0.3
    with torch.no_grad():
        exact = log_marginal_likelihood(net, x, y, tau)
        proposal = 0.9 * posterior_marginals(net, x, y, tau) + 0.05
        est = log_marginal_likelihood(net, x, y, tau, method="is", n_samples=4000, proposal=proposal,
                                      generator=torch.Generator().manual_seed(0))
        prior_mc = log_marginal_likelihood(net, x, y, tau, method="mc", n_samples=4000,
                                           generator=torch.Generator().manual_seed(0))
    z = (est.estimate - exact) / est.stderr
    assert int((z.abs() > 3).sum()) <= 3, z
    assert int(((prior_mc.estimate - exact).abs() > 3 * prior_mc.stderr).sum()) <= 3   # the reference itself


def test_importance_sampling_with_the_prior_as_proposal_is_plain_monte_carlo():
    net, x, y = _net((3, 6, 4), n=10, seed=16)
    with torch.no_grad():
        prior = soft_gates(net[0](x), 0.7)
        plain = log_marginal_likelihood(net, x, y, 0.7, method="mc", n_samples=300,
                                        generator=torch.Generator().manual_seed(4))
        weighted = log_marginal_likelihood(net, x, y, 0.7, method="is", n_samples=300, proposal=prior,
                                           generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(weighted.estimate, plain.estimate, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weighted.stderr, plain.stderr, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_importance_sampling_is_unbiased_for_the_likelihood_with_a_far_proposal():
    """With q = 1/2 for every gate (far from prior and posterior), the mean weight over 200 independent
    runs estimates P(y | x) without bias: within 5 standard errors of the run-to-run spread."""
    net, x, y = _net((3, 5, 4), n=4, seed=17)
    with torch.no_grad():
        exact = log_marginal_likelihood(net, x, y, 0.5).exp()
        half = torch.full((4, 5), 0.5, dtype=torch.float64)
        g = torch.Generator().manual_seed(5)
        runs = torch.stack([log_marginal_likelihood(net, x, y, 0.5, method="is", n_samples=20, proposal=half,
                                                    generator=g).estimate.exp() for _ in range(200)])
    se = runs.std(0) / 200**0.5
    assert bool(((runs.mean(0) - exact).abs() < 5 * se).all())


def test_importance_sampling_bad_input_and_saturated_proposals():
    net, x, y = _net()
    with pytest.raises(ValueError, match="proposal"):
        log_marginal_likelihood(net, x, y, 1.0, method="is")
    with pytest.raises(ValueError, match="proposal"):
        log_marginal_likelihood(net, x, y, 1.0, method="is", proposal=torch.full((len(x), 3), 0.5))
    with pytest.raises(ValueError, match="proposal"):
        log_marginal_likelihood(net, x, y, 1.0, method="is", proposal=torch.full((len(x), 5), 1.5))
    with torch.no_grad():
        hard = (net[0](x) > 0).double()        # proposal = hard gates; at tau -> 0 that is the prior itself
        est = log_marginal_likelihood(net, x, y, 1e-6, method="is", n_samples=5, proposal=hard)
        relu = F.log_softmax(net(x), 1).gather(1, y.view(-1, 1)).squeeze(1)
    assert bool(est.estimate.isfinite().all())
    torch.testing.assert_close(est.estimate, relu, rtol=1e-6, atol=1e-6)
    assert bool((est.stderr == 0).all())   # every draw the same pattern: the standard error is exactly 0


def test_mean_gate_log_likelihood_against_the_formula():
    from nbsupport.gating import mean_gate_log_likelihood
    net, x, y = _net((3, 5, 4), n=7, seed=18)
    z = x @ net[0].weight.T + net[0].bias
    logits = (z * torch.sigmoid(z / 0.4)) @ net[2].weight.T + net[2].bias
    reference = logits[torch.arange(7), y] - torch.logsumexp(logits, 1)
    torch.testing.assert_close(mean_gate_log_likelihood(net, x, y, 0.4), reference)
    deep, xd, yd = _net((3, 5, 4, 2), n=7, seed=19)
    h = xd @ deep[0].weight.T + deep[0].bias
    h = h * torch.sigmoid(h / 0.4) @ deep[2].weight.T + deep[2].bias
    h = (h * torch.sigmoid(h / 0.4)) @ deep[4].weight.T + deep[4].bias
    torch.testing.assert_close(mean_gate_log_likelihood(deep, xd, yd, 0.4), F.log_softmax(h, 1)[torch.arange(7), yd])
    with pytest.raises(ValueError, match="x must"):
        mean_gate_log_likelihood(net, x, y[:-1], 0.4)


def test_eigenvector_angles_of_rotated_matrices():
    """Matrices R(t) diag(3, 1) R(t)^T have leading eigenvector at angle t: pairwise angles are |t_p - t_q|
    folded into [0, pi/2]; checked with numpy's eigh too, in three dimensions."""
    import numpy as np
    from nbsupport.gating import eigenvector_angles
    angles = torch.tensor([0.0, 0.3, 1.2, 2.9], dtype=torch.float64)
    rot = torch.stack([torch.stack([angles.cos(), -angles.sin()], 1), torch.stack([angles.sin(), angles.cos()], 1)], 1)
    cov = rot @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ rot.transpose(1, 2)
    diff = (angles[:, None] - angles[None, :]).abs() % math.pi
    torch.testing.assert_close(eigenvector_angles(cov), torch.minimum(diff, math.pi - diff), rtol=0, atol=1e-7)
    torch.testing.assert_close(eigenvector_angles(cov, reference=cov[1]),
                               torch.minimum(diff[:, 1], math.pi - diff[:, 1]), rtol=0, atol=1e-7)
    g = np.random.default_rng(0)
    mats = [(lambda a: a @ a.T)(g.standard_normal((3, 3))) for _ in range(4)]
    tops = [np.linalg.eigh(m)[1][:, -1] for m in mats]
    ref = np.array([[np.arccos(min(1.0, abs(u @ v))) for v in tops] for u in tops])
    np.testing.assert_allclose(eigenvector_angles(torch.tensor(np.stack(mats))).numpy(), ref, atol=1e-7)
    with pytest.raises(ValueError, match="cov"):
        eigenvector_angles(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="reference"):
        eigenvector_angles(cov, reference=torch.zeros(3, 3))


def test_eigenvector_angles_match_scipy_near_0_and_near_right_angles_and_in_chunks():
    """Against scipy's subspace_angles of each pair of leading eigenvectors (numpy's eigh), for
    random pairs, nearly parallel pairs (1e-9 rad, where an arccos of the cosine loses half its
    digits) and nearly orthogonal ones; 2100 matrices make the function work in row chunks."""
    import numpy as np
    from scipy.linalg import subspace_angles
    from nbsupport.gating import eigenvector_angles
    g = np.random.default_rng(1)
    base = g.standard_normal((5, 5))
    tops, mats = [], []
    for delta in (0.0, 1e-9, 1e-4, 0.7, math.pi / 2 - 1e-9):
        u = np.linalg.qr(base)[0]                            # orthonormal eigenvectors
        c, s = math.cos(delta), math.sin(delta)
        v = u.copy()
        v[:, 0], v[:, 1] = c * u[:, 0] + s * u[:, 1], -s * u[:, 0] + c * u[:, 1]
        mats.append(v @ np.diag([5.0, 1, 0.5, 0.2, 0.1]) @ v.T)
    mats += [(lambda a: a @ a.T)(g.standard_normal((5, 5))) for _ in range(4)]
    tops = [np.linalg.eigh(m)[1][:, -1:] for m in mats]
    ref = np.array([[subspace_angles(u, v)[0] for v in tops] for u in tops])
    got = eigenvector_angles(torch.tensor(np.stack(mats))).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-15)
    assert got[0, 1] == pytest.approx(1e-9, rel=1e-5)            # arccos would give 0 or ~1.5e-8
    t = torch.linspace(0, math.pi, 2100, dtype=torch.float64)
    rot = torch.stack([torch.stack([t.cos(), -t.sin()], 1), torch.stack([t.sin(), t.cos()], 1)], 1)
    many = rot @ torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)) @ rot.transpose(1, 2)
    diff = (t[:, None] - t[None, :]).abs()
    torch.testing.assert_close(eigenvector_angles(many), torch.minimum(diff, math.pi - diff),
                               rtol=0, atol=1e-7)


def test_train_latent_gates_raises_the_marginal_likelihood():
    from nbsupport.gating import train_latent_gates
    net, x, y = _net((2, 6, 2), n=80, seed=20)
    y = (x[:, 0] * x[:, 1] > 0).long()                       # XOR-like labels: needs the hidden layer
    before = log_marginal_likelihood(net, x, y, 0.3).mean().item()
    history = train_latent_gates(net, x, y, 0.3, epochs=60, lr=3e-2, batch_size=40,
                                 generator=torch.Generator().manual_seed(0))
    after = log_marginal_likelihood(net, x, y, 0.3).mean().item()
    assert len(history) == 60 and history[0] == pytest.approx(-before, abs=0.2)
    assert after > before + 0.2 and history[-1] < history[0]
    with pytest.raises(ValueError, match="epochs"):
        train_latent_gates(net, x, y, 0.3, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_latent_gates(net, x, y, 0.3, epochs=1, batch_size=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_train_latent_gates_many_is_each_model_trained_alone(dtype):
    """Five models with their own temperatures and seeds, trained together, against the same models
    trained one by one with train_latent_gates (the reference loop): the same weights and histories
    to rounding; N = 50 with batches of 16 leaves a short last batch."""
    from nbsupport.gating import train_latent_gates, train_latent_gates_many
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    y = (x[:, 0] * x[:, 1] > 0).long() + (x[:, 2] > 1).long()               # 3 classes
    starts = []
    for seed in range(5):
        torch.manual_seed(seed)
        starts.append(mlp([3, 6, 3]).to(dtype))
    taus, rngs = [0.1, 0.3, 0.3, 1.0, 3.0], [4, 0, 1, 2, torch.Generator().manual_seed(7)]
    alone = [deepcopy(m) for m in starts]
    ref_hist = [train_latent_gates(m, x, y, t, epochs=4, lr=3e-2, batch_size=16,
                                   rng=r if isinstance(r, int) else torch.Generator().manual_seed(7))
                for m, t, r in zip(alone, taus, rngs)]
    together = [deepcopy(m) for m in starts]
    hist = train_latent_gates_many(together, x, y, taus, epochs=4, lr=3e-2, batch_size=16, rngs=rngs)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for a, b in zip(alone, together):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.array(hist), np.array(ref_hist), rtol=tol, atol=tol)
    moved = max((p - q).abs().max().item() for a, b in zip(starts, together)
                for p, q in zip(a.parameters(), b.parameters()))
    assert moved > 1e-2                                                       # it did train
    one = [deepcopy(starts[0]) for _ in range(2)]                          # one temperature for all
    train_latent_gates_many(one, x, y, 0.3, epochs=1, batch_size=16, rngs=[0, 0])
    for p, q in zip(one[0].parameters(), one[1].parameters()):
        assert torch.equal(p, q)


def test_train_latent_gates_many_refuses_bad_input_naming_it():
    from nbsupport.gating import train_latent_gates_many
    net, x, y = _net((2, 4, 2), n=10, seed=0)
    other = _net((2, 5, 2), n=10, seed=1)[0]
    for kwargs, name in [(dict(models=[]), "models"), (dict(models=[net, other]), "models"),
                         (dict(taus=[0.3, 0.3]), "taus"), (dict(taus=-1.0), "taus"),
                         (dict(rngs=[0, 1]), "rngs"), (dict(epochs=0), "epochs"),
                         (dict(batch_size=11), "batch_size"), (dict(lr=0.0), "lr")]:
        call = dict(models=[net], x=x, y=y, taus=0.3, epochs=1, batch_size=5) | kwargs
        with pytest.raises(ValueError, match=name):
            train_latent_gates_many(**call)


@pytest.mark.slow
def test_fit_variational_exact_gradient_with_cosine_schedule_and_bad_options():
    """The exact-gradient fit with a cosine-decayed rate reaches (close to) the best factorised q(a | x, y):
    its final gap is below that of q = prior, computed independently by enumeration."""
    from nbsupport.gating import GatePosterior, fit_variational
    net, x, y = _net((2, 4, 2), n=64, seed=13)
    torch.manual_seed(0)
    q = GatePosterior(2, 4, n_classes=2).double()
    history = fit_variational(net, q, x, y, 0.5, steps=200, lr=3e-2, batch_size=64, train_model=False,
                              estimator="exact", schedule="cosine", rng=0)
    with torch.no_grad():
        exact = log_marginal_likelihood(net, x, y, 0.5)
        prior_gap = (exact - elbo(net, x, y, 0.5, soft_gates(net[0](x), 0.5))).mean()
        fitted_gap = (exact - elbo(net, x, y, 0.5, torch.sigmoid(q(x, y)))).mean()
    assert fitted_gap < prior_gap and history["elbo"][-1] >= history["elbo"][0]
    with pytest.raises(ValueError, match="schedule"):
        fit_variational(net, q, x, y, 0.5, steps=1, batch_size=8, schedule="linear")
    with pytest.raises(ValueError, match="estimator"):
        fit_variational(net, q, x, y, 0.5, steps=1, batch_size=8, estimator="gumbel")


def test_numpy_and_tensor_scalars_are_real_temperatures():
    import numpy as np
    net, x, y = _net()
    reference = log_marginal_likelihood(net, x, y, 0.3)
    for tau in (np.float64(0.3), torch.tensor(0.3, dtype=torch.float64)):
        assert torch.equal(log_marginal_likelihood(net, x, y, tau), reference)
    with pytest.raises(ValueError, match="tau must be a finite real number > 0"):
        log_marginal_likelihood(net, x, y, True)


# --- one randomness convention (issue 25) -------------------------------------------------------

def _sampling_calls(net, x, y):
    """Every sampling function of the package, as f(rng) -> a tensor of its draws or results."""
    from nbsupport.gating import (elbo_surrogate, gate_information_sampled, importance_log_weights,
                                  logit_gradient_estimates, sampled_gate_grads, train_latent_gates)
    z = net[0](x).detach()
    logits = torch.zeros_like(z)

    def trained(rng):
        copy = deepcopy(net)                                              # no fresh initialisation
        return torch.tensor(train_latent_gates(copy, x, y, 0.5, epochs=2, batch_size=3, rng=rng))

    return {
        "sample_gates": lambda rng: sample_gates(soft_gates(z, 0.5), 5, rng=rng),
        "mc": lambda rng: log_marginal_likelihood(net, x, y, 0.5, "mc", 20, rng=rng).estimate,
        "is": lambda rng: importance_log_weights(net, x, y, 0.5, torch.full_like(z, 0.5), 20, rng=rng),
        "elbo_surrogate": lambda rng: elbo_surrogate(net, x, y, 0.5, logits, rng=rng),
        "gate_information_sampled": lambda rng: torch.tensor(
            gate_information_sampled(z, y, 0.5, 50, rng=rng).H_A),
        "logit_gradient_estimates": lambda rng: logit_gradient_estimates(
            net, x, y, logits, "disarm", 4, 3, rng=rng),
        "sampled_gate_grads": lambda rng: sampled_gate_grads(net, x, y, 0.5, 3, rng=rng)[0],
        "train_latent_gates": trained,
    }


def test_every_sampling_function_takes_rng_as_int_or_generator_and_never_the_global_state():
    net, x, y = _net((3, 5, 4), n=7, seed=21)
    for name, call in _sampling_calls(net, x, y).items():
        torch.manual_seed(99)
        before = torch.random.get_rng_state()
        same = call(4), call(4)
        assert torch.equal(*same), name                                   # an int seed: reproducible
        assert not torch.equal(call(4), call(5)), name                    # ... and it matters
        g = torch.Generator().manual_seed(4)
        assert torch.equal(call(g), same[0]), name                        # int k = Generator seeded k
        assert not torch.equal(call(g), same[0]), name                    # the generator advanced
        assert torch.equal(call(np.random.default_rng(1)), call(np.random.default_rng(1))), name
        assert torch.equal(torch.random.get_rng_state(), before), name    # global state untouched
        for bad in (None, -1, 1.5, "0"):
            with pytest.raises(ValueError, match="rng"):
                call(bad)


def test_generator_keyword_is_an_alias_of_rng():
    net, x, y = _net((3, 5, 4), n=7, seed=22)
    a = log_marginal_likelihood(net, x, y, 0.5, "mc", 20, generator=torch.Generator().manual_seed(3))
    b = log_marginal_likelihood(net, x, y, 0.5, "mc", 20, rng=3)
    assert torch.equal(a.estimate, b.estimate)
    with pytest.raises(ValueError, match="generator"):
        sample_gates(torch.tensor([0.5]), 2, generator=3)
    assert sample_gates(torch.tensor([0.5]), np.int64(3)).shape == (3, 1)   # numpy counts accepted
    with pytest.raises(ValueError, match="n_samples"):
        sample_gates(torch.tensor([0.5]), True)


# --- importance-sampling diagnostics ---------------------------------------------------------

def test_effective_sample_size_against_a_loop():
    from nbsupport.gating import effective_sample_size
    log_w = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    for j in range(4):
        w = [math.exp(v) for v in log_w[:, j].tolist()]
        assert abs(effective_sample_size(log_w)[j].item() - sum(w) ** 2 / sum(v * v for v in w)) < 1e-9
    assert torch.allclose(effective_sample_size(torch.zeros(30, 2)), torch.full((2,), 30.0))
    one_big = torch.zeros(30, 1, dtype=torch.float64)
    one_big[0] = 800.0                                                    # no overflow
    assert abs(effective_sample_size(one_big).item() - 1) < 1e-12


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8])
def test_pareto_khat_recovers_the_tail_shape_of_generalised_pareto_weights(k):
    """Weights drawn from a generalised Pareto law of shape k: the fitted k-hat is within the
    sampling spread of the estimate (about (1 + k) / sqrt(M) for M = 3 sqrt(S) tail points), and
    agrees with scipy's maximum-likelihood fit of the same tail (a different estimator)."""
    from scipy import stats

    from nbsupport.gating import pareto_khat
    S, reps = 10_000, 8
    rng = np.random.default_rng(int(10 * k))
    weights = stats.genpareto(c=k).rvs(size=(S, reps), random_state=rng) + 1e-3
    khat = pareto_khat(np.log(weights))
    tail = int(np.ceil(3 * np.sqrt(S)))
    spread = (1 + k) / np.sqrt(tail)
    assert abs(khat.mean() - k) < 3 * spread / np.sqrt(reps) + 0.05      # 0.05: the prior's pull to 1/2
    column = np.sort(np.log(weights[:, 0]))
    cut = np.exp(column[-tail - 1])
    mle = stats.genpareto.fit(np.exp(column[-tail:]) - cut, floc=0)[0]
    assert abs(khat[0] - mle) < 2 * spread


def test_pareto_khat_light_tails_constant_weights_and_bad_input():
    from nbsupport.gating import pareto_khat
    rng = np.random.default_rng(0)
    bounded = np.log(rng.uniform(size=(4000, 3)))                        # bounded weights: k < 0
    assert (pareto_khat(bounded) < 0).all()
    assert np.isnan(pareto_khat(np.zeros(100)))                          # no tail to fit
    assert np.isnan(pareto_khat(np.full(100, -np.inf)))                  # all weights 0
    # a discrete law (weights of 6 patterns): the tail ties, so k-hat is undefined, while the same
    # number of continuous draws gives a finite k-hat
    discrete = np.log(rng.choice([1.0, 2.0, 3.0, 5.0, 8.0, 40.0], size=(2000, 2)))
    assert np.isnan(pareto_khat(discrete)).all()
    assert np.isfinite(pareto_khat(np.log(rng.uniform(size=(2000, 2))))).all()
    assert pareto_khat(torch.zeros(100, 2)).shape == (2,)
    with pytest.raises(ValueError, match="log_weights"):
        pareto_khat(np.zeros(5))
    with pytest.raises(ValueError, match="log_weights"):
        pareto_khat(np.full(20, np.nan))


def test_importance_log_weights_are_the_draws_behind_method_is():
    from nbsupport.gating import importance_log_weights
    net, x, y = _net((3, 5, 4), n=6, seed=23)
    q = torch.full((6, 5), 0.3, dtype=torch.float64)
    log_w = importance_log_weights(net, x, y, 0.7, q, 40, rng=2)
    est = log_marginal_likelihood(net, x, y, 0.7, "is", 40, proposal=q, rng=2)
    torch.testing.assert_close(torch.logsumexp(log_w, 0) - math.log(40), est.estimate)
    # one draw by hand: log P(y | x, a) + log P(a | x) - log q(a)
    a = sample_gates(q, 40, rng=2)[0, 0]
    z = net[0](x[0])
    p_on = torch.sigmoid(z / 0.7)
    by_hand = (torch.log_softmax(net[2](a * z), 0)[y[0]] + (a * p_on.log() + (1 - a) * (1 - p_on).log()).sum()
               - (a * math.log(0.3) + (1 - a) * math.log(0.7)).sum())
    assert abs(log_w[0, 0].item() - by_hand.item()) < 1e-10


def test_importance_relative_variance_against_a_pattern_loop_and_sampled_weights():
    """chi^2 = sum_a p(a)^2 / q(a) / P^2 - 1 by a plain loop over patterns (probabilities multiplied
    unit by unit); the sample variance of 200 000 drawn weights agrees within its Monte Carlo spread;
    0 when q is the exact posterior of a one-unit layer (the posterior is then factorised)."""
    from nbsupport.gating import importance_log_weights, importance_relative_variance
    net, x, y = _net((3, 4, 3), n=5, seed=31)
    q = torch.sigmoid(torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    got = importance_relative_variance(net, x, y, 0.6, q)
    z = net[0](x)
    for i in range(len(x)):
        terms, total = [], 0.0
        for bits in itertools.product([0.0, 1.0], repeat=4):
            prior = proposal = 1.0
            for zi, qi, ai in zip(z[i].tolist(), q[i].tolist(), bits):
                p_on = 1 / (1 + math.exp(-zi / 0.6))
                prior *= p_on if ai else 1 - p_on
                proposal *= qi if ai else 1 - qi
            lik = torch.softmax(net[2](torch.tensor(bits, dtype=torch.float64) * z[i]), 0)[y[i]].item()
            terms.append((prior * lik) ** 2 / proposal)
            total += prior * lik
        assert abs(got[i].item() - (sum(terms) / total**2 - 1)) < 1e-10
    w = importance_log_weights(net, x, y, 0.6, q, 200_000, rng=3).exp()
    sampled = w.var(0) / w.mean(0) ** 2
    fourth = ((w - w.mean(0)) ** 4).mean(0) / w.mean(0) ** 4                  # spread of a variance
    assert ((sampled - got).abs() <= 5 * (fourth / 200_000).sqrt() + 1e-12).all()
    one, x1, y1 = _net((2, 1, 2), n=4, seed=32)
    from nbsupport.gating import posterior_marginals
    exact_q = posterior_marginals(one, x1, y1, 0.8)
    assert (importance_relative_variance(one, x1, y1, 0.8, exact_q) < 1e-12).all()
    assert (got > 1e-3).all()                                  # a random proposal is not the posterior
    with pytest.raises(ValueError, match="proposal"):
        importance_relative_variance(net, x, y, 0.6, torch.zeros(5, 4, dtype=torch.float64))


# --- gradient estimators of E_q[log P(y | x, A)] against enumeration -------------------------

def test_exact_logit_gradient_against_finite_differences():
    from nbsupport.gating import exact_logit_gradient
    net, x, y = _net((3, 4, 3), n=3, seed=24)
    phi = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def value(phi):
        return elbo(net, x, y, 1.0, torch.sigmoid(phi)) + bernoulli_kl(torch.sigmoid(phi), net[0](x) / 1.0)

    grad = exact_logit_gradient(net, x, y, phi)
    for i in range(3):
        for j in range(4):
            step = torch.zeros_like(phi)
            step[i, j] = 1e-6
            fd = (value(phi + step)[i] - value(phi - step)[i]).item() / 2e-6
            assert abs(fd - grad[i, j].item()) < 1e-6


@pytest.mark.parametrize("estimator", ["reinforce", "disarm"])
def test_unbiased_logit_gradient_estimators_average_to_the_exact_gradient(estimator):
    """Mean of 4000 estimates within 4 standard errors of the exact gradient, entry by entry."""
    from nbsupport.gating import exact_logit_gradient, logit_gradient_estimates
    net, x, y = _net((3, 4, 3), n=4, seed=25)
    phi = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    draws = logit_gradient_estimates(net, x, y, phi, estimator, n_samples=4, n_repeats=4000, rng=1)
    exact = exact_logit_gradient(net, x, y, phi)
    se = draws.std(0) / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - exact).abs() <= 4 * se + 1e-12).all())
    assert bool((se > 0).any())


def test_disarm_is_exact_for_one_unit_and_concrete_is_biased():
    """With m = 1, DisARM's pair either agrees (estimate 0) or differs, when it returns
    f(1) - f(0) times sigma(|phi|) / 2 / P(differ); its average is then exactly the gradient q(1-q)(f(1) - f(0))
    up to sampling; concrete at lambda = 1 is off by far more than its standard error."""
    from nbsupport.gating import exact_logit_gradient, logit_gradient_estimates
    net, x, y = _net((3, 1, 3), n=5, seed=26)
    phi = torch.tensor([[0.3], [-1.0], [2.0], [0.0], [-0.2]], dtype=torch.float64)
    z = net[0](x)
    f1 = torch.log_softmax(net[2](z), 1).gather(1, y.view(-1, 1)).squeeze(1)
    f0 = torch.log_softmax(net[2](0 * z), 1).gather(1, y.view(-1, 1)).squeeze(1)
    q = torch.sigmoid(phi[:, 0])
    exact = exact_logit_gradient(net, x, y, phi)[:, 0]
    torch.testing.assert_close(exact, q * (1 - q) * (f1 - f0))
    disarm = logit_gradient_estimates(net, x, y, phi, "disarm", 2, 20_000, rng=3)[..., 0]
    values = set((disarm / (f1 - f0)).flatten().round(decimals=9).tolist())
    assert len(values) <= 1 + 5                         # 0 or one value per point
    assert bool(((disarm.mean(0) - exact).abs() < 4 * disarm.std(0) / math.sqrt(20_000) + 1e-12).all())
    concrete = logit_gradient_estimates(net, x, y, phi, "concrete", 2, 20_000, relaxation=1.0, rng=3)[..., 0]
    assert bool(((concrete.mean(0) - exact).abs() > 4 * concrete.std(0) / math.sqrt(20_000)).any())


def test_disarm_surrogate_in_elbo_surrogate_and_fit_variational():
    from nbsupport.gating import GatePosterior, elbo_surrogate, exact_logit_gradient, fit_variational
    net, x, y = _net((3, 4, 3), n=5, seed=27)
    phi = torch.zeros(5, 4, dtype=torch.float64, requires_grad=True)
    total = torch.zeros(5, 4, dtype=torch.float64)
    for r in range(3000):
        value = elbo_surrogate(net, x, y, 0.5, phi, 2, "disarm", rng=r).sum()
        total += torch.autograd.grad(value, phi)[0]
    kl_grad = torch.autograd.grad(bernoulli_kl(torch.sigmoid(phi), net[0](x).detach() / 0.5).sum(), phi)[0]
    torch.testing.assert_close(total / 3000 + kl_grad, exact_logit_gradient(net, x, y, phi), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="n_samples"):
        elbo_surrogate(net, x, y, 0.5, phi, 3, "disarm")
    q = GatePosterior(3, 4, n_classes=3).double()
    h = fit_variational(net, q, x, y, 0.5, steps=3, batch_size=5, estimator="disarm", n_samples=4)
    assert len(h["elbo"]) == 3


# --- the factorised family's per-point optimum -----------------------------------------------

def test_optimal_factorised_posterior_climbs_and_is_stationary():
    from nbsupport.gating import exact_logit_gradient, optimal_factorised_posterior, posterior_marginals
    net, x, y = _net((3, 6, 4), n=8, seed=28)
    tau = 0.7
    prior = soft_gates(net[0](x), tau).detach()
    values = [elbo(net, x, y, tau, prior)]
    for sweeps in (1, 2, 5, 50):
        values.append(elbo(net, x, y, tau, optimal_factorised_posterior(net, x, y, tau, init=prior,
                                                                           max_sweeps=sweeps)))
    for before, after in zip(values[:-1], values[1:]):
        assert bool((after >= before - 1e-12).all())                    # coordinate ascent never descends
    best = optimal_factorised_posterior(net, x, y, tau)
    logits = torch.logit(best)
    grad = exact_logit_gradient(net, x, y, logits) - torch.autograd.grad(
        bernoulli_kl(torch.sigmoid(logits.requires_grad_()), net[0](x).detach() / tau).sum(), logits)[0]
    assert grad.abs().max() < 1e-7                                      # a stationary point of the ELBO
    marg = posterior_marginals(net, x, y, tau)
    assert bool((elbo(net, x, y, tau, best) >= elbo(net, x, y, tau, marg) - 1e-12).all())
    assert bool((elbo(net, x, y, tau, best) <= log_marginal_likelihood(net, x, y, tau) + 1e-12).all())


@pytest.mark.slow
def test_optimal_factorised_posterior_is_the_posterior_when_the_family_contains_it():
    """One unit: every posterior is factorised, so the optimum closes the gap; and it is at least
    as good as a long exact-gradient Adam run on free per-point logits (an independent optimiser)."""
    from nbsupport.gating import optimal_factorised_posterior, posterior_marginals
    net, x, y = _net((3, 1, 3), n=6, seed=29)
    best = optimal_factorised_posterior(net, x, y, 0.4)
    torch.testing.assert_close(best, posterior_marginals(net, x, y, 0.4))
    gap = log_marginal_likelihood(net, x, y, 0.4) - elbo(net, x, y, 0.4, best)
    assert gap.abs().max() < 1e-10
    net, x, y = _net((3, 5, 3), n=6, seed=30)
    logits = torch.zeros(6, 5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(1500):
        loss = -elbo(net, x, y, 0.4, torch.sigmoid(logits)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    adam = elbo(net, x, y, 0.4, torch.sigmoid(logits)).detach()
    cavi = elbo(net, x, y, 0.4, optimal_factorised_posterior(net, x, y, 0.4))
    assert bool((cavi >= adam - 1e-6).all())
    with pytest.raises(ValueError, match="init"):
        optimal_factorised_posterior(net, x, y, 0.4, init=torch.zeros(6, 4, dtype=torch.float64))


def test_fit_variational_without_records_fits_the_same_posterior():
    """record=False skips the exact evaluations only: same draws, same fitted q."""
    from nbsupport.gating import GatePosterior, fit_variational
    net, x, y = _net((3, 4, 3), n=12, seed=31)
    fitted = []
    for record in (True, False):
        torch.manual_seed(0)
        q = GatePosterior(3, 4, n_classes=3).double()
        history = fit_variational(deepcopy(net), q, x, y, 0.5, steps=5, batch_size=6, rng=2,
                                  record=record)
        assert len(history["elbo"]) == (5 if record else 0) and len(history["surrogate"]) == 5
        fitted.append(torch.cat([p.detach().reshape(-1) for p in q.parameters()]))
    assert torch.equal(*fitted)


def _k_floors_ratio(e):
    """The old rule's statistic: norm of the mean error over (RMS error / sqrt(n))."""
    rms = np.sqrt((e ** 2).sum(1).mean())
    return np.linalg.norm(e.mean(0)) / (rms / np.sqrt(len(e)))


@pytest.mark.parametrize("law", ["gaussian", "centred exponential"])
def test_bias_test_keeps_its_size_in_many_dimensions(law):
    from nbsupport.gating import bias_test
    rng = np.random.default_rng(0)
    n, d, reps = 300, 100, 200
    scales = np.linspace(0.2, 3.0, d)  # unequal variances per coordinate
    pvalues = []
    for r in range(reps):
        if law == "gaussian":
            e = rng.normal(size=(n, d)) * scales
        else:  # mean zero but skewed: the sign flip is then only approximate
            e = (rng.exponential(size=(n, d)) - 1.0) * scales
        pvalues.append(bias_test(e, n_flips=200, rng=r).p)
    pvalues = np.array(pvalues)
    alpha = 0.05
    # binomial bound on the rejection rate of a level-alpha test over 200 nulls
    assert (pvalues <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / reps)
    # p-values roughly uniform: mean 1/2 within 4 standard errors (sd 1/sqrt(12))
    assert abs(pvalues.mean() - 0.5) < 4 / np.sqrt(12 * reps)


def test_bias_test_finds_a_planted_bias_the_k_floors_rule_misses():
    from nbsupport.gating import bias_test
    rng = np.random.default_rng(1)
    n, d, reps = 1000, 400, 30
    bias = rng.normal(size=d)
    bias *= np.sqrt(0.25 * d / n) / np.linalg.norm(bias)  # n ||b||^2 / d = 1/4
    stats, detected, ratios = [], [], []
    for r in range(reps):
        e = rng.normal(size=(n, d)) + bias
        out = bias_test(e, n_flips=200, rng=r)
        stats.append(out.squared_bias)
        detected.append(out.p <= 0.05)
        ratios.append(_k_floors_ratio(e))
    # the k-floors ratio sits near sqrt(1 + 1/4): three floors never see this bias
    assert max(ratios) < 3
    assert np.mean(detected) >= 0.8
    # U is unbiased for ||b||^2 (independent reference: the planted value)
    stats = np.array(stats)
    se = stats.std(ddof=1) / np.sqrt(reps)
    assert abs(stats.mean() - bias @ bias) < 4 * se


def test_bias_test_statistic_matches_a_plain_double_loop_and_refuses_bad_input():
    from nbsupport.gating import bias_test
    rng = np.random.default_rng(2)
    e = rng.normal(size=(12, 5)) + 0.3
    loop = sum(e[i] @ e[j] for i in range(12) for j in range(12) if i != j) / (12 * 11)
    out = bias_test(torch.from_numpy(e), n_flips=200, rng=0)
    assert abs(out.squared_bias - loop) < 1e-12
    assert out.n_flips == 200 and 1 / 201 <= out.p <= 1
    with pytest.raises(ValueError, match="errors"):
        bias_test(np.zeros(5))
    with pytest.raises(ValueError, match="errors"):
        bias_test(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="n_flips"):
        bias_test(e, n_flips=10)

"""nbsupport.gating.core against brute-force pattern loops, Monte Carlo bounds and the tau -> 0 limit:
gates, the exact and sampled marginal likelihood, importance sampling and its diagnostics, posterior marginals,
sampled gate gradients and the latent-gate training loop."""

import itertools
from copy import deepcopy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbsupport.gating import gated_forward, log_marginal_likelihood, sample_gates, soft_gates
from nbsupport.models import mlp

from gating_reference import _net


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


def test_sampled_gate_grads_match_autograd_with_the_drawn_gates():
    from nbsupport.gating import sampled_gate_grads
    net, x, y = _net((3, 5, 4, 3), n=6, seed=11)
    grads, gates = sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=1)
    assert grads.shape == (3, 6, sum(p.numel() for p in net.parameters())) and gates.shape == (3, 6, 9)
    again = sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=1)
    assert torch.equal(again[0], grads) and torch.equal(again[1], gates)
    explicit = sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=torch.Generator().manual_seed(1))
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


def test_sampled_gate_grads_generator_advances_and_deeper_gates_follow_earlier_ones():
    from nbsupport.gating import sampled_gate_grads
    net, x, y = _net((3, 5, 4, 3), n=6, seed=11)
    g = torch.Generator().manual_seed(5)
    first = sampled_gate_grads(net, x, y, 0.5, n_draws=2, rng=g)[1]
    second = sampled_gate_grads(net, x, y, 0.5, n_draws=2, rng=g)[1]
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


def test_train_latent_gates_raises_the_marginal_likelihood():
    from nbsupport.gating import train_latent_gates
    net, x, y = _net((2, 6, 2), n=80, seed=20)
    y = (x[:, 0] * x[:, 1] > 0).long()                       # XOR-like labels: needs the hidden layer
    before = log_marginal_likelihood(net, x, y, 0.3).mean().item()
    result = train_latent_gates(net, x, y, 0.3, epochs=60, lr=3e-2, batch_size=40,
                                rng=torch.Generator().manual_seed(0))
    after = log_marginal_likelihood(net, x, y, 0.3).mean().item()
    assert [r["epoch"] for r in result.history] == list(range(1, 61))
    assert result.key == "" and not result.from_cache and result.checkpoints == {}
    history = [r["loss"] for r in result.history]
    assert history[0] == pytest.approx(-before, abs=0.2)
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
    ref = [train_latent_gates(m, x, y, t, epochs=4, lr=3e-2, batch_size=16,
                              rng=r if isinstance(r, int) else torch.Generator().manual_seed(7))
           for m, t, r in zip(alone, taus, rngs)]
    together = [deepcopy(m) for m in starts]
    results = train_latent_gates_many(together, x, y, taus, epochs=4, lr=3e-2, batch_size=16, rngs=rngs)
    assert [[r["epoch"] for r in res.history] for res in results] == [[r["epoch"] for r in res.history]
                                                                      for res in ref]
    hist = [[r["loss"] for r in res.history] for res in results]
    ref_hist = [[r["loss"] for r in res.history] for res in ref]
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

"""nbsupport.gating.variational: the ELBO against a pattern loop, its surrogate and the
logit-gradient estimators against exact gradients, the factorised posterior, fit_variational and bias_test."""

import itertools
from copy import deepcopy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbsupport.gating import all_patterns, bernoulli_kl, elbo, log_marginal_likelihood, soft_gates
from nbsupport.models import mlp

from gating_reference import _net


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
                           rng=g).sum()
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


def test_fit_variational_approaches_the_posterior_and_keeps_the_bound():
    """With the model fixed and q(a | x, y), maximising the ELBO closes most of its gap to log P(y | x)."""
    from nbsupport.gating import GatePosterior, fit_variational
    net, x, y = _net((2, 4, 2), n=64, seed=13)
    torch.manual_seed(0)
    q = GatePosterior(2, 4, n_classes=2).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = fit_variational(net, q, x, y, 0.5, steps=150, lr=3e-2, batch_size=64, train_model=False,
                              rng=0).history
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())   # model untouched
    assert [r["step"] for r in history] == list(range(1, 151))
    gaps = torch.tensor([r["log_marginal"] - r["elbo"] for r in history])
    # the loss is minus the REINFORCE surrogate's value, an unbiased estimate of the exact ELBO of
    # the same batch at the same q: the errors average out (each unbiased given the past)
    errors = torch.tensor([r["loss"] + r["elbo"] for r in history])
    assert errors.mean().abs() < 4 * errors.std() / math.sqrt(len(errors)), errors.mean()
    assert bool((gaps >= -1e-12).all())
    assert gaps[-10:].mean() < 0.5 * gaps[:10].mean(), (gaps[:10].mean(), gaps[-10:].mean())
    with pytest.raises(ValueError, match="batch_size"):
        fit_variational(net, q, x, y, 0.5, steps=1, batch_size=65)


@pytest.mark.slow
def test_fit_variational_exact_gradient_with_cosine_schedule_and_bad_options():
    """The exact-gradient fit with a cosine-decayed rate reaches (close to) the best factorised q(a | x, y):
    its final gap is below that of q = prior, computed independently by enumeration."""
    from nbsupport.gating import GatePosterior, fit_variational
    net, x, y = _net((2, 4, 2), n=64, seed=13)
    torch.manual_seed(0)
    q = GatePosterior(2, 4, n_classes=2).double()
    history = fit_variational(net, q, x, y, 0.5, steps=200, lr=3e-2, batch_size=64, train_model=False,
                              estimator="exact", schedule="cosine", rng=0).history
    with torch.no_grad():
        exact = log_marginal_likelihood(net, x, y, 0.5)
        prior_gap = (exact - elbo(net, x, y, 0.5, soft_gates(net[0](x), 0.5))).mean()
        fitted_gap = (exact - elbo(net, x, y, 0.5, torch.sigmoid(q(x, y)))).mean()
    assert fitted_gap < prior_gap and history[-1]["elbo"] >= history[0]["elbo"]
    # with the exact gradient the loss is minus the exact ELBO recorded for the same batch
    assert all(r["loss"] == pytest.approx(-r["elbo"], abs=1e-12) for r in history)
    with pytest.raises(ValueError, match="schedule"):
        fit_variational(net, q, x, y, 0.5, steps=1, batch_size=8, schedule="linear")
    with pytest.raises(ValueError, match="estimator"):
        fit_variational(net, q, x, y, 0.5, steps=1, batch_size=8, estimator="gumbel")


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
    assert [sorted(r) for r in h.history] == [["elbo", "log_marginal", "loss", "step"]] * 3


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
                                  record=record).history
        assert [r["step"] for r in history] == [1, 2, 3, 4, 5]
        assert all(("elbo" in r and "log_marginal" in r) == record for r in history)
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

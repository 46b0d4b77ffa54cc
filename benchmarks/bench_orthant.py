"""Orthant probabilities: the analytic pattern PMF against Monte Carlo, and scipy's route against ours.

Figures (issues 6 and 17; ratios measured in one run):

* at equal wall time, the total-variation (TV) error of Monte Carlo's PMF of the moons network
  (2-8-8-1, 16 hidden units) is >= 10x the analytic PMF's, for the quadrature route and for the
  dimension-agnostic QMC route (an error estimate below 1e-15 is rounding and is floored there);
* the full first-layer PMF (m = 8 units, 2-D input, all 256 patterns) takes <= 1 s;
* orthant route timing: time and error against the dimension d for scipy's Genz QMC
  (``orthant_probability(method="scipy")``, scipy's defaults) and the polytope route
  (``method="polytope"``, 2**10 and 2**16 Sobol' points per replicate, 8 replicates), on an
  equicorrelated Gaussian (rho = 0.9) whose orthant probability is an exact 1-D integral; the
  default (``method="auto"``) is scipy below ``ORTHANT_POLYTOPE_FROM`` = 12 dimensions and the polytope
  route with ``ORTHANT_POLYTOPE_POINTS`` = 2**16 from it on. Target: the default is faster than scipy
  at d = 16, and its error x time (the cost of a given accuracy: both routes' errors fall about as
  1 / points) is no larger (the figure uses each route's reported error; the table and the error
  curve give the errors against the exact value).

Checks: the quadrature PMF against 10**7 Monte Carlo draws (every region Monte Carlo sees was found;
chi-square p-value over the regions), and every route's error within a t_7 quantile of its reported
errors (family-wise false alarm 1e-3; a standard error from 8 replicates is t_7-distributed), times
1.2 for scipy, whose bars are that much optimistic (measured, see ``orthant_probability``).
"""

import time

import numpy as np
import torch.nn.functional as F
from _timing import SMOKE, Report, best_of, setup
from scipy import stats

from nbsupport.data import make_moons
from nbsupport.models import mlp, train
from nbsupport.orthant import mc_network_pmf, mlp_layers, orthant_probability, pattern_pmf, support_search
from nbsupport.orthant.polytope import ORTHANT_POLYTOPE_FROM, ORTHANT_POLYTOPE_POINTS, equicorrelated_orthant
from nbsupport.seeding import seed_everything


def bce(out, y, reduction="mean"):  # identical to chapter 3's, so both share the cached weights
    """Binary cross-entropy on the single logit."""
    return F.binary_cross_entropy_with_logits(out[:, 0], y.to(out.dtype), reduction=reduction)


def moons_network():
    x, y = make_moons(n=1000, noise=0.1, seed=0)
    seed_everything(0)
    net = mlp([2, 8, 8, 1]).double()
    train(net, (x, y), epochs=200, lr=1e-2, batch_size=100, loss_fn=bce, progress=False)
    return mlp_layers(net)


def tv(codes_a, p_a, codes_b, p_b):
    """Total variation between two PMFs given on (possibly different) sets of codes."""
    a, b = dict(zip(codes_a, p_a)), dict(zip(codes_b, p_b))
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def mc_at_equal_time(ws, bs, mean, cov, seconds, seed):
    """Monte Carlo PMF with as many samples as fit in ``seconds`` (rate measured on 10**5 draws)."""
    start = time.perf_counter()
    mc_network_pmf(ws, bs, mean, cov, n=10**5, seed=seed + 1)
    rate = 10**5 / (time.perf_counter() - start)
    n = max(1000, int(rate * seconds))
    return n, *mc_network_pmf(ws, bs, mean, cov, n=n, seed=seed)




def moons_figures(report):
    ws, bs = moons_network()
    mean, cov = np.array([0.5, 0.25]), 0.3**2 * np.eye(2)

    t_first = best_of(lambda: pattern_pmf(ws[0], bs[0], mean, cov), repeat=3 if not SMOKE else 1)
    first = pattern_pmf(ws[0], bs[0], mean, cov)
    report.figure("first-layer PMF time", description=f"m = 8 on a 2-D input, all 256 patterns "
                  f"({np.count_nonzero(first)} possible); absolute seconds over 1 s", ours="pattern_pmf",
                  baseline="1 s", op="<=", target=1.0, ratios=t_first / 1.0, note="an absolute time in seconds")

    eps = 0.0 if not SMOKE else 1e-2
    t_quad = best_of(lambda: support_search(ws, bs, mean, cov, eps=eps), repeat=2 if not SMOKE else 1)
    exact = support_search(ws, bs, mean, cov, eps=eps)
    codes, probs = exact.codes, exact.probs
    tv_quad = max(0.5 * exact.errors.sum(), 1e-15)  # |GL20 - GL10| per region; below 1e-15 it is rounding

    n_ref = 10**7 if not SMOKE else 10**5
    ref_codes, ref_freqs = mc_network_pmf(ws, bs, mean, cov, n=n_ref, seed=123)
    lookup = dict(zip(codes, probs))
    missed = sum(f for c, f in zip(ref_codes.tolist(), ref_freqs) if c not in lookup)
    report.check(f"Monte Carlo mass ({n_ref:.0e} draws) on regions the search did not find", missed,
                 0.0 if not SMOKE else 0.02)
    expected = np.array([lookup.get(c, 0.0) for c in ref_codes.tolist()]) * n_ref
    big = expected >= 5
    chi2 = (((ref_freqs * n_ref - expected)[big]) ** 2 / expected[big]).sum()
    p_value = stats.chi2.sf(chi2, big.sum() - 1)
    if not SMOKE:
        report.check(f"-log10 chi-square p-value, quadrature PMF vs {n_ref:.0e} draws", -np.log10(p_value), 3.0)

    t_qmc = best_of(lambda: support_search(ws, bs, mean, cov, eps=eps, method="qmc", rng=0), repeat=1)
    qmc_route = support_search(ws, bs, mean, cov, eps=eps, method="qmc", rng=0)
    tv_qmc = tv(qmc_route.codes, qmc_route.probs, codes, probs)
    rows = []
    for name, seconds, err in (("quadrature", t_quad, tv_quad), ("QMC route", t_qmc, tv_qmc)):
        n_mc, mc_codes, mc_freqs = mc_at_equal_time(ws, bs, mean, cov, seconds, seed=7)
        tv_mc = tv(mc_codes, mc_freqs, codes, probs)
        report.figure(f"Monte Carlo / analytic TV at equal time, {name}",
                      description=f"moons 2-8-8-1, {len(codes)} regions, {seconds:.2f} s; Monte Carlo {n_mc:.1e} draws",
                      ours="Monte Carlo TV", baseline=f"analytic TV ({name})", op=">=", target=10.0,
                      ratios=tv_mc / err, note="an error ratio at equal wall time (larger is better for the analytic PMF)")
        rows.append({"route": name, "time (s)": seconds, "TV to exact": err, "MC draws in that time": n_mc,
                     "MC TV": tv_mc, "MC draws for the same TV": n_mc * (tv_mc / err) ** 2})
    report.table("moons PMF at equal time", description="analytic routes vs Monte Carlo given the same wall time",
                 rows=rows)


def route_timing(report, rho=0.9):
    dims = (4, 8, 12, 16) if not SMOKE else (3, 4)
    big = ORTHANT_POLYTOPE_POINTS if not SMOKE else 2**11
    labels = ("scipy (its defaults)", "polytope, 2^10 points", f"polytope, 2^{int(np.log2(big))} points")
    times = {label: [] for label in labels}
    errors = {label: [] for label in labels}
    reported = {label: [] for label in labels}
    rows = []
    for d in dims:
        cov = (1 - rho) * np.eye(d) + rho
        exact = equicorrelated_orthant(d, rho)
        calls = {labels[0]: lambda: orthant_probability(np.zeros(d), cov, method="scipy", rng=0),
                 labels[1]: lambda: orthant_probability(np.zeros(d), cov, method="polytope", n_points=2**10, rng=0),
                 labels[2]: lambda: orthant_probability(np.zeros(d), cov, method="polytope", n_points=big, rng=0)}
        for label, call in calls.items():
            start = time.perf_counter()
            p, err = call()
            seconds = time.perf_counter() - start
            times[label].append(seconds)
            errors[label].append(abs(p - exact))
            reported[label].append(err)
            rows.append({"d": d, "route": label, "time (s)": seconds, "|error|": abs(p - exact), "reported error": err})
            # a standard error from 8 replicates is t_7-distributed; scipy's bars are ~1.2x optimistic on top
            k = stats.t.ppf(1 - 1e-3 / (2 * 3 * len(dims)), df=7) * (1.2 if label == labels[0] else 1.0)
            report.check(f"{label}, d = {d}: |error| / reported error", abs(p - exact) / max(err, 1e-15),
                         round(float(k), 1))
    # the default's route at each d (the same call as the route's own: checked in tests/test_polytope.py)
    default = [labels[0] if d < ORTHANT_POLYTOPE_FROM else labels[2] for d in dims]
    times["default (auto)"] = [times[label][i] for i, label in enumerate(default)]
    errors["default (auto)"] = [errors[label][i] for i, label in enumerate(default)]
    report.curve("orthant route: time vs d", description=f"equicorrelated rho = {rho}, one call each; the default is "
                 f"scipy below d = {ORTHANT_POLYTOPE_FROM}, the polytope route with {ORTHANT_POLYTOPE_POINTS} points from it on",
                 x_label="dimension d", x=list(dims), series=times)
    report.curve("orthant route: error vs d", description="absolute error against the exact 1-D integral",
                 x_label="dimension d", y_label="|error|", x=list(dims), series=errors)
    report.table("orthant routes", description=f"equicorrelated rho = {rho}; errors against the exact value", rows=rows)
    slow, fast = times[labels[0]][-1], times["default (auto)"][-1]
    report.figure(f"scipy / default time at d = {dims[-1]}",
                  description=f"the default's route there: {default[-1]}; its error {errors['default (auto)'][-1]:.1e} "
                              f"(reported {reported[default[-1]][-1]:.1e}) vs scipy's {errors[labels[0]][-1]:.1e} "
                              f"(reported {reported[labels[0]][-1]:.1e})",
                  ours="scipy", baseline="default", op=">=", target=1.0, ratios=slow / fast,
                  note="a speed-up of the default over scipy")
    cost = {label: times[label][-1] * reported[label][-1] for label in (labels[0], default[-1])}
    report.figure(f"scipy / default error x time at d = {dims[-1]}",
                  description="reported error times seconds: the time a given accuracy costs (errors fall about "
                              "as 1 / points for both routes)", ours="scipy", baseline="default", op=">=", target=1.0,
                  ratios=cost[labels[0]] / cost[default[-1]], note="larger: the default buys accuracy more cheaply")


def main():
    setup(threads=1)  # tiny matrices: one thread is fastest, and stable on a shared machine
    report = Report(__file__, "Orthant probabilities: analytic PMF vs Monte Carlo, scipy vs the polytope route")
    moons_figures(report)
    route_timing(report)
    report.write()


if __name__ == "__main__":
    main()

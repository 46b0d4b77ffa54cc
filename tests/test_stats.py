"""nbsupport.stats against independent references: simulated coverage, the t interval, a direct
step-down loop for Holm, exact permutation enumeration, and the size of the tests it builds."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from nbsupport.stats import equivalence, hierarchical_bootstrap, holm, permutation_pvalue, verdict


def _t_interval(unit_means, level=0.95):
    """The t interval on unit means: the reference when items carry no variance of their own."""
    s, n = np.std(unit_means, ddof=1), len(unit_means)
    half = st.t.ppf(0.5 + level / 2, n - 1) * s / math.sqrt(n)
    return np.mean(unit_means) - half, np.mean(unit_means) + half


# --- the interval ----------------------------------------------------------------------------

def _coverage(simulate, reps=300, n_boot=1000, items="shared", seed=0):
    """Coverage of the true mean 0 and of the t interval on unit means, and the mean width ratio."""
    gen = np.random.default_rng(seed)
    hit = hit_t = 0
    ratio = []
    for r in range(reps):
        values = simulate(gen)
        est, low, high, _ = hierarchical_bootstrap(values, n_boot=n_boot, rng=r, items=items)
        t_low, t_high = _t_interval(values.mean(1))
        hit += low <= 0 <= high
        hit_t += t_low <= 0 <= t_high
        ratio.append((high - low) / (t_high - t_low))
    return hit / reps, hit_t / reps, float(np.mean(ratio))


def test_covers_with_eight_seeds_and_is_not_wider_than_the_t_interval():
    # The case: 8 seeds x 64 items, seed effect sd 1, item noise sd 1 (independent cells).
    cover, cover_t, ratio = _coverage(lambda g: g.normal(size=(8, 1)) + g.normal(size=(8, 64)))
    # 300 replications: binomial sd of a 0.95 coverage is 0.0126; the bar is 0.91.
    assert cover >= 0.91, cover
    assert ratio <= 1.3, ratio
    assert cover_t >= 0.91  # the reference interval itself is right here


def test_covers_a_crossed_design_where_the_t_interval_on_seed_means_does_not():
    # Every seed is measured on the same images, and images differ: item sampling is invisible in
    # the spread of seed means, so the t interval on them undercovers; the bootstrap must not.
    def simulate(g):
        return 0.1 * g.normal(size=(8, 1)) + g.normal(size=(1, 64)) + 0.5 * g.normal(size=(8, 64))
    cover, cover_t, _ = _coverage(simulate, reps=300)
    assert cover >= 0.91, cover
    assert cover_t < 0.7, cover_t  # the null construction fails here (measured about 0.4)


def test_covers_a_nested_design():
    def simulate(g):
        return g.normal(size=(6, 1)) + 2.0 * g.normal(size=(6, 16))
    cover, _, _ = _coverage(simulate, reps=200, items="nested")
    assert cover >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 200), cover


def test_agrees_with_the_t_interval_when_there_are_only_units():
    values = np.random.default_rng(3).normal(size=12)
    est, low, high, se = hierarchical_bootstrap(values, n_boot=20000, rng=1)
    t_low, t_high = _t_interval(values)
    # The bootstrap sd of a mean estimates s / sqrt(n) * sqrt((n - 1) / n), corrected back; its
    # relative Monte Carlo error with 20 000 replicates is about 1 / sqrt(2 * 20000) = 0.5 %.
    assert est == pytest.approx(values.mean())
    assert se == pytest.approx(values.std(ddof=1) / math.sqrt(12), rel=0.02)
    assert (low, high) == pytest.approx((t_low, t_high), rel=0.02, abs=0.02 * (t_high - t_low))


def test_one_unit_uses_its_items():
    values = np.random.default_rng(4).normal(size=(1, 40))
    _, low, high, se = hierarchical_bootstrap(values, n_boot=20000, rng=0)
    assert se == pytest.approx(values.std(ddof=1) / math.sqrt(40), rel=0.02)
    t_low, t_high = _t_interval(values[0])
    assert (low, high) == pytest.approx((t_low, t_high), abs=0.03 * (t_high - t_low))


def test_the_fast_mean_is_the_mean_of_each_resampled_grid():
    values = np.random.default_rng(5).normal(size=(5, 7))
    fast = hierarchical_bootstrap(values, n_boot=300, rng=2)
    slow = hierarchical_bootstrap(values, statistic=lambda t: float(t.mean()), n_boot=300, rng=2)
    assert fast == pytest.approx(slow, rel=1e-12)


def test_a_statistic_and_the_rng_convention():
    values = np.random.default_rng(6).exponential(size=(6, 30))
    a = hierarchical_bootstrap(values, statistic=np.median, n_boot=200, rng=np.random.default_rng(9))
    b = hierarchical_bootstrap(values, statistic=np.median, n_boot=200, rng=9)
    assert a == b and a.estimate == np.median(values) and a.low < a.estimate < a.high
    state = np.random.get_state()[1].copy()
    hierarchical_bootstrap(values, n_boot=200)
    assert (np.random.get_state()[1] == state).all()  # the global RNG is never touched


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=[1.0]), "values must hold at least two"),
    (dict(values=[[1.0, np.nan], [1.0, 2.0]]), "values must be finite"),
    (dict(values=np.ones((2, 2, 2))), "values must have shape"),
    (dict(values=[1.0, 2.0], n_boot=10), "n_boot must be an integer >= 100"),
    (dict(values=[1.0, 2.0], level=1.0), "level must be"),
    (dict(values=[1.0, 2.0], items="crossed"), "items must be"),
    (dict(values=[1.0, 2.0], rng=-1), "rng must be"),
    (dict(values=[1.0, 2.0], statistic="mean"), "statistic must be a callable"),
])
def test_bad_input_is_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hierarchical_bootstrap(**kwargs)


# --- permutation p-values ----------------------------------------------------------------------

def test_permutation_pvalue_is_exact_under_full_enumeration():
    # Two groups of four: the 69 relabellings other than the observed one, fed as the null, give
    # (1 + b) / 70 = the exact permutation p-value, counted here directly over all 70.
    x = np.array([3.1, 2.4, 5.0, 4.2, 1.0, 0.3, 2.9, 1.7])
    def stat(idx):
        return x[list(idx)].mean() - np.delete(x, list(idx)).mean()
    splits = list(itertools.combinations(range(8), 4))
    observed = stat((0, 1, 2, 3))
    values = np.array([stat(s) for s in splits])
    exact = np.mean(values >= observed - 1e-12)
    null = np.array([stat(s) for s in splits if s != (0, 1, 2, 3)])
    assert permutation_pvalue(observed - 1e-12, null, min_draws=1) == pytest.approx(exact)
    # ... and random relabellings converge to it (binomial tolerance at 20 000 draws).
    gen = np.random.default_rng(0)
    draws = [stat(tuple(sorted(gen.permutation(8)[:4]))) for _ in range(20000)]
    p = permutation_pvalue(observed - 1e-12, draws)
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000) + 1 / 20001


def test_permutation_pvalue_formula_and_alternatives():
    null = np.arange(1.0, 201.0)  # 1..200
    assert permutation_pvalue(150.0, null) == (1 + 51) / 201
    assert permutation_pvalue(150.0, null, "less") == (1 + 150) / 201
    assert permutation_pvalue(150.0, null, "two-sided") == 2 * 52 / 201
    assert permutation_pvalue(1e9, null) == 1 / 201
    with pytest.raises(ValueError, match="null must hold at least 200"):
        permutation_pvalue(1.0, null[:199])
    with pytest.raises(ValueError, match="alternative must be"):
        permutation_pvalue(1.0, null, "bigger")


def test_permutation_pvalue_is_valid_under_the_null():
    # Observed and null from the same law: P(p <= a) <= a for every a (checked at a = 0.05, 0.2).
    gen = np.random.default_rng(1)
    ps = np.array([permutation_pvalue(gen.normal(), gen.normal(size=200)) for _ in range(2000)])
    for a in (0.05, 0.2):
        assert np.mean(ps <= a) <= a + 3 * math.sqrt(a * (1 - a) / 2000)


# --- Holm --------------------------------------------------------------------------------------

def _holm_loop(p, alpha):
    """Holm's procedure written out: reject in sorted order while p_(i) <= alpha / (m - i)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    reject = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        reject[i] = True
    return reject


def test_holm_matches_the_step_down_loop():
    gen = np.random.default_rng(2)
    for _ in range(200):
        p = gen.uniform(0, 0.2, size=gen.integers(1, 12)) ** gen.uniform(0.5, 3)
        adjusted = holm(p)
        assert (adjusted >= p).all() and (adjusted <= 1).all()
        for alpha in (0.01, 0.05, 0.1):
            assert list(adjusted <= alpha) == _holm_loop(list(p), alpha)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == pytest.approx([0.5])
    with pytest.raises(ValueError, match="pvalues must lie in"):
        holm([0.5, 1.5])


# --- equivalence and verdicts -------------------------------------------------------------------

def test_equivalence_size_at_the_margin():
    # True mean exactly at the margin: TOST must reject (declare equivalence) in <= 5 % of samples.
    gen = np.random.default_rng(3)
    hits = [equivalence(0.1 + gen.normal(size=(8, 1)) * 0.05 + gen.normal(size=(8, 32)) * 0.1,
                        margin=0.1, rng=r, n_boot=500).equivalent for r in range(300)]
    assert np.mean(hits) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)


def test_equivalence_power_and_consistency():
    values = np.random.default_rng(4).normal(scale=0.05, size=(10, 50))
    out = equivalence(values, margin=0.1, rng=0)
    assert out.equivalent and out.p < 0.05 and -0.1 < out.low < out.high < 0.1
    narrow = equivalence(values, margin=abs(out.estimate) / 2 + 1e-9, rng=0)
    assert not narrow.equivalent and narrow.p > 0.05


def test_verdict_labels():
    gen = np.random.default_rng(5)
    noise = gen.normal(scale=0.1, size=(8, 40))
    out = verdict({"up": 0.5 + noise, "down": -0.5 + noise, "flat": noise - noise.mean(), "noisy": 10 * noise},
                  margin={"flat": 0.1})
    labels = {v.name: v.label for v in out}
    assert labels == {"up": "better", "down": "worse", "flat": "equivalent", "noisy": "not separated"}
    assert [v.name for v in out] == ["up", "down", "flat", "noisy"]
    assert np.isnan(out[0].p_equivalence) and out[2].p_equivalence < 0.05
    lower = verdict({"up": 0.5 + noise}, higher_is_better=False)
    assert lower[0].label == "worse"


def test_verdict_applies_holm_within_primaries_and_within_the_rest():
    # Every comparison has the same p-value, about 0.02: alone it is separated, among five it is not.
    base = np.random.default_rng(6).normal(size=(8, 1))
    base = (base - base.mean()) / base.std(ddof=1)
    shift = st.t.ppf(0.99, 7) / math.sqrt(8)  # two-sided p = 0.02 for the t on unit means
    family = {f"c{i}": base + shift for i in range(5)}
    alone = verdict({"c0": family["c0"]}, n_boot=20000)
    assert alone[0].label == "better" and alone[0].p == pytest.approx(0.02, abs=0.005)
    many = verdict(family, n_boot=20000)
    assert all(v.label == "not separated" for v in many)
    assert [v.p_adjusted for v in many] == pytest.approx([5 * v.p for v in many])
    declared = verdict(family, primary=["c0"], n_boot=20000)
    assert declared[0].label == "better" and declared[0].p_adjusted == declared[0].p
    assert all(v.label == "not separated" for v in declared[1:])


def test_verdict_family_wise_error_under_the_null():
    # Five null comparisons per family: Holm keeps P(any separated) <= 0.05 (binomial tolerance).
    gen = np.random.default_rng(7)
    wrong = [any(v.label != "not separated" for v in verdict(
        {f"c{i}": gen.normal(size=(8, 1)) + gen.normal(size=(8, 16)) for i in range(5)}, rng=r, n_boot=300))
        for r in range(200)]
    assert np.mean(wrong) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)


@pytest.mark.parametrize("args, kwargs, match", [
    (({},), {}, "comparisons must be a non-empty dict"),
    (({"a": [1.0, 2.0]},), dict(primary=["b"]), "primary must name"),
    (({"a": [1.0, 2.0]},), dict(primary="a"), "primary must name"),
    (({"a": [1.0, 2.0]},), dict(margin=-1), "margin must be"),
    (({"a": [1.0, 2.0]},), dict(margin={"b": 0.1}), "margin names unknown"),
])
def test_verdict_refuses_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        verdict(*args, **kwargs)

"""nbsupport.gating.information: gate entropies and mutual information against
brute-force tables, their sampled estimates, per-pattern moments against a loop, eigenvector angles."""

import itertools
import math

import numpy as np
import pytest
import torch


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

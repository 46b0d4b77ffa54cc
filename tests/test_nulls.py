"""nbsupport.nulls against plain loops, exact enumeration, scipy/scikit-learn and closed forms."""

import itertools

import numpy as np
import pytest
import torch

from nbsupport.nulls import (between_share, between_share_gram, cosine_gram, hyperplane_partition, kmeans_partition,
                             large_groups, random_grouping_null, random_grouping_null_gram, random_grouping_share,
                             random_subset_top_fraction, top_fraction_gram)
from test_covariance import _data  # grouped rows with group shifts, shared with the covariance tests


def _share(values, labels):
    """Between share of the trace, by a plain numpy loop over groups."""
    v = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    mu = v.mean(0)
    between = sum((labels == k).sum() * np.sum((v[labels == k].mean(0) - mu) ** 2) for k in np.unique(labels))
    return between / np.sum((v - mu) ** 2)


# ---------------------------------------------------------------- shares and the closed-form chance level


def test_between_share_matches_the_loop_for_rows_and_gram():
    values, inverse = _data(n=300, d=5, groups=9, seed=1)
    expected = _share(values.numpy(), inverse.numpy())
    assert between_share(values, inverse) == pytest.approx(expected, rel=1e-12)
    assert between_share_gram(values @ values.T, inverse) == pytest.approx(expected, rel=1e-10)
    assert between_share(values, inverse * 7 + 3) == pytest.approx(expected, rel=1e-12)   # labels need not be dense


def test_random_grouping_share_is_the_exact_mean_over_all_groupings():
    g = np.random.default_rng(0)
    values = g.standard_normal((7, 3)) * [1.0, 5.0, 0.1] + g.standard_normal(3)
    counts = [3, 2, 1, 1]
    base = np.repeat(np.arange(len(counts)), counts)
    shares = [_share(values, base[list(p)]) for p in itertools.permutations(range(7))]  # all 5040 orderings
    assert np.mean(shares) == pytest.approx(random_grouping_share(counts), rel=1e-12)
    assert random_grouping_share(counts) == pytest.approx(3 / 6)
    assert abs(np.mean(shares) - len(counts) / len(values)) > 0.05   # not G / N
    assert random_grouping_share([0, 7, 0]) == 0.0 and random_grouping_share([1] * 7) == 1.0


# ---------------------------------------------------------------- permutation nulls


def test_plain_null_matches_the_closed_form_within_monte_carlo_error():
    values, _ = _data(n=400, d=5, groups=3, seed=7)
    inverse = torch.repeat_interleave(torch.arange(10), torch.tensor([200, 100, 50, 20, 10, 10, 5, 3, 1, 1]))
    shares = random_grouping_null(values, inverse, n_perm=400, rng=1)
    assert shares.shape == (400,) and bool(((shares >= 0) & (shares <= 1)).all())
    expected = random_grouping_share(torch.bincount(inverse))
    assert abs(shares.mean().item() - expected) < 4 * shares.std().item() / 400 ** 0.5
    assert shares.std().item() > 0
    _, observed_inverse = _data(n=400, d=5, groups=3, seed=7)          # shifted group means: far above
    null = random_grouping_null(values, observed_inverse, n_perm=50)
    assert between_share(values, observed_inverse) > null.mean().item() + 10 * null.std().item()


def test_rows_and_gram_nulls_draw_the_same_groupings():
    values, inverse = _data(n=120, d=8, groups=6, seed=8)
    strata = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(2))
    for s in (None, strata):
        a = random_grouping_null(values, inverse, n_perm=10, strata=s, rng=3)
        b = random_grouping_null_gram(values @ values.T, inverse, n_perm=10, strata=s, rng=3)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        shifted = values + 100.0                                        # centring happens inside
        torch.testing.assert_close(random_grouping_null_gram(shifted @ shifted.T, inverse, 10, strata=s, rng=3), b,
                                   rtol=1e-7, atol=1e-9)
    assert random_grouping_null(values, torch.zeros(120, dtype=torch.long), 3).abs().max() < 1e-12
    torch.testing.assert_close(random_grouping_null_gram(values @ values.T, torch.arange(120), 3),
                               torch.ones(3, dtype=torch.float64))          # singletons: all between


def test_stratified_null_is_the_exact_within_stratum_permutation_law():
    """8 rows, two strata: every draw is a share reachable by a within-stratum permutation, and the
    mean of the draws matches the mean over all 4! * 4! such permutations (enumerated)."""
    g = np.random.default_rng(3)
    values = torch.from_numpy(g.standard_normal((8, 2)) * [3.0, 1.0])
    strata = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    inverse = torch.tensor([0, 0, 1, 2, 0, 1, 1, 2])
    exact = []
    for p0 in itertools.permutations(range(4)):
        for p1 in itertools.permutations(range(4, 8)):
            sigma = np.array(list(p0) + list(p1))
            exact.append(_share(values.numpy(), inverse.numpy()[sigma]))
    exact = np.array(exact)
    draws = random_grouping_null(values, inverse, n_perm=3000, strata=strata, rng=5).numpy()
    assert np.abs(draws[:, None] - np.unique(exact)[None, :]).min(1).max() < 1e-12   # reachable values only
    assert abs(draws.mean() - exact.mean()) < 4 * exact.std() / 3000 ** 0.5
    plain = random_grouping_null(values, inverse, n_perm=3000, rng=5).numpy()
    all_perms = np.array([_share(values.numpy(), inverse.numpy()[list(p)]) for p in itertools.permutations(range(8))])
    assert abs(plain.mean() - all_perms.mean()) < 4 * all_perms.std() / 3000 ** 0.5


def test_stratified_null_of_a_grouping_by_the_strata_is_the_observed_share():
    """Groups that are unions of strata do not change under within-stratum shuffles; a plain null does."""
    values, classes = _data(n=300, d=4, groups=5, seed=4)
    inverse = classes // 2                                                # each group a union of classes
    observed = between_share(values, inverse)
    stratified = random_grouping_null(values, inverse, n_perm=20, strata=classes, rng=0)
    torch.testing.assert_close(stratified, torch.full((20,), observed, dtype=torch.float64), rtol=1e-12, atol=0)
    assert random_grouping_null(values, inverse, n_perm=20, rng=0).max() < observed / 5
    gram = random_grouping_null_gram(values @ values.T, inverse, n_perm=20, strata=classes, rng=0)
    torch.testing.assert_close(gram, stratified, rtol=1e-10, atol=1e-12)


def test_same_rng_same_draws_and_bad_input():
    values, inverse = _data(n=50, d=3, groups=4)
    torch.testing.assert_close(random_grouping_null(values, inverse, 5, rng=np.int64(4)),
                               random_grouping_null(values, inverse, 5, rng=torch.Generator().manual_seed(4)))
    cases = [(lambda: random_grouping_null(values, inverse[:-1], 3), "inverse has"),
             (lambda: random_grouping_null(values, inverse, 0), "n_perm"),
             (lambda: random_grouping_null(values, inverse.double(), 3), "inverse must"),
             (lambda: random_grouping_null(values, inverse, 3, strata=inverse[:10]), "strata has"),
             (lambda: random_grouping_null(values, inverse, 3, rng=None), "rng must"),
             (lambda: random_grouping_null(values, inverse, 3, rng=-1), "rng must"),
             (lambda: random_grouping_null_gram(values, inverse, 3), "gram must"),
             (lambda: random_grouping_null_gram(values @ values.T + torch.triu(torch.ones(50, 50), 1) * 1e-6,
                                                inverse, 3), "symmetric"),
             (lambda: between_share_gram(torch.tensor([[1.0, 2.0], [2.0 + 1e-6, 1.0]], dtype=torch.float64),
                                         inverse[:2]), "symmetric"),
             (lambda: random_grouping_share([1]), "at least 2"),
             (lambda: random_grouping_null(values, inverse, 3, rng=True), "rng must")]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# ---------------------------------------------------------------- size strata and unit norms


def test_large_groups_matches_a_loop():
    inverse = torch.tensor([3, 3, 0, 5, 3, 5, 0, 0, 7, 5, 5])
    res = large_groups(inverse, 3)
    expected_rows = [i for i, g in enumerate(inverse.tolist()) if inverse.tolist().count(g) >= 3]
    assert res.rows.tolist() == expected_rows
    assert torch.equal(res.counts[res.inverse], torch.bincount(inverse)[inverse[res.rows]])
    assert len(res.counts) == 3 and res.counts.sum() == len(expected_rows)
    # the same grouping of the kept rows: same label <=> same group
    a, b = res.inverse, inverse[res.rows]
    assert torch.equal(a[:, None] == a[None, :], b[:, None] == b[None, :])
    with pytest.raises(ValueError, match="min_count"):
        large_groups(inverse, 0)


def test_cosine_gram_is_the_gram_of_unit_rows():
    values, _ = _data(n=40, d=6)
    unit = values / values.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cosine_gram(values @ values.T), unit @ unit.T, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="positive diagonal"):
        cosine_gram(torch.zeros(3, 3, dtype=torch.float64))


# ---------------------------------------------------------------- reference partitions


def test_hyperplane_partition_has_exactly_the_groups_asked_for():
    values, _ = _data(n=400, d=5, seed=2)
    for n_groups in (1, 2, 7, 50, 199):
        labels = hyperplane_partition(values, n_groups, rng=n_groups)
        assert len(torch.unique(labels)) == n_groups and int(labels.max()) == n_groups - 1
    assert torch.equal(hyperplane_partition(values, 30, rng=1), hyperplane_partition(values, 30, rng=1))
    assert not torch.equal(hyperplane_partition(values, 30, rng=1), hyperplane_partition(values, 30, rng=2))
    with pytest.raises(ValueError, match="n_groups"):
        hyperplane_partition(values, 401)


def test_hyperplane_cells_in_one_dimension_are_intervals():
    """On a line every hyperplane is a threshold, so every cell is a run of consecutive sorted rows."""
    x = torch.randn(300, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = hyperplane_partition(x, 12, rng=3)[torch.argsort(x[:, 0])]
    runs = 1 + int((labels[1:] != labels[:-1]).sum())
    assert runs == 12


def test_hyperplane_partition_of_two_points_per_plane_is_linearly_separable():
    """Two groups: one plane, so the groups are separated by a hyperplane (checked by least squares)."""
    values, _ = _data(n=200, d=3, seed=5)
    labels = hyperplane_partition(values, 2, rng=4)
    design = torch.cat([values, torch.ones(200, 1, dtype=torch.float64)], 1)
    target = labels.double() * 2 - 1
    # a separating plane exists iff the LP is feasible; a perceptron on separable data converges
    w = torch.zeros(4, dtype=torch.float64)
    for _ in range(20000):
        wrong = torch.nonzero(torch.sign(design @ w) != target).squeeze(1)
        if len(wrong) == 0:
            break
        w += target[wrong[0]] * design[wrong[0]]
    assert len(wrong) == 0


def test_kmeans_is_a_lloyd_fixed_point_and_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.cluster")
    values, _ = _data(n=600, d=4, groups=6, seed=6)
    labels = kmeans_partition(values, 6, rng=0)
    assert len(torch.unique(labels)) == 6
    centres = torch.stack([values[labels == k].mean(0) for k in range(6)])
    nearest = torch.cdist(values, centres).argmin(1)
    assert torch.equal(nearest, labels)                                   # assignments and means agree
    inertia = float(((values - centres[labels]) ** 2).sum())
    reference = sklearn.KMeans(6, n_init=10, random_state=0).fit(values.numpy()).inertia_
    assert inertia < 1.05 * reference
    # well-separated blobs are recovered exactly (up to the numbering)
    blobs = torch.repeat_interleave(torch.arange(4), 50)
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
    x += torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)[blobs]
    found = kmeans_partition(x, 4, rng=2)
    assert torch.equal(found[:, None] == found[None, :], blobs[:, None] == blobs[None, :])


# ---------------------------------------------------------------- top-k fraction of a group's trace


def test_top_fraction_matches_numpy_and_its_null_is_a_random_subset():
    values, _ = _data(n=200, d=6, seed=9)
    gram = values @ values.T
    eig = np.linalg.eigvalsh(np.cov(values.numpy(), rowvar=False))[::-1]
    assert top_fraction_gram(gram, 2) == pytest.approx(eig[:2].sum() / eig.sum(), rel=1e-10)
    full = random_subset_top_fraction(gram, 200, 2, n_draws=3)
    torch.testing.assert_close(full, torch.full((3,), eig[:2].sum() / eig.sum(), dtype=torch.float64))
    draws = random_subset_top_fraction(gram, 30, 2, n_draws=400, rng=1)
    g = np.random.default_rng(2)
    loop = []
    for _ in range(400):
        rows = g.choice(200, 30, replace=False)
        e = np.linalg.eigvalsh(np.cov(values.numpy()[rows], rowvar=False))[::-1]
        loop.append(e[:2].sum() / e.sum())
    se = np.hypot(draws.std().item(), np.std(loop)) / 400 ** 0.5
    assert abs(draws.mean().item() - np.mean(loop)) < 4 * se
    with pytest.raises(ValueError, match="size"):
        random_subset_top_fraction(gram, 2, 2)


def test_top_fraction_null_in_chunks_is_the_same(monkeypatch):
    import nbsupport.nulls as nl
    values, _ = _data(n=80, d=6, seed=10)
    gram = values @ values.T
    whole = nl.random_subset_top_fraction(gram, 20, 2, n_draws=7, rng=4)
    monkeypatch.setattr(nl, "_SUBSET_ELEMENTS", 2 * 20 * 20)     # two draws per batch
    torch.testing.assert_close(nl.random_subset_top_fraction(gram, 20, 2, n_draws=7, rng=4), whole,
                               rtol=1e-12, atol=0)


def test_gram_null_in_batches_is_the_same(monkeypatch):
    """Draws gathered several at a time give exactly the draws gathered one at a time."""
    import nbsupport.nulls as nl
    values, inverse = _data(n=90, d=5, groups=6, seed=11)
    strata = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(1))
    gram = values @ values.T
    batched = nl.random_grouping_null_gram(gram, inverse, 9, strata=strata, rng=2)
    monkeypatch.setattr(nl, "_PAIR_ELEMENTS", 1)                     # one draw per batch
    torch.testing.assert_close(nl.random_grouping_null_gram(gram, inverse, 9, strata=strata, rng=2),
                               batched, rtol=1e-12, atol=0)

"""nbsupport.covariance against per-group numpy loops and the exact total-covariance identity."""

import numpy as np
import pytest
import torch

from nbsupport.covariance import decompose_covariance, decompose_variance, group_moments


def _data(n=500, d=4, groups=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    inverse = torch.randint(0, groups, (n,), generator=g)
    shift = torch.randn(groups, d, generator=g, dtype=torch.float64) * 3
    values = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    return values + shift[inverse], inverse


@pytest.mark.parametrize("ddof", [0, 1])
def test_group_moments_match_numpy_loop(ddof):
    values, inverse = _data()
    res = group_moments(values, inverse, ddof=ddof)
    x, inv = values.numpy(), inverse.numpy()
    for slot, k in enumerate(res.groups.tolist()):
        rows = x[inv == k]
        assert res.counts[slot] == len(rows)
        assert res.weights[slot].item() == pytest.approx(len(rows) / len(x))
        np.testing.assert_allclose(res.means[slot].numpy(), rows.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(res.covariances[slot].numpy(), np.cov(rows, rowvar=False, ddof=ddof),
                                   rtol=1e-10, atol=1e-12)
    assert res.n_small == 0 and res.small_mass == 0.0


def test_small_groups_are_reported_not_hidden():
    values, _ = _data(n=100)
    inverse = torch.cat([torch.zeros(90, dtype=torch.long), torch.arange(1, 11)])  # one big group, 10 singletons
    res = group_moments(values, inverse, min_count=5)
    assert res.groups.tolist() == [0] and res.counts.tolist() == [90]
    assert res.n_small == 10 and res.small_mass == pytest.approx(0.10)
    assert res.weights.sum().item() + res.small_mass == pytest.approx(1.0)
    with pytest.raises(ValueError, match="min_count"):
        group_moments(values, inverse)  # singletons and ddof=1: each needs 2 rows
    assert group_moments(values, inverse, ddof=0).covariances[1:].abs().max() == 0  # a single row has no spread


def test_group_moments_chunking(monkeypatch):
    import nbsupport.covariance as cov
    values, inverse = _data(n=300, d=3)
    full = group_moments(values, inverse)
    monkeypatch.setattr(cov, "_CHUNK_ELEMENTS", 20)  # two rows per chunk
    torch.testing.assert_close(group_moments(values, inverse).covariances, full.covariances, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1])
def test_identity_is_exact(ddof):
    values, inverse = _data(n=2000, d=6, groups=40, seed=3)
    total, within, between = decompose_covariance(values, inverse, ddof=ddof)
    np.testing.assert_allclose(total.numpy(), np.cov(values.numpy(), rowvar=False, ddof=ddof), rtol=1e-12, atol=1e-12)
    assert (total - within - between).abs().max().item() < 1e-10
    # against the per-group formula with every group included
    res = group_moments(values, inverse, ddof=0)
    n, mu = len(values), values.mean(0)
    ref_within = (res.counts.double().view(-1, 1, 1) * res.covariances).sum(0) / (n - ddof)
    dev = res.means - mu
    ref_between = (res.counts.double().view(-1, 1, 1) * dev[:, :, None] * dev[:, None, :]).sum(0) / (n - ddof)
    torch.testing.assert_close(within, ref_within, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(between, ref_between, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1])
def test_variance_split_is_the_trace_of_the_covariance_split(ddof):
    values, inverse = _data(n=800, d=5, groups=30, seed=4)
    matrices = decompose_covariance(values, inverse, ddof=ddof)
    traces = decompose_variance(values, inverse, ddof=ddof)
    for matrix, trace in zip(matrices, traces):
        assert trace.ndim == 0
        torch.testing.assert_close(trace, torch.trace(matrix), rtol=1e-12, atol=1e-12)
    assert abs(traces.total - np.var(values.numpy(), axis=0, ddof=ddof).sum()) < 1e-10
    with pytest.raises(ValueError, match="inverse"):
        decompose_variance(values, inverse[:-1])


@pytest.mark.parametrize("ddof", [0, 1])
def test_gram_variance_split_equals_the_split_of_the_rows(ddof):
    from nbsupport.covariance import decompose_gram_variance
    values, inverse = _data(n=300, d=7, groups=9, seed=13)
    rows = decompose_variance(values, inverse, ddof=ddof)
    for shift in (0.0, 50.0):                          # centring happens inside
        gram = (values + shift) @ (values + shift).T
        for a, b in zip(decompose_gram_variance(gram, inverse, ddof=ddof), rows):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="gram"):
        decompose_gram_variance(values, inverse)


def test_limits():
    values, _ = _data(n=50)
    one = torch.zeros(50, dtype=torch.long)
    split = decompose_covariance(values, one)
    assert split.between.abs().max().item() < 1e-12   # one group: nothing between
    own = torch.arange(50)
    split = decompose_covariance(values, own)
    assert split.within.abs().max().item() < 1e-12    # every row its own group: nothing within
    assert decompose_covariance(values.float(), one).total.dtype == torch.float32  # computed in float64, returned as given


@pytest.mark.parametrize("call", [
    lambda v, i: decompose_covariance(v, i[:-1]),
    lambda v, i: decompose_covariance(v, i.int()),
    lambda v, i: decompose_covariance(v.long(), i),
    lambda v, i: decompose_covariance(v, i, ddof=2),
    lambda v, i: decompose_covariance(v, i, ddof=True),
    lambda v, i: group_moments(v, i, min_count=0),
    lambda v, i: decompose_covariance(v[:1], i[:1], ddof=1),
    lambda v, i: decompose_covariance(v, -i - 1),
    lambda v, i: decompose_covariance(v.index_fill(0, torch.tensor([3]), float("nan")), i),
])
def test_bad_input(call):
    values, inverse = _data(n=20)
    with pytest.raises(ValueError, match="values|inverse|ddof|min_count"):
        call(values, inverse)


def test_principal_angles_against_scipy():
    from scipy.linalg import subspace_angles
    from nbsupport.covariance import principal_angles
    g = torch.Generator().manual_seed(11)
    for d, k in [(6, 3), (10, 1), (10, 4), (20, 7)]:
        a, b = (torch.randn(3 * d, d, generator=g, dtype=torch.float64) for _ in range(2))
        cov_a, cov_b = a.T @ a, b.T @ b
        tops = [np.linalg.eigh(c.numpy())[1][:, -k:] for c in (cov_a, cov_b)]
        np.testing.assert_allclose(principal_angles(cov_a, cov_b, k).numpy(), np.sort(subspace_angles(*tops)),
                                   rtol=0, atol=1e-10)


def test_principal_angles_against_a_rotation():
    from nbsupport.covariance import principal_angles
    d = 5
    base = torch.diag(torch.tensor([5.0, 4.0, 1.0, 0.5, 0.1], dtype=torch.float64))
    theta = 0.3  # rotate the top direction e0 towards e3 by theta
    rot = torch.eye(d, dtype=torch.float64)
    rot[0, 0] = rot[3, 3] = torch.cos(torch.tensor(theta))
    rot[0, 3], rot[3, 0] = -torch.sin(torch.tensor(theta)), torch.sin(torch.tensor(theta))
    rotated = rot @ base @ rot.T
    angles = principal_angles(base, rotated, k=2)  # span(e0, e1) vs span(R e0, e1)
    torch.testing.assert_close(angles, torch.tensor([0.0, theta], dtype=torch.float64), atol=1e-8, rtol=0)
    assert principal_angles(base, base, k=3).abs().max() < 1e-7
    swapped = torch.diag(torch.tensor([0.1, 0.5, 1.0, 4.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(principal_angles(base, swapped, k=2), torch.full((2,), torch.pi / 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="k must"):
        principal_angles(base, base, k=6)
    with pytest.raises(ValueError, match="cov_a"):
        principal_angles(base, base[:4, :4], k=1)


# ---------------------------------------------------------------- sampling-noise floor of principal angles


@pytest.mark.slow
def test_random_subset_angles_isotropic_law():
    """Isotropic Gaussian rows in the plane: the top eigenvector of a subset is uniform in angle, so
    its angle to a fixed axis is uniform on [0, pi/2] (mean pi/4, sd pi/(4 sqrt 3))."""
    from nbsupport.covariance import random_subset_angles
    g = torch.Generator().manual_seed(4)
    values = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    reference = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    angles = random_subset_angles(values, 30, k=1, n_draws=600, rng=g, reference=reference)[:, 0]
    sd = np.pi / (4 * 3 ** 0.5)
    assert abs(angles.mean().item() - np.pi / 4) < 4 * sd / 600 ** 0.5
    assert abs(angles.std().item() - sd) < 0.1 * sd


def test_random_subset_angles_shrink_with_the_subset_and_match_a_loop():
    from nbsupport.covariance import principal_angles, random_subset_angles
    g = torch.Generator().manual_seed(5)
    scales = torch.tensor([6.0, 5.0, 4.0, 1.0, 0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    values = torch.randn(4000, 8, generator=g, dtype=torch.float64) * scales
    small = random_subset_angles(values, 20, k=3, n_draws=30).max(1).values.median()
    large = random_subset_angles(values, 2000, k=3, n_draws=30).max(1).values.median()
    assert large < small / 3
    assert random_subset_angles(values, 4000, k=3, n_draws=2).abs().max() < 1e-7   # the whole sample
    # one draw against the explicit covariances and principal_angles
    rows = torch.randperm(4000, generator=torch.Generator().manual_seed(6))[:100]
    draw = random_subset_angles(values, 100, k=3, n_draws=1, rng=6)[0]
    torch.testing.assert_close(draw, principal_angles(torch.cov(values[rows].T), torch.cov(values.T), 3),
                               rtol=0, atol=1e-8)


@pytest.mark.parametrize("n, d", [(300, 40), (30, 40)])
def test_subspace_iteration_matches_dense(monkeypatch, n, d):
    """Above DENSE_SUBSPACE_MAX the top eigenspace comes from subspace iteration; both routes agree."""
    import nbsupport.covariance as cov
    g = torch.Generator().manual_seed(9)
    values = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(3, 0.5, d, dtype=torch.float64)
    inverse = torch.randint(0, 2, (n,), generator=g)
    dense = cov.group_angles(values, inverse, torch.tensor([0, 1]), k=4)
    monkeypatch.setattr(cov, "DENSE_SUBSPACE_MAX", 8)
    torch.testing.assert_close(cov.group_angles(values, inverse, torch.tensor([0, 1]), k=4), dense, rtol=0, atol=1e-8)


def test_group_angles_against_principal_angles():
    from nbsupport.covariance import group_angles, principal_angles
    values, inverse = _data(n=600, d=6, groups=4, seed=10)
    angles = group_angles(values, inverse, torch.tensor([2, 0]), k=2)
    for row, g in zip(angles, [2, 0]):
        torch.testing.assert_close(row, principal_angles(torch.cov(values[inverse == g].T), torch.cov(values.T), 2),
                                   rtol=0, atol=1e-8)
    tiny = torch.cat([torch.zeros(3, dtype=torch.long), torch.ones(597, dtype=torch.long)])
    with pytest.raises(ValueError, match="more than k"):
        group_angles(values, tiny, torch.tensor([0]), k=3)


# ---------------------------------------------------------------- device and dtype


def _forbid_host_round_trips(monkeypatch):
    """A stand-in for a second device: fail on any copy to the host or to numpy."""
    def refuse(*args, **kwargs):
        raise AssertionError("result went through the host (cpu()/numpy())")
    monkeypatch.setattr(torch.Tensor, "cpu", refuse)
    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    monkeypatch.setattr(torch, "from_numpy", refuse)


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_keep_device_and_dtype(monkeypatch, device, dtype):
    import nbsupport.covariance as cov
    values, inverse = _data(n=200, d=4, groups=3, seed=12)
    values, inverse = values.to(device=device, dtype=dtype), inverse.to(device)
    _forbid_host_round_trips(monkeypatch)
    outputs = [*cov.decompose_covariance(values, inverse), *cov.decompose_variance(values, inverse),
               *cov.group_moments(values, inverse)[2:5],
               cov.principal_angles(torch.cov(values.T), torch.cov(values[:100].T), 2),
               cov.random_subset_angles(values, 50, 2, 3, 0),
               cov.group_angles(values, inverse, torch.tensor([0, 1], device=device), 2),
               *cov.decompose_gram_variance(values @ values.T, inverse)]
    for out in outputs:
        assert out.device.type == device and out.dtype == dtype


def test_numpy_and_tensor_scalars_accepted_bools_refused():
    from nbsupport.covariance import principal_angles, random_subset_angles
    values, inverse = _data()
    ref = group_moments(values, inverse, min_count=3, ddof=1)
    for ddof, min_count in ((np.int64(1), np.int32(3)), (torch.tensor(1), torch.tensor(3))):
        other = group_moments(values, inverse, min_count=min_count, ddof=ddof)
        assert all(torch.equal(a, b) for a, b in zip(ref[:4], other[:4]))
    assert torch.equal(decompose_covariance(values, inverse, ddof=np.int64(1)).total,
                       decompose_covariance(values, inverse, ddof=1).total)
    cov = torch.cov(values.T)
    assert torch.equal(principal_angles(cov, cov.T.clone(), np.int64(2)), principal_angles(cov, cov.T.clone(), 2))
    draws = random_subset_angles(values, np.int64(50), torch.tensor(2), n_draws=np.int64(3))
    assert torch.equal(draws, random_subset_angles(values, 50, 2, n_draws=3))
    for call, word in ((lambda: group_moments(values, inverse, ddof=True), "ddof"),
                       (lambda: group_moments(values, inverse, min_count=True), "min_count"),
                       (lambda: decompose_variance(values, inverse, ddof=np.bool_(False)), "ddof"),
                       (lambda: principal_angles(cov, cov, True), "k"),
                       (lambda: random_subset_angles(values, 50.0, 2), "size"),
                       (lambda: random_subset_angles(values, 50, 2, n_draws=True), "n_draws"),
                       (lambda: random_subset_angles(values, 50, 2, rng=None), "rng")):
        with pytest.raises(ValueError, match=rf"\b{word} must"):  # the argument named, not any letter
            call()


# ---------------------------------------------------------------- spectral gaps and trace carriers


def test_spectral_gaps_match_numpy_and_find_the_planted_gap():
    from nbsupport.covariance import spectral_gaps
    g = torch.Generator().manual_seed(13)
    scales = torch.tensor([5.0, 4.5, 1.0, 0.9, 0.8, 0.7], dtype=torch.float64)
    values = torch.randn(3000, 6, generator=g, dtype=torch.float64) * scales
    eig = np.linalg.eigvalsh(np.cov(values.numpy(), rowvar=False))[::-1]
    np.testing.assert_allclose(spectral_gaps(values, 5).numpy(), eig[1:] / eig[:-1], rtol=1e-10)
    assert int(spectral_gaps(values, 5).argmin()) + 1 == 2                # the planted gap after 2
    wide = values[:4]                                                     # n < d: the Gram route
    small = np.linalg.eigvalsh(np.cov(wide.numpy(), rowvar=False))[::-1][:3]
    np.testing.assert_allclose(spectral_gaps(wide, 2).numpy(), small[1:] / small[:-1], rtol=1e-8)
    with pytest.raises(ValueError, match="k_max"):
        spectral_gaps(values, 6)


def test_trace_carriers_are_each_rows_squared_distance_to_the_mean():
    from nbsupport.covariance import trace_carriers
    values, _ = _data(n=50, d=3)
    v = values.numpy()
    d2 = ((v - v.mean(0)) ** 2).sum(1)
    np.testing.assert_allclose(trace_carriers(values @ values.T).numpy(), d2 / d2.sum(), rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="gram"):
        trace_carriers(torch.ones(3, 3, dtype=torch.float64))


def test_largest_angles_at_several_k_equal_separate_calls():
    from nbsupport.covariance import random_subset_angles, random_subset_largest_angles
    g = torch.Generator().manual_seed(14)
    scales = torch.tensor([6.0, 5.0, 2.0, 1.9, 1.0, 0.9, 0.8, 0.7], dtype=torch.float64)
    values = torch.randn(600, 8, generator=g, dtype=torch.float64) * scales
    both = random_subset_largest_angles(values, 40, [2, 4], n_draws=5, rng=3)
    for j, k in enumerate([2, 4]):
        single = random_subset_angles(values, 40, k, n_draws=5, rng=3).amax(1)
        torch.testing.assert_close(both[:, j], single, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="size"):
        random_subset_largest_angles(values, 4, [2, 4])
    with pytest.raises(ValueError, match="ks"):
        random_subset_largest_angles(values, 40, 2)


@pytest.mark.parametrize("size", [30, 70])
def test_largest_angles_through_the_gram_matrix_of_all_rows(monkeypatch, size):
    """Subsets narrower than d go through a block of the Gram matrix of all rows; the angles are
    those of the explicit subset covariances (principal_angles of torch.cov), draw by draw, on the
    dense and on the subspace-iteration route."""
    import nbsupport.covariance as cov
    g = torch.Generator().manual_seed(21)
    values = torch.randn(300, 90, generator=g, dtype=torch.float64) * torch.linspace(4, 0.2, 90, dtype=torch.float64)
    values += 5.0                                                           # centring happens inside
    monkeypatch.setattr(cov, "DENSE_SUBSPACE_MAX", 40)                      # size 70: subspace iteration
    draws = cov.random_subset_largest_angles(values, size, [1, 3], n_draws=4, rng=7)
    generator = torch.Generator().manual_seed(7)
    for t in range(4):
        rows = torch.randperm(300, generator=generator)[:size]
        for j, k in enumerate([1, 3]):
            expected = cov.principal_angles(torch.cov(values[rows].T), torch.cov(values.T), k).max()
            assert abs(draws[t, j].item() - expected.item()) < 1e-8
    monkeypatch.setattr(cov, "_GRAM_ROWS_MAX", 10)                          # the per-subset route
    torch.testing.assert_close(cov.random_subset_largest_angles(values, size, [1, 3], n_draws=4, rng=7), draws,
                               rtol=0, atol=1e-8)

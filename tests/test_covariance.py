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


def test_limits():
    values, _ = _data(n=50)
    one = torch.zeros(50, dtype=torch.long)
    split = decompose_covariance(values, one)
    assert split.between.abs().max().item() < 1e-12   # one group: nothing between
    own = torch.arange(50)
    split = decompose_covariance(values, own)
    assert split.within.abs().max().item() < 1e-12    # every row its own group: nothing within
    assert decompose_covariance(values.float(), one).total.dtype == torch.float64


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

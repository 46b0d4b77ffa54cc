"""nbsupport.covariance against per-group numpy loops and the exact total-covariance identity."""

import numpy as np
import pytest
import torch

from nbsupport.covariance import centred_gram, decompose_covariance, decompose_variance, group_moments


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
    import nbsupport.subspaces as sub
    values, inverse = _data(n=200, d=4, groups=3, seed=12)
    values, inverse = values.to(device=device, dtype=dtype), inverse.to(device)
    _forbid_host_round_trips(monkeypatch)
    outputs = [*cov.decompose_covariance(values, inverse), *cov.decompose_variance(values, inverse),
               *cov.group_moments(values, inverse)[2:5],
               sub.principal_angles(torch.cov(values.T), torch.cov(values[:100].T), 2),
               sub.random_subset_angles(values, 50, 2, 3, 0),
               sub.group_angles(values, inverse, torch.tensor([0, 1], device=device), 2),
               *cov.decompose_gram_variance(values @ values.T, inverse)]
    for out in outputs:
        assert out.device.type == device and out.dtype == dtype


def test_numpy_and_tensor_scalars_accepted_bools_refused():
    from nbsupport.subspaces import principal_angles, random_subset_angles
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


def test_centred_gram_is_h_k_h_and_the_gram_of_centred_rows():
    """Against two independent references: the explicit product H K H with H = I - 11^T/N, and
    the Gram matrix of the column-centred rows; batched leading axes give each matrix's own."""
    g = torch.Generator().manual_seed(3)
    v = torch.randn(4, 9, 5, generator=g, dtype=torch.float64) + 2.0   # 4 batches of N=9 rows
    k = v @ v.transpose(1, 2)
    h = torch.eye(9, dtype=torch.float64) - torch.full((9, 9), 1 / 9, dtype=torch.float64)
    got = centred_gram(k)
    torch.testing.assert_close(got, h @ k @ h, rtol=1e-12, atol=1e-12)
    vc = v - v.mean(1, keepdim=True)
    torch.testing.assert_close(got, vc @ vc.transpose(1, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(centred_gram(k[1]), got[1])
    assert centred_gram(k.float()).dtype == torch.float32
    for bad in (k[0, :, :4], k.long(), "k", torch.zeros(3)):
        with pytest.raises(ValueError, match="gram"):
            centred_gram(bad)

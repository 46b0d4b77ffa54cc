"""nbsupport.subspaces: principal angles against scipy and rotations, their random-subset floor
against its isotropic law and a loop, subspace iteration against the dense route, spectral gaps
against numpy, trace carriers against each row's squared distance to the mean."""

import numpy as np
import pytest
import torch

from test_covariance import _data

def test_principal_angles_against_scipy():
    from scipy.linalg import subspace_angles
    from nbsupport.subspaces import principal_angles
    g = torch.Generator().manual_seed(11)
    for d, k in [(6, 3), (10, 1), (10, 4), (20, 7)]:
        a, b = (torch.randn(3 * d, d, generator=g, dtype=torch.float64) for _ in range(2))
        cov_a, cov_b = a.T @ a, b.T @ b
        tops = [np.linalg.eigh(c.numpy())[1][:, -k:] for c in (cov_a, cov_b)]
        np.testing.assert_allclose(principal_angles(cov_a, cov_b, k).numpy(), np.sort(subspace_angles(*tops)),
                                   rtol=0, atol=1e-10)


def test_principal_angles_against_a_rotation():
    from nbsupport.subspaces import principal_angles
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
    from nbsupport.subspaces import random_subset_angles
    g = torch.Generator().manual_seed(4)
    values = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    reference = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    angles = random_subset_angles(values, 30, k=1, n_draws=600, rng=g, reference=reference)[:, 0]
    sd = np.pi / (4 * 3 ** 0.5)
    assert abs(angles.mean().item() - np.pi / 4) < 4 * sd / 600 ** 0.5
    assert abs(angles.std().item() - sd) < 0.1 * sd


def test_random_subset_angles_shrink_with_the_subset_and_match_a_loop():
    from nbsupport.subspaces import principal_angles, random_subset_angles
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
    import nbsupport.subspaces as cov
    g = torch.Generator().manual_seed(9)
    values = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(3, 0.5, d, dtype=torch.float64)
    inverse = torch.randint(0, 2, (n,), generator=g)
    dense = cov.group_angles(values, inverse, torch.tensor([0, 1]), k=4)
    monkeypatch.setattr(cov, "DENSE_SUBSPACE_MAX", 8)
    torch.testing.assert_close(cov.group_angles(values, inverse, torch.tensor([0, 1]), k=4), dense, rtol=0, atol=1e-8)


def test_group_angles_against_principal_angles():
    from nbsupport.subspaces import group_angles, principal_angles
    values, inverse = _data(n=600, d=6, groups=4, seed=10)
    angles = group_angles(values, inverse, torch.tensor([2, 0]), k=2)
    for row, g in zip(angles, [2, 0]):
        torch.testing.assert_close(row, principal_angles(torch.cov(values[inverse == g].T), torch.cov(values.T), 2),
                                   rtol=0, atol=1e-8)
    tiny = torch.cat([torch.zeros(3, dtype=torch.long), torch.ones(597, dtype=torch.long)])
    with pytest.raises(ValueError, match="more than k"):
        group_angles(values, tiny, torch.tensor([0]), k=3)


def test_group_angles_reference_basis():
    from nbsupport.subspaces import group_angles, top_eigh
    values, inverse = _data(n=600, d=6, groups=4, seed=11)
    centred = values - values.mean(0)
    basis = top_eigh(centred.T @ centred, 2)[1]
    torch.testing.assert_close(group_angles(values, inverse, torch.tensor([1, 3]), k=2, reference_basis=basis),
                               group_angles(values, inverse, torch.tensor([1, 3]), k=2), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="reference_basis"):
        group_angles(values, inverse, torch.tensor([1]), k=2, reference_basis=basis[:, :1])
    with pytest.raises(ValueError, match="not both"):
        group_angles(values, inverse, torch.tensor([1]), k=2, reference=torch.cov(values.T),
                     reference_basis=basis)


# ---------------------------------------------------------------- spectral gaps and trace carriers


def test_spectral_gaps_match_numpy_and_find_the_planted_gap():
    from nbsupport.subspaces import spectral_gaps
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
    from nbsupport.subspaces import trace_carriers
    values, _ = _data(n=50, d=3)
    v = values.numpy()
    d2 = ((v - v.mean(0)) ** 2).sum(1)
    np.testing.assert_allclose(trace_carriers(values @ values.T).numpy(), d2 / d2.sum(), rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="gram"):
        trace_carriers(torch.ones(3, 3, dtype=torch.float64))


def test_largest_angles_at_several_k_equal_separate_calls():
    from nbsupport.subspaces import random_subset_angles, random_subset_largest_angles
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
    import nbsupport.subspaces as cov
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


@pytest.mark.parametrize("rank", [30, 300])
def test_top_eigenpairs_on_both_routes_against_scipy_and_a_dense_eigh(monkeypatch, rank):
    """One top-eigenpair routine (issue 25; the Gram spectra used ARPACK beside it): top_eigh and
    top_eigenvalues against scipy.linalg.eigh and ARPACK's Lanczos (scipy.sparse.linalg.eigsh), on the
    dense route and on subspace iteration, with a slowly decaying spectrum, for a full-rank matrix
    and for one of rank 30 asked for k = 34 (null-space directions are arbitrary: the iteration must
    still stop, and the settled directions must be eigenvectors)."""
    import scipy.linalg
    from scipy.sparse.linalg import eigsh

    import nbsupport.subspaces as sub
    g = torch.Generator().manual_seed(rank)
    m = torch.randn(300, rank, generator=g, dtype=torch.float64) * torch.linspace(2, 1, rank, dtype=torch.float64)
    sym = m @ m.T
    k = 34 if rank == 30 else 6
    ref_values, ref_vectors = scipy.linalg.eigh(sym.numpy())
    ref_values, ref_vectors = ref_values[::-1][:k].copy(), ref_vectors[:, ::-1][:, :k].copy()
    lanczos = np.sort(eigsh(sym.numpy(), k=6, which="LA", v0=np.ones(300), tol=0)[0])[::-1]
    scale = ref_values[0]
    for dense_max in (1000, 256):                                     # dense route, then the iteration
        monkeypatch.setattr(sub, "DENSE_SUBSPACE_MAX", dense_max)
        values, vectors = sub.top_eigh(sym, k)
        only = sub.top_eigenvalues(sym, k)
        np.testing.assert_allclose(values.numpy(), ref_values, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(only.numpy(), ref_values, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(only[:6].numpy(), lanczos, rtol=0, atol=1e-12 * scale)
        torch.testing.assert_close(vectors.T @ vectors, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
        settled = min(k, rank - 1)                                     # directions with a non-zero value
        torch.testing.assert_close(sym @ vectors[:, :settled], vectors[:, :settled] * values[:settled],
                                   rtol=0, atol=1e-9 * scale)
        assert torch.equal(sub.top_eigenvalues(sym, k), only)          # seeded: deterministic
    assert sub.top_eigenvalues(torch.eye(3), 5).shape == (3,) and sub.top_eigenvalues(torch.eye(3), 2).dtype == torch.float64
    for bad, word in [((torch.eye(3), 0), "k"), ((torch.ones(2, 3), 1), "matrix"), (("m", 1), "matrix")]:
        with pytest.raises(ValueError, match=word):
            sub.top_eigenvalues(*bad)
        with pytest.raises(ValueError, match=word):
            sub.top_eigh(*bad)

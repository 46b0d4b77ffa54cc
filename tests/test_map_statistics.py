"""nbsupport.map_statistics against scipy and plain loops."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from nbsupport.map_statistics import gaussian_blur, linear_cka, pearson_rows, rank_correlation, roughness, ssim


def test_rank_correlation_is_scipys_spearman():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 2, 3, 3, generator=g)
    b = a + 0.5 * torch.randn(5, 2, 3, 3, generator=g)
    b[0, 0, 0] = 0.0  # ties
    a[1] = a[1].round()
    got = rank_correlation(a, b)
    for i in range(5):
        expected = scipy.stats.spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic
        assert math.isclose(float(got[i]), expected, rel_tol=1e-12)
    signed = rank_correlation(a, b, absolute=False)
    assert math.isclose(float(signed[2]), scipy.stats.spearmanr(a[2].flatten(), b[2].flatten()).statistic, rel_tol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        rank_correlation(a, b[:2])


def test_gaussian_blur_is_scipys_mirror_filter():
    import scipy.ndimage

    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.7, 1.5):
        expected = scipy.ndimage.gaussian_filter(x.numpy(), sigma, mode="mirror", axes=(2, 3))
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), expected, rtol=0, atol=1e-12)
    assert gaussian_blur(x.float(), 1.0).dtype == torch.float32
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 0.0)
    with pytest.raises(ValueError, match="half-width"):
        gaussian_blur(x, 5.0)


def test_roughness_and_pearson_rows_match_loops():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    for n in range(3):
        m = maps[n].numpy()
        # squared finite differences (an L2 norm of the discrete gradient, not total variation)
        sq = sum((m[c, i + 1, j] - m[c, i, j]) ** 2 for c in range(2) for i in range(3) for j in range(5))
        sq += sum((m[c, i, j + 1] - m[c, i, j]) ** 2 for c in range(2) for i in range(4) for j in range(4))
        assert math.isclose(float(roughness(maps)[n]), math.sqrt(sq) / np.linalg.norm(m), rel_tol=1e-12)
        tv = sum(abs(m[c, i + 1, j] - m[c, i, j]) for c in range(2) for i in range(3) for j in range(5))
        tv += sum(abs(m[c, i, j + 1] - m[c, i, j]) for c in range(2) for i in range(4) for j in range(4))
        assert not math.isclose(float(roughness(maps)[n]), tv / np.abs(m).sum(), rel_tol=1e-3)  # not TV
    torch.testing.assert_close(roughness(-3 * maps), roughness(maps))
    a, b = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)
    for n in range(4):
        assert math.isclose(float(pearson_rows(a, b)[n]), np.corrcoef(a[n].numpy(), b[n].numpy())[0, 1], rel_tol=1e-12)
    assert pearson_rows(a > 0, b > 0).dtype == torch.float32 and pearson_rows(a > 0, b).dtype == torch.float64
    with pytest.raises(ValueError, match="same shape"):
        pearson_rows(a, b[:, :3])
    with pytest.raises(ValueError, match="maps"):
        roughness(maps[0])


def test_linear_cka_against_the_hsic_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(15, 4)), rng.normal(size=(15, 6))
    y[:, :2] += x[:, :2]
    h = np.eye(15) - 1 / 15

    def hsic(k, l_):
        return np.trace(k @ h @ l_ @ h)

    kx, ky = x @ x.T, y @ y.T
    expected = hsic(kx, ky) / math.sqrt(hsic(kx, kx) * hsic(ky, ky))
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    assert math.isclose(float(got), expected, rel_tol=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert math.isclose(float(linear_cka(torch.from_numpy(x), torch.from_numpy(2.5 * y @ q + 1.0))), expected,
                        rel_tol=1e-10)
    assert math.isclose(float(linear_cka(torch.from_numpy(x), torch.from_numpy(x))), 1.0, rel_tol=1e-12)
    gates = torch.from_numpy(rng.random((15, 30)) > 0.5)
    assert 0 <= float(linear_cka(gates, torch.from_numpy(y))) <= 1
    with pytest.raises(ValueError, match="same N"):
        linear_cka(torch.from_numpy(x), torch.from_numpy(y[:5]))


def _loop_ssim(a, b, win=7):
    """Mean SSIM of two numpy arrays (1-d or 2-d) by an explicit loop over the windows inside."""
    r = max(a.max(), b.max()) - min(a.min(), b.min())
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    starts = [range(size - win + 1) for size in a.shape]
    values = []
    for corner in np.ndindex(*[len(s) for s in starts]):
        sl = tuple(slice(i, i + win) for i in corner)
        wa, wb = a[sl].ravel(), b[sl].ravel()
        ma, mb = wa.mean(), wb.mean()
        va, vb = wa.var(ddof=1), wb.var(ddof=1)
        cab = ((wa - ma) * (wb - mb)).sum() / (wa.size - 1)
        values.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(3, 40), (3, 9, 11)])
def test_ssim_matches_a_window_loop(shape):
    g = np.random.default_rng(0)
    a = g.normal(size=shape)
    b = 0.6 * a + 0.4 * g.normal(size=shape)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b))
    want = [_loop_ssim(a[i], b[i]) for i in range(shape[0])]
    assert np.allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert np.allclose(ssim(torch.from_numpy(a), torch.from_numpy(a)).numpy(), 1.0)
    # the same with a fixed data range, and invariant to scaling both maps together
    both = ssim(torch.from_numpy(3 * a), torch.from_numpy(3 * b))
    assert np.allclose(both.numpy(), got.numpy(), atol=1e-12)


def test_ssim_is_skimages_structural_similarity():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed (it comes "
                                  "with the test extra's quantus)")
    g = np.random.default_rng(1)
    for shape in [(2, 28, 28), (2, 784)]:
        a = g.normal(size=shape)
        b = a + g.normal(size=shape)
        got = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        for i in range(shape[0]):
            r = float(max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min()))
            assert got[i] == pytest.approx(metrics.structural_similarity(a[i], b[i], data_range=r),
                                           abs=1e-12)


def test_ssim_refuses_bad_input_naming_it():
    a = torch.rand(2, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="a and b"):
        ssim(a, a[:, :7])
    with pytest.raises(ValueError, match="a and b"):
        ssim(a.long(), a.long())
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, a, win_size=4)
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, a, win_size=9)
    with pytest.raises(ValueError, match="data_range"):
        ssim(a, a, data_range=-1.0)
    assert torch.equal(ssim(torch.ones(1, 8, 8), torch.ones(1, 8, 8)), torch.ones(1, dtype=torch.float64))

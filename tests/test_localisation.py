"""nbsupport.localisation against plain loops and Quantus's Focus."""

import numpy as np
import pytest
import torch

from nbsupport.localisation import focus, mosaics


def _labelled(n=40, side=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, side, side, dtype=torch.float64, generator=g)
    return x, torch.arange(n) % 5


def test_mosaics_place_two_target_tiles_and_two_others():
    x, y = _labelled()
    m = mosaics(x, y, 30, rng=0)
    assert m.images.shape == (30, 1, 8, 8)
    assert m.target_tiles.sum(1).tolist() == [2] * 30
    for k in range(30):
        src = m.sources[k].tolist()
        assert len(set(src)) == 4
        for t, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
            assert torch.equal(m.images[k, :, r:r + 4, c:c + 4], x[src[t]])
            assert bool(y[src[t]] == m.target[k]) == bool(m.target_tiles[k, t])
    # every arrangement and class occurs; the same rng gives the same mosaics
    assert len({tuple(t.tolist()) for t in m.target_tiles}) == 6
    assert set(m.target.tolist()) == set(range(5))
    assert torch.equal(mosaics(x, y, 30, rng=0).images, m.images)
    assert not torch.equal(mosaics(x, y, 30, rng=1).images, m.images)


def _loop_focus(a, tiles):
    """Positive relevance per quadrant by loops over the pixels."""
    out = []
    for k in range(a.shape[0]):
        h, w = a.shape[2] // 2, a.shape[3] // 2
        total = inside = 0.0
        for c in range(a.shape[1]):
            for i in range(a.shape[2]):
                for j in range(a.shape[3]):
                    v = max(float(a[k, c, i, j]), 0.0)
                    total += v
                    if tiles[k, 2 * (i >= h) + (j >= w)]:
                        inside += v
        out.append(inside / total if total > 0 else 0.0)
    return np.array(out)


def test_focus_matches_a_loop_and_its_null():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 2, 6, 8, dtype=torch.float64, generator=g)
    tiles = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]],
                         dtype=torch.bool)
    assert np.allclose(focus(a, tiles).numpy(), _loop_focus(a, tiles), atol=1e-12)
    assert focus(-a.abs(), tiles).tolist() == [0.0] * 6  # no positive relevance
    # a map on the target tiles only scores 1; the mean over many random maps is 0.5
    inside = tiles[:, :, None, None].expand(6, 4, 3, 4).reshape(6, 2, 2, 3, 4).permute(0, 1, 3, 2, 4)
    on_target = inside.reshape(6, 1, 6, 8).double()
    assert torch.equal(focus(on_target, tiles), torch.ones(6, dtype=torch.float64))
    many = torch.randn(4000, 1, 6, 8, dtype=torch.float64, generator=g)
    values = focus(many, tiles[torch.arange(4000) % 6])
    assert abs(float(values.mean()) - 0.5) < 4 * float(values.std()) / 4000**0.5


def test_focus_is_quantus():
    quantus = pytest.importorskip("quantus", reason="quantus is not installed (pip install "
                                  "'nbsupport[test]' brings it)")
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 1, 8, 8, generator=g)
    tiles = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    metric = quantus.Focus(normalise=False, return_aggregate=False, disable_warnings=True)
    theirs = metric(model=model, x_batch=np.zeros((4, 1, 8, 8), np.float32), y_batch=np.zeros(4, np.int64),
                    a_batch=a.numpy(), custom_batch=[tuple(int(v) for v in t) for t in tiles], device="cpu")
    assert np.allclose(focus(a, tiles).numpy(), theirs, rtol=0, atol=1e-6)


def test_bad_input_is_refused_naming_it():
    x, y = _labelled()
    with pytest.raises(ValueError, match="x"):
        mosaics(x[:, 0], y, 3)
    with pytest.raises(ValueError, match="y"):
        mosaics(x, y.double(), 3)
    with pytest.raises(ValueError, match="y"):
        mosaics(x[:3], torch.tensor([0, 0, 1]), 3)
    with pytest.raises(ValueError, match="n"):
        mosaics(x, y, 0)
    with pytest.raises(ValueError, match="rng"):
        mosaics(x, y, 3, rng=None)
    a = torch.rand(2, 1, 6, 6)
    with pytest.raises(ValueError, match="attribution"):
        focus(a[..., :5], torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="target_tiles"):
        focus(a, torch.ones(2, 4))
    with pytest.raises(ValueError, match="target_tiles"):
        focus(a, torch.ones(3, 4, dtype=torch.bool))

"""nbsupport.localisation against plain loops and Quantus's Focus."""

import numpy as np
import pytest
import torch

from nbsupport.localisation import focus, mosaic_logits, mosaics, tile_maps, tiles, untile


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
        # the two other tiles come from two distinct classes: none ties with the target
        others = [int(y[src[t]]) for t in range(4) if not m.target_tiles[k, t]]
        assert len(set(others)) == 2
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
        out.append(inside / total if total > 0 else float(tiles[k].sum()) / 4)
    return np.array(out)


def test_focus_matches_a_loop_and_its_null():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 2, 6, 8, dtype=torch.float64, generator=g)
    tiles = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]],
                         dtype=torch.bool)
    assert np.allclose(focus(a, tiles).numpy(), _loop_focus(a, tiles), atol=1e-12)
    # no positive relevance: chance, the target tiles' share of the area (a constant map's)
    assert focus(-a.abs(), tiles).tolist() == [0.5] * 6
    assert focus(-a.abs(), tiles).tolist() == focus(torch.ones_like(a), tiles).tolist()
    one_tile = torch.tensor([[1, 0, 0, 0]] * 6, dtype=torch.bool)
    assert focus(-a.abs(), one_tile).tolist() == [0.25] * 6
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


def _tile_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 16, 5)).double().eval()


def test_tiles_untile_and_the_tiled_classifier_match_slicing():
    x, y = _labelled()
    m = mosaics(x, y, 6, rng=2)
    batch = tiles(m.images)
    assert batch.shape == (24, 1, 4, 4)
    for k in range(6):
        for t in range(4):
            assert torch.equal(batch[4 * k + t], x[m.sources[k, t]])
    assert torch.equal(untile(batch), m.images)
    net = _tile_net()
    with torch.no_grad():
        loop = torch.stack([sum(net(x[m.sources[k, t]][None])[0] for t in range(4)) for k in range(6)])
        assert torch.allclose(mosaic_logits(net, m.images), loop, atol=1e-12)


def test_tile_maps_are_the_tiled_classifiers_gradient():
    """Reference: autograd of the tiled logit through explicit slicing of the mosaic."""
    from nbsupport.saliency import input_gradient

    x, y = _labelled(seed=3)
    m = mosaics(x, y, 5, rng=1)
    net = _tile_net(1)
    img = m.images.clone().requires_grad_(True)
    quads = [img[:, :, r:r + 4, c:c + 4] for r, c in [(0, 0), (0, 4), (4, 0), (4, 4)]]
    logit = sum(net(q) for q in quads).gather(1, m.target[:, None]).sum()
    (reference,) = torch.autograd.grad(logit, img)
    assert torch.allclose(tile_maps(input_gradient, net, m.images, m.target), reference, atol=1e-12)
    # another class's map differs (the null)
    other = (m.target + 1) % 5
    assert not torch.allclose(tile_maps(input_gradient, net, m.images, other), reference, atol=1e-6)


def test_tiling_refuses_bad_input_naming_it():
    net = _tile_net()
    with pytest.raises(ValueError, match="images"):
        tiles(torch.zeros(2, 1, 5, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch"):
        untile(torch.zeros(6, 1, 4, 4))
    with pytest.raises(ValueError, match="attribute"):
        tile_maps(None, net, torch.zeros(2, 1, 8, 8, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="target"):
        tile_maps(lambda m, x, t: x, net, torch.zeros(2, 1, 8, 8, dtype=torch.float64), 7)


def test_tile_maps_of_the_pullback_are_each_tiles_own_pullback():
    from nbsupport.pullbacks import excitation_pullback

    x, y = _labelled(seed=4)
    m = mosaics(x, y, 3, rng=0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5)).double().eval()
    mosaic_map = tile_maps(excitation_pullback, net, m.images, m.target)
    for k in range(3):
        for t, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
            own = excitation_pullback(net, x[m.sources[k, t]][None], int(m.target[k]))[0]
            assert torch.allclose(mosaic_map[k, :, r:r + 4, c:c + 4], own, atol=1e-12)

"""nbsupport.randomisation against hand-built copies, BatchNorm statistics by hand and graph depths."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nbsupport.attribution import image_map
from nbsupport.map_statistics import rank_correlation
from nbsupport.models import small_resnet, vgg_cnn
from nbsupport.randomisation import (cascading_randomisation, map_similarity, random_logit, randomise_top_layers,
                                     recalibrate_batchnorm, weight_layer_depths, weight_layers)
from nbsupport.saliency import input_gradient
from attribution_nets import _images, _linear, _seeded_cnn


def test_randomise_top_layers():
    cnn = _seeded_cnn(5).float()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    rand = randomise_top_layers(cnn, 2, rng=0)
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in before.items())  # original untouched
    names = [n for n, m in cnn.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    changed = {n for n, m in rand.named_modules() if n in names and not torch.equal(m.weight, cnn.get_submodule(n).weight)}
    assert changed == set(names[-2:]) and not rand.training
    again = randomise_top_layers(cnn, 2, rng=0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in rand.state_dict().items())
    for bad in (0, len(names) + 1, True, 2.0, "2"):
        with pytest.raises(ValueError, match="n_layers"):
            randomise_top_layers(cnn, bad)
    numpy = randomise_top_layers(cnn, np.int64(2), rng=np.int64(0))  # NumPy integers are integers
    assert all(torch.equal(v, numpy.state_dict()[k]) for k, v in rand.state_dict().items())


def test_randomise_top_layers_uses_no_global_random_state():
    cnn = vgg_cnn((3, 4), image_size=8).eval()
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    rand = randomise_top_layers(cnn, 3, rng=4)
    assert torch.equal(state, torch.get_rng_state())
    if cuda_state is not None:
        assert all(torch.equal(a, b) for a, b in zip(cuda_state, torch.cuda.get_rng_state_all()))
    # the default law of nn.Conv2d / nn.Linear: uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]
    for layer in [m for m in rand.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-3:]:
        w = layer.weight.detach().double().flatten()
        bound = 1 / math.sqrt(layer.weight[0].numel())
        assert float(w.abs().max()) <= bound
        n = len(w)
        assert abs(float(w.var()) - bound**2 / 3) < 6 * bound**2 * math.sqrt(4 / 45 / n)  # Var(U^2) = 4 b^4/45
    assert not torch.equal(rand[2].weight, randomise_top_layers(cnn, 3, rng=5)[2].weight)


def test_cascading_randomisation_layer_by_layer():
    cnn = _seeded_cnn(3)
    x = _images(4, side=8, seed=12)
    out = cascading_randomisation(cnn, x, 2, input_gradient, draws=2, rng=5)
    n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in cnn.modules())
    assert out.shape == (2, n_layers, 4)
    ref = input_gradient(cnn, x, 2)
    # each draw's seed comes from a generator seeded with rng, in order
    gen = torch.Generator().manual_seed(5)
    draw_seeds = [int(torch.randint(0, 2**62, (1,), generator=gen)) for _ in range(2)]
    for s, seed in enumerate(draw_seeds):
        for k in (1, n_layers):
            torch.testing.assert_close(out[s, k - 1],
                                       rank_correlation(ref, input_gradient(randomise_top_layers(cnn, k, seed), x, 2)))
    # the image map ignores the model: perfectly correlated at every depth
    torch.testing.assert_close(cascading_randomisation(cnn, x, 2, image_map), torch.ones(1, n_layers, 4,
                                                                                       dtype=torch.float64))


def test_graph_depths_put_the_shortcut_beside_the_first_convolution():
    net = small_resnet((4, 6)).eval()
    depths = weight_layer_depths(net)
    assert list(depths) == weight_layers(net)
    # stem conv, block 1 (conv1, conv2), block 2 (conv1 and its 1x1 shortcut, conv2), head
    expected = {"0.0": 1, "1.conv1": 2, "1.conv2": 3, "2.conv1": 4, "2.shortcut.0": 4, "2.conv2": 5, "4": 6}
    assert depths == expected
    chain = vgg_cnn((3, 4), image_size=8)
    assert list(weight_layer_depths(chain).values()) == [1, 2, 3, 4, 5]
    # graph order randomises block 2's conv2 (level 2 from the top) before its shortcut (level 3)
    two = randomise_top_layers(net, 2, rng=0, order="graph")
    three = randomise_top_layers(net, 3, rng=0, order="graph")
    same = lambda a, b, name: torch.equal(a.get_submodule(name).weight, b.get_submodule(name).weight)  # noqa: E731
    assert not same(two, net, "2.conv2") and same(two, net, "2.shortcut.0") and same(two, net, "2.conv1")
    assert not same(three, net, "2.shortcut.0") and not same(three, net, "2.conv1") and same(three, net, "1.conv2")
    with pytest.raises(ValueError, match="order"):
        randomise_top_layers(net, 1, order="random")


def test_recalibrate_batchnorm_uses_the_input_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2)).double()
    net.eval()
    net[1].running_mean.fill_(5.0)  # stale statistics
    x = torch.rand(40, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    recalibrate_batchnorm(net, x, batch_size=40)
    assert not net.training and net[1].momentum == 0.1
    with torch.no_grad():
        z = net[0](x)
    torch.testing.assert_close(net[1].running_mean, z.mean((0, 2, 3)))
    torch.testing.assert_close(net[1].running_var, z.transpose(0, 1).flatten(1).var(1, unbiased=True))
    # several batches: the equal-weight average of the per-batch statistics
    recalibrate_batchnorm(net, x, batch_size=20)
    with torch.no_grad():
        means = torch.stack([net[0](b).mean((0, 2, 3)) for b in x.split(20)])
    torch.testing.assert_close(net[1].running_mean, means.mean(0))
    # randomise_top_layers with calibration: the randomised conv's BatchNorm follows its new outputs
    rand = randomise_top_layers(net, 2, rng=0, calibration=x)
    with torch.no_grad():
        z_new = rand[0](x).mean((0, 2, 3))
    torch.testing.assert_close(rand[1].running_mean, z_new)
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batchnorm(net, x, batch_size=1)


def test_rng_same_gives_same_other_gives_other_bad_is_refused():
    cnn = _seeded_cnn(3)
    x = _images(4, side=8, seed=12)
    weight = lambda net: net.get_submodule(weight_layers(net)[-1]).weight  # noqa: E731
    a, b = randomise_top_layers(cnn, 1, rng=7), randomise_top_layers(cnn, 1, rng=torch.Generator().manual_seed(7))
    assert torch.equal(weight(a), weight(b)) and not torch.equal(weight(a), weight(randomise_top_layers(cnn, 1, rng=8)))
    gen = torch.Generator().manual_seed(7)
    assert not torch.equal(weight(randomise_top_layers(cnn, 1, rng=gen)), weight(randomise_top_layers(cnn, 1, rng=gen)))
    run = lambda rng: cascading_randomisation(cnn, x, 2, input_gradient, rng=rng)  # noqa: E731
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))
    for bad in (None, -1, 0.5):
        with pytest.raises(ValueError, match="rng"):
            randomise_top_layers(cnn, 1, rng=bad)
        with pytest.raises(ValueError, match="rng"):
            run(bad)
    with pytest.raises(ValueError, match="draws"):
        cascading_randomisation(cnn, x, 2, input_gradient, draws=0)


# ---------------------------------------------------------------------------------------------
# RandomLogit
# ---------------------------------------------------------------------------------------------

def test_random_logit_matches_a_loop():
    model, x = _seeded_cnn(), _images(n=5, side=8)
    target = torch.tensor([0, 1, 2, 3, 4]) % 10
    got = random_logit(model, x, target, input_gradient, rng=3)
    # the other classes: uniform over the nine others, from rng alone
    g = torch.Generator().manual_seed(3)
    other = (target + torch.randint(1, 10, (5,), generator=g)) % 10
    assert not bool((other == target).any())
    for i in range(5):
        maps = []
        for c in (int(target[i]), int(other[i])):
            a = input_gradient(model, x[i:i + 1], c)[0, 0].numpy()
            maps.append(a / np.abs(a).max())
        want = _loop_ssim(*maps)
        assert float(got[i]) == pytest.approx(want, abs=1e-12)
    # a map that ignores the class is its own match; explicit other classes are used as given
    assert torch.allclose(random_logit(model, x, target, image_map, rng=3), torch.ones(5, dtype=torch.float64))
    assert torch.equal(random_logit(model, x, target, input_gradient, other=other), got)


def test_map_similarity_is_the_loop_ssim_of_max_normalised_maps():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 1, 9, 9, dtype=torch.float64, generator=g)
    b = a + 0.3 * torch.randn(3, 1, 9, 9, dtype=torch.float64, generator=g)
    got = map_similarity(a, 4.0 * b)  # the scale of either map does not matter
    for i in range(3):
        ai, bi = a[i, 0].numpy(), b[i, 0].numpy()
        assert float(got[i]) == pytest.approx(_loop_ssim(ai / np.abs(ai).max(), bi / np.abs(bi).max()), abs=1e-12)
    assert torch.allclose(map_similarity(a, a), torch.ones(3, dtype=torch.float64))
    assert float(map_similarity(a, b).max()) < 0.99  # a perturbed map is less similar (the null)
    with pytest.raises(ValueError, match="a and b"):
        map_similarity(a, b[:, :, :8])
    with pytest.raises(ValueError, match="similarity"):
        map_similarity(a, b, similarity="ssim")


def _loop_ssim(a, b, win=7):
    """Mean SSIM of two 2-d arrays over every window inside them (sample variances), by loops."""
    r = max(a.max(), b.max()) - min(a.min(), b.min())
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    values = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            wa, wb = a[i:i + win, j:j + win].ravel(), b[i:i + win, j:j + win].ravel()
            ma, mb = wa.mean(), wb.mean()
            cab = ((wa - ma) * (wb - mb)).sum() / (wa.size - 1)
            values.append((2 * ma * mb + c1) * (2 * cab + c2)
                          / ((ma**2 + mb**2 + c1) * (wa.var(ddof=1) + wb.var(ddof=1) + c2)))
    return float(np.mean(values))


def test_random_logit_is_quantus():
    quantus = pytest.importorskip("quantus", reason="quantus is not installed (pip install "
                                  "'nbsupport[test]' brings it)")
    from nbsupport.map_statistics import ssim

    model, x = _seeded_cnn().float(), _images(n=4, side=8).float()
    target = np.array([0, 3, 1, 2])

    def explain(model, inputs, targets, **kwargs):
        inputs = torch.as_tensor(inputs, dtype=torch.float32)
        return input_gradient(model, inputs, torch.as_tensor(targets)).detach().numpy()

    # Quantus reseeds numpy with its seed for every batch: one image per batch makes its
    # max-normalisation per map, as ours
    metric = quantus.RandomLogit(num_classes=10, seed=42, return_aggregate=False, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=target, a_batch=None, explain_func=explain,
                    device="cpu", batch_size=1)
    others = []
    for y in target:
        np.random.seed(42)
        index = np.random.randint(0, 9, 1)[0]
        others.append([c for c in range(10) if c != y][index])
    ours = random_logit(model, x, torch.from_numpy(target), input_gradient, other=torch.tensor(others),
                        similarity=lambda a, b: ssim(a.flatten(1), b.flatten(1)))
    assert np.allclose(ours.numpy(), theirs, rtol=0, atol=1e-5)


def test_random_logit_refuses_bad_input_naming_it():
    model, x = _seeded_cnn(), _images(n=2, side=8)
    with pytest.raises(ValueError, match="attribute"):
        random_logit(model, x, 0, "gradient")
    with pytest.raises(ValueError, match="similarity"):
        random_logit(model, x, 0, input_gradient, similarity=3)
    with pytest.raises(ValueError, match="other"):
        random_logit(model, x, torch.tensor([1, 2]), input_gradient, other=torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="target"):
        random_logit(model, x, 10, input_gradient)
    with pytest.raises(ValueError, match="rng"):
        random_logit(model, x, 0, input_gradient, rng=None)
    with pytest.raises(ValueError, match="model"):
        random_logit(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)).double(), x, 0, input_gradient)

"""nbsupport.attribution against Captum, closed forms and plain loops."""

import math
from functools import partial

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from nbsupport.attribution import (class_average_map, gradient_x_input, guided_backprop, image_map,
                                   integrated_gradients, random_map, smoothgrad)
from nbsupport.saliency import input_gradient
from attribution_nets import _images, _linear, _seeded_cnn


def test_gradient_x_input_matches_captum():
    from captum.attr import InputXGradient

    cnn = _seeded_cnn(0)
    x = _images(3, side=8)
    target = torch.tensor([0, 5, 9])
    torch.testing.assert_close(gradient_x_input(cnn, x, target), InputXGradient(cnn).attribute(x, target=target))


def test_smoothgrad_of_one_relu_is_the_normal_cdf():
    # f(x) = relu(x): E[1(x + eps > 0)] = Phi(x / sigma), sigma = noise_level * range(x)
    class Relu1(nn.Module):
        def forward(self, x):
            return torch.relu(x[:, :1])

    x = torch.tensor([[-0.3, 0.7], [0.2, -0.5]], dtype=torch.float64)
    n = 600
    got = smoothgrad(Relu1(), x, 0, n_samples=n, noise_level=0.5, rng=3)[:, 0]
    sigma = 0.5 * torch.tensor([1.0, 0.7], dtype=torch.float64)
    p = torch.from_numpy(scipy.stats.norm.cdf((x[:, 0] / sigma).numpy()))
    assert bool(((got - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all())
    again = [smoothgrad(Relu1(), x, 0, n_samples=5, noise_level=0.5, rng=s) for s in (3, 3, 4)]
    assert torch.equal(again[0], again[1]) and not torch.equal(again[0], again[2])  # seeded
    lin, xi = _linear(), _images()
    torch.testing.assert_close(smoothgrad(lin, xi, 1, n_samples=3), input_gradient(lin, xi, 1))
    with pytest.raises(ValueError, match="n_samples"):
        smoothgrad(lin, xi, 1, n_samples=0)
    with pytest.raises(ValueError, match="noise_level"):
        smoothgrad(lin, xi, 1, noise_level=-1.0)


def test_image_and_random_maps():
    x = _images(3, side=5)
    lin = _linear(side=5)
    assert torch.equal(image_map(lin, x, 0), x)
    a, b = random_map(lin, x, 0), random_map(_linear(side=5, seed=3), x + 1, 2)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype  # input-, model- and target-free
    assert not torch.equal(a, random_map(lin, x, 0, rng=1))
    # standard normal entries: mean within 5 standard errors of 0
    big = random_map(lin, torch.zeros(200, 1, 10, 10), 0)
    assert abs(float(big.mean())) < 5 / math.sqrt(big.numel()) and abs(float(big.var()) - 1) < 5 * math.sqrt(2 / big.numel())


def test_class_average_map_is_the_per_class_mean_of_a_loop():
    cnn = _seeded_cnn()
    x_ref = _images(12, side=8, seed=5)
    y_ref = torch.tensor([0, 1, 2] * 4)
    fn = class_average_map(input_gradient, x_ref, y_ref)
    x = _images(4, side=8, seed=6)
    target = torch.tensor([2, 0, 2, 1])
    got = fn(cnn, x, target)
    for n, c in enumerate(target.tolist()):
        members = [input_gradient(cnn, x_ref[i:i + 1], c)[0] for i in range(12) if y_ref[i] == c]
        torch.testing.assert_close(got[n], sum(members) / len(members))
    torch.testing.assert_close(got, fn(cnn, x + 0.3, target))  # independent of the input
    with pytest.raises(ValueError, match="class 5"):
        fn(cnn, x, 5)
    with pytest.raises(ValueError, match="y_ref"):
        class_average_map(input_gradient, x_ref, y_ref.double())


def test_integrated_gradients_matches_captum_and_completeness():
    from captum.attr import IntegratedGradients

    cnn = _seeded_cnn(0)
    x = _images(3, side=8)
    target = torch.tensor([0, 5, 9])
    base = _images(1, side=8, seed=3)
    got = integrated_gradients(cnn, x, target, baseline=base, n_steps=32)
    expected = IntegratedGradients(cnn).attribute(x, baselines=base.expand_as(x), target=target, n_steps=32,
                                                  method="riemann_middle")
    torch.testing.assert_close(got, expected)
    # completeness: the entries sum to f(x) - f(b), up to the quadrature error (1000 steps)
    fine = integrated_gradients(cnn, x, target, baseline=base, n_steps=1000).flatten(1).sum(1)
    with torch.no_grad():
        gap = cnn(x).gather(1, target[:, None])[:, 0] - cnn(base.expand_as(x)).gather(1, target[:, None])[:, 0]
    assert float((fine - gap).abs().max()) < 1e-2 * float(gap.abs().max())
    lin = _linear()
    xi = _images()
    torch.testing.assert_close(integrated_gradients(lin, xi, 2, n_steps=1), xi * input_gradient(lin, xi, 2))
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(lin, xi, 2, n_steps=0)
    with pytest.raises(ValueError, match="baseline"):
        integrated_gradients(lin, xi, 2, baseline=torch.zeros(3, 3))


@pytest.mark.parametrize("method", ["smoothgrad", "random_map"])
def test_rng_same_gives_same_other_gives_other_bad_is_refused(method):
    fn = {"smoothgrad": partial(smoothgrad, n_samples=3), "random_map": random_map}[method]
    cnn, x = _seeded_cnn(1), _images(2, side=8)
    same = [fn(cnn, x, 1, rng=r) for r in (4, 4, torch.Generator().manual_seed(4))]
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])  # an int seeds a generator
    assert not torch.equal(same[0], fn(cnn, x, 1, rng=5))
    gen = torch.Generator().manual_seed(4)
    first, second = fn(cnn, x, 1, rng=gen), fn(cnn, x, 1, rng=gen)  # a generator is advanced
    assert torch.equal(first, same[0]) and not torch.equal(first, second)
    for bad in (None, -1, 1.5, "0"):
        with pytest.raises(ValueError, match="rng"):
            fn(cnn, x, 1, rng=bad)


@pytest.mark.parametrize("method", ["input_gradient", "guided_backprop", "gradient_x_input", "integrated_gradients",
                                    "smoothgrad", "class_average_map"])
def test_targets_may_be_numpy_integers_but_not_booleans_or_floats(method):
    """A class index taken from a NumPy array (np.int64) is a class index; True and 2.0 are not."""
    cnn, x = _seeded_cnn(1), _images(2, side=8)
    fn = {"input_gradient": input_gradient, "guided_backprop": guided_backprop,
          "gradient_x_input": gradient_x_input, "integrated_gradients": partial(integrated_gradients, n_steps=2),
          "smoothgrad": partial(smoothgrad, n_samples=2),
          "class_average_map": class_average_map(input_gradient, _images(4, side=8, seed=2),
                                                 torch.tensor([0, 1, 2, 3]))}[method]
    expected = fn(cnn, x, 2)
    for target in (np.int64(2), np.array([2, 2]), torch.tensor([2, 2], dtype=torch.int32)):
        torch.testing.assert_close(fn(cnn, x, target), expected)
    for bad in (True, 2.0, np.float64(2.0), torch.tensor([2.0, 2.0]), torch.tensor([True, False])):
        with pytest.raises(ValueError, match="target"):
            fn(cnn, x, bad)

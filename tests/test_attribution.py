"""nbsupport.attribution against closed forms on linear models, plain loops, scipy and Captum."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from nbsupport.attribution import (curve_auc, deletion_insertion, gradient_x_input, infidelity, max_sensitivity,
                                   mean_ci, randomise_top_layers, rank_correlation, smoothgrad)
from nbsupport.models import vgg_cnn
from nbsupport.pullbacks import input_gradient


def _linear(c=1, side=4, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, k)).double().eval()


def _images(n=4, c=1, side=4, seed=1):
    return torch.rand(n, c, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_gradient_x_input_matches_captum():
    from captum.attr import InputXGradient

    cnn = vgg_cnn((3, 4), image_size=8).double().eval()
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
    got = smoothgrad(Relu1(), x, 0, n_samples=n, noise_level=0.5, seed=3)[:, 0]
    sigma = 0.5 * torch.tensor([1.0, 0.7], dtype=torch.float64)
    p = torch.from_numpy(scipy.stats.norm.cdf((x[:, 0] / sigma).numpy()))
    assert bool(((got - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all())
    again = [smoothgrad(Relu1(), x, 0, n_samples=5, noise_level=0.5, seed=s) for s in (3, 3, 4)]
    assert torch.equal(again[0], again[1]) and not torch.equal(again[0], again[2])  # seeded
    lin, xi = _linear(), _images()
    torch.testing.assert_close(smoothgrad(lin, xi, 1, n_samples=3), input_gradient(lin, xi, 1))
    with pytest.raises(ValueError, match="n_samples"):
        smoothgrad(lin, xi, 1, n_samples=0)
    with pytest.raises(ValueError, match="noise_level"):
        smoothgrad(lin, xi, 1, noise_level=-1.0)


def _loop_curves(model, x, target, attribution, n_steps, baseline):
    """One image and one step at a time, pixels sorted in Python."""
    n, c, h, w = x.shape
    dele = torch.zeros(n, n_steps + 1, dtype=x.dtype)
    ins = torch.zeros(n, n_steps + 1, dtype=x.dtype)
    for i in range(n):
        score = attribution[i].sum(0).flatten().tolist()
        order = sorted(range(h * w), key=lambda p: -score[p])  # stable: ties keep pixel order
        for j in range(n_steps + 1):
            k = round(j * h * w / n_steps)
            xd, xi = x[i].clone(), torch.full_like(x[i], baseline)
            for p in order[:k]:
                xd[:, p // w, p % w] = baseline
                xi[:, p // w, p % w] = x[i][:, p // w, p % w]
            with torch.no_grad():
                dele[i, j] = model(xd[None]).softmax(1)[0, target[i]]
                ins[i, j] = model(xi[None]).softmax(1)[0, target[i]]
    return dele, ins


def test_deletion_insertion_match_a_loop():
    cnn = vgg_cnn((3, 4), image_size=8).double().eval()
    x = _images(2, c=1, side=8)
    target = torch.tensor([2, 7])
    attribution = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    attribution[0, 0, :2] = 0.0  # ties
    curves = deletion_insertion(cnn, x, target, attribution, n_steps=5, baseline=0.25)
    dele, ins = _loop_curves(cnn, x, target, attribution, 5, 0.25)
    torch.testing.assert_close(curves.deletion, dele)
    torch.testing.assert_close(curves.insertion, ins)
    torch.testing.assert_close(curves.deletion[:, -1], curves.insertion[:, 0])  # all deleted == nothing inserted
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1
    with pytest.raises(ValueError, match="attribution"):
        deletion_insertion(cnn, x, target, attribution[:, :, :4])
    with pytest.raises(ValueError, match="n_steps"):
        deletion_insertion(cnn, x, target, attribution, n_steps=0)


def test_curve_auc_is_the_trapezoid():
    f = torch.linspace(0, 1, 11, dtype=torch.float64)
    curves = torch.stack([f, f**2, torch.ones_like(f)])
    torch.testing.assert_close(curve_auc(f, curves), torch.tensor([0.5, 0.335, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="curves"):
        curve_auc(f, curves[:, :5])


def test_infidelity_closed_form_on_a_linear_model():
    # f_c(x) = w.x + b: with I ~ N(0, s^2), the optimal beta gives s^2 (|w|^2 - (a.w)^2 / |a|^2) per sample
    lin = _linear(side=3)
    x = _images(2, side=3)
    w = lin[1].weight[1].detach()
    grad = input_gradient(lin, x, 1)
    exact0 = infidelity(lin, x, 1, grad, noise_std=0.2, n_samples=64)
    scale = 0.04 * float(w @ w)  # E[(f(x) - f(x - I))^2]
    assert float(exact0.abs().max()) < 1e-12 * scale
    assert float(infidelity(lin, x, 1, 3.0 * grad, noise_std=0.2).abs().max()) < 1e-12 * scale
    a = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    n = 4000
    got = infidelity(lin, x, 1, a, noise_std=0.2, n_samples=n, seed=1)
    af = a.flatten(1)
    expected = 0.04 * (w @ w - (af @ w) ** 2 / (af * af).sum(1))
    assert bool(((got / expected - 1).abs() < 0.15).all()), (got, expected)
    with pytest.raises(ValueError, match="noise_std"):
        infidelity(lin, x, 1, a, noise_std=0.0)
    with pytest.raises(ValueError, match="attribution"):
        infidelity(lin, x, 1, a[:1])


def test_max_sensitivity_bounds_on_a_linear_model():
    lin = _linear(side=3)
    x = _images(3, side=3) + 0.5
    assert float(max_sensitivity(lin, x, 0, input_gradient, radius=0.1).abs().max()) < 1e-12  # constant gradient
    # gradient x input: a(x + d) - a(x) = w * d, so the ratio is <= r |w| / |w * x| and close to it for many draws
    r = 0.1
    w = lin[1].weight[0].detach()
    bound = r * w.norm() / (w * x.flatten(1)).norm(dim=1)
    got = max_sensitivity(lin, x, 0, gradient_x_input, radius=r, n_samples=400, seed=2)
    assert bool((got <= bound + 1e-12).all() and (got >= 0.6 * bound).all()), (got, bound)
    assert torch.equal(got, max_sensitivity(lin, x, 0, gradient_x_input, radius=r, n_samples=400, seed=2))
    with pytest.raises(ValueError, match="radius"):
        max_sensitivity(lin, x, 0, input_gradient, radius=0.0)


def test_randomise_top_layers():
    cnn = vgg_cnn((3, 4), image_size=8).eval()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    rand = randomise_top_layers(cnn, 2, seed=0)
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in before.items())  # original untouched
    names = [n for n, m in cnn.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    changed = {n for n, m in rand.named_modules() if n in names and not torch.equal(m.weight, cnn.get_submodule(n).weight)}
    assert changed == set(names[-2:]) and not rand.training
    again = randomise_top_layers(cnn, 2, seed=0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in rand.state_dict().items())
    for bad in (0, len(names) + 1, True):
        with pytest.raises(ValueError, match="n_layers"):
            randomise_top_layers(cnn, bad)


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


def test_mean_ci_coverage():
    rng = np.random.default_rng(0)
    trials, n = 2000, 12
    covered = 0
    for _ in range(trials):
        mean, half = mean_ci(rng.normal(1.0, 2.0, n), level=0.9)
        covered += abs(mean - 1.0) <= half
    assert abs(covered / trials - 0.9) < 4 * math.sqrt(0.09 / trials)
    with pytest.raises(ValueError, match="values"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=1.0)

"""nbsupport.pullbacks against hand-written backward passes, brute-force pooling loops and Captum."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbsupport.attribution import guided_backprop
from nbsupport.models import mlp, small_resnet, vgg_cnn
from nbsupport.patterns import activation_patterns, path_correlation, relu_inputs
from nbsupport.pullbacks import (SoftMaxPool2d, excitation_pullback, pool_output_size, projected_gradient_ascent,
                                 softmax_pool2d, surrogate_gradients)
from nbsupport.saliency import input_gradient


def _images(n=3, c=1, side=12, seed=0):
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _eval(model, seed=0):
    torch.manual_seed(seed)
    model = model.double()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


# --- every way a ReLU or a max-pool can be called --------------------------------------------

RELU_CALLS = {
    "F.relu": lambda z: F.relu(z),
    "F.relu inplace": lambda z: F.relu(z, inplace=True),
    "F.relu positional inplace": lambda z: F.relu(z, True),
    "F.relu_": lambda z: F.relu_(z),
    "torch.relu": lambda z: torch.relu(z),
    "torch.relu_": lambda z: torch.relu_(z),
    "Tensor.relu": lambda z: z.relu(),
    "Tensor.relu_ (result unused)": lambda z: (z.relu_(), z)[1],
    "nn.ReLU": nn.ReLU(),
    "nn.ReLU(inplace=True)": nn.ReLU(inplace=True),
}


class _OneHidden(nn.Module):
    """f(x) = w2 . act(W1 x + b1) + b2, the activation called the given way."""

    def __init__(self, act, d=6, m=9, k=4):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(d, m), nn.Linear(m, k), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("call", list(RELU_CALLS))
def test_every_relu_call_path_gets_the_sigmoid_gate(call):
    torch.manual_seed(1)
    net = _OneHidden(RELU_CALLS[call]).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    T = 0.4
    z = net.fc1(x)
    expected = (torch.sigmoid(z / T) * net.fc2.weight[2]) @ net.fc1.weight  # hand-written backward
    with torch.no_grad():
        plain = net(x)
    with surrogate_gradients(net, T):
        with torch.no_grad():
            assert torch.equal(net(x), plain)  # forward exactly the same
    torch.testing.assert_close(excitation_pullback(net, x, 2, temperature=T), expected)
    gates = activation_patterns(net, x)
    assert len(gates) == 1 and torch.equal(gates[0], z > 0)


def test_mlp_pullback_equals_hand_written_backward():
    torch.manual_seed(0)
    net = mlp([5, 7, 6, 3]).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    T = 0.3
    for n in range(len(x)):  # plain loop over samples, explicit chain rule
        z1 = net[0](x[n])
        z2 = net[2](torch.relu(z1))
        v = net[4].weight[target[n]]
        v = (v * torch.sigmoid(z2 / T)) @ net[2].weight
        v = (v * torch.sigmoid(z1 / T)) @ net[0].weight
        torch.testing.assert_close(excitation_pullback(net, x, target, T)[n], v)


def test_small_temperature_gives_the_vanilla_gradient_away_from_kinks():
    torch.manual_seed(3)
    net = mlp([4, 16, 16, 3]).double()
    x = torch.randn(50, 4, dtype=torch.float64)
    with torch.no_grad():
        margin = min(float(z.abs().min()) for z in (net[0](x), net[2](torch.relu(net[0](x)))))
    T = margin / 40  # every gate within exp(-40) of the hard one
    torch.testing.assert_close(excitation_pullback(net, x, 1, T), input_gradient(net, x, 1), rtol=1e-12, atol=1e-12)
    # a CNN with max-pooling: generic inputs have no ties, the softmax routing tends to the argmax
    cnn = _eval(vgg_cnn((4, 6), image_size=16))
    xi = _images(4, side=16)
    far = excitation_pullback(cnn, xi, 3, temperature=1e-10)  # kinks closer than ~1e-8 are unlikely
    torch.testing.assert_close(far, input_gradient(cnn, xi, 3), rtol=1e-6, atol=1e-9)
    assert not torch.allclose(excitation_pullback(cnn, xi, 3, 0.3), input_gradient(cnn, xi, 3), atol=1e-3)


@pytest.mark.parametrize("call", list(RELU_CALLS))
def test_a_step_excitation_is_a_leaky_relu_backward(call):
    """excitation=1 above zero, alpha below: the backward pass of a LeakyReLU of slope alpha under
    a ReLU forward pass (Linse et al. 2024), written out by hand; every ReLU call path."""
    torch.manual_seed(2)
    net = _OneHidden(RELU_CALLS[call]).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    x[0, :] = 0.0
    net.fc1.bias.data[0] = 0.0  # a pre-activation exactly 0 counts as non-positive
    alpha = 0.3
    z = net.fc1(x).detach()
    expected = (torch.where(z > 0, 1.0, torch.full_like(z, alpha)) * net.fc2.weight[1]) @ net.fc1.weight
    step = excitation_pullback(net, x, 1, excitation=lambda u: torch.where(u > 0, 1.0, torch.full_like(u, alpha)))
    torch.testing.assert_close(step, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        plain = net(x)
    with surrogate_gradients(net, excitation=lambda u: torch.where(u > 0, 1.0, torch.full_like(u, alpha))):
        with torch.no_grad():
            assert torch.equal(net(x), plain)  # forward exactly the same
    other = excitation_pullback(net, x, 1, excitation=lambda u: torch.where(u > 0, 1.0, torch.full_like(u, 0.5)))
    assert not torch.allclose(other, step, atol=1e-3)  # another slope is another map
    # the default excitation passed explicitly is the default rule
    sig = excitation_pullback(net, x, 1, excitation=lambda u: torch.sigmoid(u / 0.4))
    torch.testing.assert_close(sig, excitation_pullback(net, x, 1, temperature=0.4))


def test_step_excitation_through_a_cnn_equals_a_leaky_backward_module_swap():
    """On a CNN with BatchNorm: the step excitation equals a straight-through LeakyReLU backward
    (relu forward, leaky_relu's derivative) swapped in for every nn.ReLU. No max-pooling: the
    pullback routes pooling softly, and with a leaky backward even the ties at 0 that a ReLU
    leaves in a window would matter."""
    cnn = _eval(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Conv2d(4, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                              nn.Flatten(), nn.Linear(6 * 5 * 5, 3)))
    x = _images(4, side=12)

    class LeakyBackward(nn.Module):
        def forward(self, z):
            leaky = F.leaky_relu(z, 0.3)
            return leaky + (torch.relu(z) - leaky).detach()

    swapped = __import__("copy").deepcopy(cnn)
    for i, child in enumerate(swapped):
        if isinstance(child, nn.ReLU):
            swapped[i] = LeakyBackward()
    step = excitation_pullback(cnn, x, 2, excitation=lambda u: torch.where(u > 0, 1.0, torch.full_like(u, 0.3)))
    torch.testing.assert_close(step, input_gradient(swapped, x, 2), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(step, input_gradient(cnn, x, 2), atol=1e-3)  # not the gradient


def test_excitation_bad_input():
    net = mlp([4, 5, 3]).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    for bad in (0.3, "sigmoid", torch.ones(5)):
        with pytest.raises(ValueError, match="excitation"):
            excitation_pullback(net, x, 0, excitation=bad)
    with pytest.raises(ValueError, match="excitation must map z to a tensor of z's shape"):
        excitation_pullback(net, x, 0, excitation=lambda u: u[:, :2])
    with pytest.raises(ValueError, match="excitation must map z"):
        excitation_pullback(net, x, 0, excitation=lambda u: 1.0)
    with pytest.raises(ValueError, match="dtype torch.float64"):  # float32 gates would round 0.3
        excitation_pullback(net, x, 0, excitation=lambda u: torch.where(u > 0, 1.0, 0.3))


# --- softmax pooling against brute force ------------------------------------------------------

POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=(2, 3)),
    dict(kernel_size=3, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), ceil_mode=True),
    dict(kernel_size=5, stride=1, padding=2, dilation=2),
    dict(kernel_size=2, stride=3, ceil_mode=True),
    dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1)),
]


def _brute_softmax_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, T=0.3, detach=False):
    """Per-window loop: positions that fall outside the input are skipped (max-pool's -inf padding);
    ``detach`` holds the softmax weights constant for autograd."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    k, p, d = pair(kernel_size), pair(padding), pair(dilation)
    s = k if stride is None else pair(stride)
    ref = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)  # output size from torch
    out = torch.zeros_like(ref)
    H, W = x.shape[-2:]
    for n, c, i, j in itertools.product(*map(range, ref.shape)):
        vals = [x[n, c, r, q] for a in range(k[0]) for b in range(k[1])
                for r, q in [(i * s[0] - p[0] + a * d[0], j * s[1] - p[1] + b * d[1])] if 0 <= r < H and 0 <= q < W]
        vals = torch.stack(vals)
        w = torch.softmax(vals / T, 0)
        out[n, c, i, j] = ((w.detach() if detach else w) * vals).sum()
    return out


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_softmax_pool_forward_and_surrogate_backward_match_a_loop(case):
    x = torch.randn(2, 2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    T = 0.7
    ref = _brute_softmax_pool(x, **case, T=T)
    torch.testing.assert_close(softmax_pool2d(x, **case, temperature=T), ref)
    torch.testing.assert_close(SoftMaxPool2d(**case, temperature=T)(x), ref)
    # surrogate backward of max-pooling == gradient of the brute-force soft pooling
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((_brute_softmax_pool(xr, **case, T=T) * g).sum(), xr)
    pool = nn.MaxPool2d(**case)

    class Probe(nn.Module):  # logit 0 of sample n: <pool(x)[n], g[n]>; logit 1: 0
        def forward(self, inp):
            score = (pool(inp) * g).sum((1, 2, 3))
            return torch.stack([score, torch.zeros_like(score)], 1)

    got = excitation_pullback(Probe(), x, 0, temperature=1.0, pool_temperature=T)
    assert torch.equal(pool(x), F.max_pool2d(x, **case))  # outside the context: untouched
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_detached_weights_rule_matches_a_loop(case):
    """The later pooling rule (softmax weights held constant) against autograd through the
    per-window loop with detached weights: as the VJP, as the routed max-pool's backward and in
    the pullback; its entries are >= 0 for a non-negative upstream gradient, unlike the default."""
    from nbsupport.pullbacks.softpool import softmax_pool2d_vjp, softmax_routed_max_pool2d

    x = torch.randn(2, 2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    T = 0.7
    g = torch.rand(F.max_pool2d(x, **case).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((_brute_softmax_pool(xr, **case, T=T, detach=True) * g).sum(), xr)
    torch.testing.assert_close(softmax_pool2d_vjp(x, g, **case, temperature=T, detach_weights=True), expected)
    xr = x.clone().requires_grad_(True)
    routed = softmax_routed_max_pool2d(xr, **case, temperature=T, detach_weights=True)
    assert torch.equal(routed, F.max_pool2d(x, **case))
    (got,) = torch.autograd.grad((routed * g).sum(), xr)
    torch.testing.assert_close(got, expected)
    pool = nn.MaxPool2d(**case)

    class Probe(nn.Module):
        def forward(self, inp):
            score = (pool(inp) * g).sum((1, 2, 3))
            return torch.stack([score, torch.zeros_like(score)], 1)

    pullback = excitation_pullback(Probe(), x, 0, temperature=1.0, pool_temperature=T, pool_detach_weights=True)
    torch.testing.assert_close(pullback, expected)
    assert float(expected.min()) >= 0.0
    full = excitation_pullback(Probe(), x, 0, temperature=1.0, pool_temperature=T)
    assert float(full.min()) < 0.0 and not torch.allclose(full, expected)  # the default rule is another one
    with pytest.raises(ValueError, match="pool_detach_weights"):
        excitation_pullback(Probe(), x, 0, pool_detach_weights=1)
    with pytest.raises(ValueError, match="detach_weights"):
        softmax_pool2d_vjp(x, g, **case, detach_weights="yes")


def test_surrogate_pool_covers_functional_calls_and_indices():
    x = _images(2, c=3, side=10)
    T = 0.5

    class Pools(nn.Module):
        def forward(self, inp):
            a, idx = F.max_pool2d(inp, 3, 2, 1, return_indices=True)
            b = torch.max_pool2d(inp, 2)
            c, _ = F.max_pool2d_with_indices(inp, 2, ceil_mode=True, stride=3)
            assert idx.dtype == torch.long
            return torch.stack([a.sum((1, 2, 3)), b.sum((1, 2, 3)), c.sum((1, 2, 3))], 1)

    model = Pools()
    with torch.no_grad():
        plain = model(x)
    with surrogate_gradients(model, 1.0, pool_temperature=T), torch.no_grad():
        assert torch.equal(model(x), plain)
    for k, args in enumerate([dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
                              dict(kernel_size=2, stride=3, ceil_mode=True)]):
        xr = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(softmax_pool2d(xr, **args, temperature=T).sum(), xr)
        torch.testing.assert_close(excitation_pullback(model, x, k, 1.0, pool_temperature=T), expected)


def test_pool_output_size_is_torchs():
    for size, k, s, p, d, ceil in itertools.product([5, 8, 13], [1, 2, 3], [1, 2, 3], [0, 1], [1, 2], [False, True]):
        if p > k // 2 or size + 2 * p < d * (k - 1) + 1:
            continue
        out = F.max_pool2d(torch.zeros(1, 1, size, 1), (k, 1), (s, 1), (p, 0), (d, 1), ceil_mode=ceil)
        assert pool_output_size(size, k, s, p, d, ceil) == out.shape[2]


def test_softmax_pool_limits_and_bad_input():
    x = _images(2, c=2, side=8)
    torch.testing.assert_close(softmax_pool2d(x, 2, temperature=1e-6), F.max_pool2d(x, 2))
    torch.testing.assert_close(softmax_pool2d(x, 2, temperature=1e6), F.avg_pool2d(x, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        softmax_pool2d(x, 2, temperature=0.0)
    with pytest.raises(ValueError, match="padding"):
        softmax_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="x must"):
        softmax_pool2d(x[0, 0], 2)


# --- the models: forward unchanged, restoration, functional ReLUs ----------------------------

def _snapshot(model):
    return dict(ids=[id(m) for m in model.modules()], state={k: v.clone() for k, v in model.state_dict().items()},
                grad_flags=[p.requires_grad for p in model.parameters()], training=[m.training for m in model.modules()],
                hooks=[(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for m in
                       model.modules()])


def _assert_restored(model, before):
    after = _snapshot(model)
    assert after["ids"] == before["ids"] and after["grad_flags"] == before["grad_flags"]
    assert after["training"] == before["training"] and after["hooks"] == before["hooks"]
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    assert not torch._C._is_torch_function_mode_enabled()


@pytest.mark.parametrize("make", [lambda: vgg_cnn((4, 6), image_size=16), lambda: small_resnet((4, 6), image_size=16)], ids=["vgg", "resnet"])
def test_forward_identical_and_model_restored(make):
    model = _eval(make())
    model[0].requires_grad_(False)  # a frozen part must stay frozen
    x = _images(4, side=16)
    before = _snapshot(model)
    vanilla = input_gradient(model, x, 1)
    with torch.no_grad():
        plain = model(x)
    with surrogate_gradients(model, 0.3):
        with torch.no_grad():
            assert torch.equal(model(x), plain)
        v = input_gradient(model, x, torch.tensor([0, 1, 2, 3]))
    _assert_restored(model, before)
    assert v.shape == x.shape and bool(v.isfinite().all())
    assert torch.equal(excitation_pullback(model, x, torch.tensor([0, 1, 2, 3])), v)
    assert not torch.equal(v, input_gradient(model, x, torch.tensor([0, 1, 2, 3])))  # the rules were active inside
    assert torch.equal(input_gradient(model, x, 1), vanilla)                          # and do not leak after exit
    with torch.no_grad():
        assert torch.equal(model(x), plain)


def test_restored_after_an_exception_inside_and_outside_the_forward_pass():
    model = _eval(small_resnet((4, 4), image_size=8))
    x = _images(2, side=8)
    before = _snapshot(model)

    def boom(module, args, output):
        raise KeyError("inside forward")

    handle = model[1].register_forward_hook(boom)
    before_with_hook = _snapshot(model)
    with pytest.raises(KeyError):
        with surrogate_gradients(model):
            model(x)
    _assert_restored(model, before_with_hook)
    handle.remove()
    _assert_restored(model, before)
    with pytest.raises(ZeroDivisionError):
        with surrogate_gradients(model):
            model(x)
            1 / 0
    _assert_restored(model, before)
    torch.testing.assert_close(excitation_pullback(model, x, 0, 1e-9), input_gradient(model, x, 0), rtol=1e-5,
                               atol=1e-8)


def test_small_resnet_uses_functional_relus_and_all_are_covered():
    model = _eval(small_resnet((4, 6), image_size=12))
    x = _images(3, side=12)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    gates = activation_patterns(model, x)
    assert len(relus) == 1 and len(gates) == 1 + 2 * 2  # stem + two ReLUs per block
    # a module-swap approach (here: hooks on nn.ReLU modules) sees only the stem
    seen = []
    handle = relus[0].register_forward_pre_hook(lambda module, args: seen.append((args[0] > 0).flatten(1)))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], gates[0])


def test_gates_and_relu_inputs_match_a_plain_forward_on_an_mlp():
    torch.manual_seed(0)
    net = mlp([5, 8, 7, 2]).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    z1 = net[0](x)
    z2 = net[2](torch.relu(z1))
    inputs = relu_inputs(net, x)
    assert len(inputs) == 2 and torch.equal(inputs[0], z1.detach()) and torch.equal(inputs[1], z2.detach())
    gates = activation_patterns(net, x)
    assert len(gates) == 2 and torch.equal(gates[0], z1 > 0) and torch.equal(gates[1], z2 > 0)


def test_relu_inputs_see_functional_and_in_place_relus():
    model = _eval(small_resnet((4, 6), image_size=12))
    x = _images(2, side=12)
    inputs = relu_inputs(model, x)
    assert len(inputs) == 1 + 2 * 2                      # stem, then two ReLU calls per block
    assert any(bool((z < 0).any()) for z in inputs)      # recorded before the in-place ReLU overwrote them


def test_unsupported_relatives_raise_naming_the_call():
    net = _OneHidden(lambda z: F.relu6(z)).double()
    with pytest.raises(NotImplementedError, match="relu6"):
        excitation_pullback(net, torch.randn(2, 6, dtype=torch.float64), 0)
    pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
    with pytest.raises(NotImplementedError, match="adaptive_max_pool2d"):
        excitation_pullback(pool, _images(2, c=3), 0)


def test_nesting_is_refused():
    net = mlp([3, 4, 2])
    with surrogate_gradients(net):
        with pytest.raises(RuntimeError, match="already"):
            with surrogate_gradients(net):
                pass


def test_bad_input():
    torch.manual_seed(0)
    net = mlp([4, 5, 3]).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    for bad in (0.0, -0.3, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="temperature"):
            excitation_pullback(net, x, 0, temperature=bad)
    for bad in (3, -1, torch.tensor([0, 1, 2, 3, 0, 5])):
        with pytest.raises(ValueError, match=r"target must lie in \[0, 3\)"):
            excitation_pullback(net, x, bad)
    for bad in (torch.tensor([0, 1]), torch.zeros(6), 1.5, True):
        with pytest.raises(ValueError, match="target"):
            excitation_pullback(net, x, bad)
    for bad in (x[0], torch.randn(6, 7, dtype=torch.float64), torch.zeros(6, 4, dtype=torch.long)):
        with pytest.raises(ValueError, match="x"):
            excitation_pullback(net, bad, 0)
    with pytest.raises(ValueError, match="model"):
        excitation_pullback(lambda t: t, x, 0)
    one = excitation_pullback(net, x, torch.tensor(1))  # a 0-d tensor target broadcasts
    torch.testing.assert_close(one, excitation_pullback(net, x, 1))


# --- guided backpropagation against Captum -----------------------------------------------------

def test_guided_backprop_matches_captum_on_module_relus_and_covers_functional_ones():
    from captum.attr import GuidedBackprop

    cnn = _eval(vgg_cnn((4, 6), image_size=12))
    for m in cnn.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # Captum's hooks refuse in-place ReLUs
    x = _images(3, side=12)
    target = torch.tensor([1, 4, 7])
    torch.testing.assert_close(guided_backprop(cnn, x, target), GuidedBackprop(cnn).attribute(x, target=target))
    # hand-written guided backward on a one-hidden-layer net with a functional ReLU
    torch.manual_seed(2)
    net = _OneHidden(lambda z: z.relu()).double()
    xs = torch.randn(4, 6, dtype=torch.float64)
    z = net.fc1(xs)
    expected = ((net.fc2.weight[1].clamp(min=0) * (z > 0)) @ net.fc1.weight)
    torch.testing.assert_close(guided_backprop(net, xs, 1), expected)
    # Captum leaves the block's functional ReLUs with the vanilla rule
    res = _eval(small_resnet((4, 6), image_size=12))
    ours = guided_backprop(res, x, target)
    theirs = GuidedBackprop(res).attribute(x, target=target)
    assert (ours - theirs).abs().max() > 1e-3 * ours.abs().max()


# --- projected gradient ascent -----------------------------------------------------------------

def test_projected_gradient_ascent_on_a_linear_model():
    w = torch.randn(1, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    linear = nn.Sequential(nn.Flatten(), nn.Linear(50, 2, bias=False)).double()
    with torch.no_grad():
        linear[1].weight.copy_(torch.cat([w.flatten(1), -w.flatten(1)]))
    x = torch.full((1, 2, 5, 5), 0.5, dtype=torch.float64)
    u = w / w.norm()
    # no constraint active: x + steps * step_size * u
    out = projected_gradient_ascent(linear, x, 0, steps=3, step_size=0.05, radius=10.0, bounds=(-10.0, 10.0),
                                    method="gradient")
    torch.testing.assert_close(out, x + 0.15 * u)
    # ball active, box inactive: x + radius * u
    out = projected_gradient_ascent(linear, x, 0, steps=5, step_size=1.0, radius=2.5, bounds=(-10.0, 10.0))
    torch.testing.assert_close(out, x + 2.5 * u)
    # both: inside the ball and the box
    out = projected_gradient_ascent(linear, x, torch.tensor([1]), steps=10, step_size=1.0, radius=2.0)
    assert (out - x).norm() <= 2.0 + 1e-12 and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="method"):
        projected_gradient_ascent(linear, x, 0, method="adam")
    with pytest.raises(ValueError, match="bounds"):
        projected_gradient_ascent(linear, x + 1, 0)
    with pytest.raises(ValueError, match="steps"):
        projected_gradient_ascent(linear, x, 0, steps=0)


def test_projected_gradient_ascent_raises_the_target_logit_on_a_cnn():
    torch.manual_seed(0)  # the weights, not only the BatchNorm statistics (the test no longer depends on order)
    cnn = _eval(vgg_cnn((4, 6), image_size=12))
    x = _images(4, side=12)
    for method in ("pullback", "gradient"):
        out = projected_gradient_ascent(cnn, x, 5, steps=4, step_size=0.3, radius=1.0, method=method)
        dist = (out - x).flatten(1).norm(dim=1)
        assert bool((dist <= 1.0 + 1e-9).all()) and out.min() >= 0 and out.max() <= 1
        with torch.no_grad():
            gain = cnn(out)[:, 5] - cnn(x)[:, 5]
        # the gradient is the steepest direction, so every image gains; the pullback is a surrogate
        # direction: on a random network it raises the logit on average, not on every image
        assert bool((gain > 0).all()) if method == "gradient" else float(gain.mean()) > 0


def test_models_shapes():
    x = torch.rand(2, 1, 28, 28)
    assert vgg_cnn((8, 16))(x).shape == (2, 10) and small_resnet((8, 16, 32))(x).shape == (2, 10)
    assert math.isclose(sum(isinstance(m, nn.MaxPool2d) for m in vgg_cnn((8, 16, 32)).modules()), 3)


def test_path_correlation_equals_the_correlation_of_the_explicit_tensor():
    import numpy as np

    g = torch.Generator().manual_seed(0)
    widths = (5, 6, 4)
    a = [torch.rand(5, m, generator=g) > 0.5 for m in widths]
    a[2][4] = False  # an all-off layer: the path tensor is constant
    b = [torch.rand(5, m, generator=g) for m in widths]  # soft gates
    b[0][0] = a[0][0].double()
    got = path_correlation(a, b)
    for n in range(5):
        ta = torch.einsum("i,j,k->ijk", *[t[n].double() for t in a]).flatten().numpy()
        tb = torch.einsum("i,j,k->ijk", *[t[n].double() for t in b]).flatten().numpy()
        expected = np.corrcoef(ta, tb)[0, 1] if ta.std() > 0 and tb.std() > 0 else math.nan
        np.testing.assert_allclose(float(got[n]), expected, rtol=1e-10)  # NaN == NaN here
    self_corr = path_correlation(a, a)
    constant = torch.stack([~t.any(1) for t in a]).any(0) | torch.stack([t.all(1) for t in a]).all(0)
    assert bool(constant[4]) and int(constant.sum()) < 5
    assert bool(self_corr[constant].isnan().all()) and torch.allclose(self_corr[~constant], torch.tensor(1.0).double())
    with pytest.raises(ValueError, match="gates_a"):
        path_correlation(a, b[:2])


def test_errors_that_are_not_about_x_pass_through():
    """Only a shape mismatch becomes "x does not fit the model"; out-of-memory and device errors
    reach the caller as they are."""
    from nbsupport.pullbacks import excitation_pullback

    class Failing(nn.Module):
        def __init__(self, message):
            super().__init__()
            self.linear, self.message = nn.Linear(4, 3), message

        def forward(self, x):
            raise RuntimeError(self.message)

    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="out of memory"):
        excitation_pullback(Failing("CUDA out of memory. Tried to allocate 2.00 GiB"), x, 0)
    with pytest.raises(RuntimeError, match="same device"):
        excitation_pullback(Failing("Expected all tensors to be on the same device, but found cpu and cuda:0"), x, 0)
    net = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="does not fit the model"):
        excitation_pullback(net, x, 0)  # 4 features into a layer that takes 5


def test_temperature_may_be_a_numpy_or_tensor_scalar():
    import numpy as np
    torch.manual_seed(0)
    net = mlp([4, 6, 3]).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    reference = excitation_pullback(net, x, 0, 0.3)
    for temperature in (np.float64(0.3), torch.tensor(0.3, dtype=torch.float64)):
        assert torch.equal(excitation_pullback(net, x, 0, temperature), reference)


# --- the package: nbsupport.pullbacks exports its parts' objects -------------------------------

def test_pullbacks_exports_its_parts():
    """Every name of nbsupport.pullbacks (DESIGN.md's) is the very object of the part that defines
    it, and names that live elsewhere (input gradient, gates) are not re-exported under a second
    address."""
    import nbsupport.pullbacks as pullbacks
    from nbsupport import attribution, intercept, patterns, saliency
    from nbsupport.pullbacks import ascent, imagenet, paths, softpool, surrogate

    homes = {}
    for module in (softpool, surrogate, saliency, intercept, patterns, attribution, ascent, imagenet, paths):
        for name in module.__all__:
            assert name not in homes, f"{name} is defined twice"
            homes[name] = getattr(module, name)
    design = ("excitation_pullback", "surrogate_gradients", "SoftMaxPool2d", "projected_gradient_ascent")
    for name in design + ("softmax_pool2d", "pool_output_size", "load_imagenet_checkpoint",
                          "remap_legacy_densenet_keys"):
        assert name in pullbacks.__all__, name
    for name in ("input_gradient", "check_target", "relu_inputs", "path_correlation", "gate_patterns"):
        assert not hasattr(pullbacks, name), name
    for name in pullbacks.__all__:
        assert getattr(pullbacks, name) is homes[name], name


def test_the_old_flat_modules_are_gone():
    """No shim is left at the flat paths the parts had before the package. Searched in the package's
    own directory: an editable install elsewhere (another checkout) may still hold the old files."""
    from importlib.machinery import PathFinder

    import nbsupport
    import nbsupport.pullbacks

    for name in ("softpool", "surrogate", "ascent", "imagenet"):
        assert PathFinder.find_spec(f"nbsupport.{name}", nbsupport.__path__) is None, name
        assert PathFinder.find_spec(f"nbsupport.pullbacks.{name}", nbsupport.pullbacks.__path__) is not None, name


def _imported_nbsupport_modules(path, package_parts):
    """The nbsupport modules that ``path`` imports (relative imports resolved), from its syntax tree."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = (node.module or "").split(".")
            else:
                base = package_parts[: len(package_parts) - node.level + 1] + (node.module or "").split(".")
            base = [p for p in base if p]
            if base[:1] == ["nbsupport"]:
                found.add(".".join(base))
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("nbsupport"))
    return found


def test_no_part_imports_a_module_that_imports_the_package_back():
    """The rule that keeps nbsupport.intercept and nbsupport.saliency outside the package: a part
    may import a top-level module only if that module never imports nbsupport.pullbacks (else
    importing the top-level module first would meet a half-initialised package)."""
    from pathlib import Path

    import nbsupport

    root = Path(nbsupport.__file__).parent
    top = {p.stem: p for p in root.glob("*.py") if p.stem != "__init__"}
    parts = sorted((root / "pullbacks").glob("*.py"))
    assert {p.stem for p in parts} >= {"__init__", "softpool", "surrogate", "ascent", "imagenet"}
    used_top = set()
    for part in parts:
        for name in _imported_nbsupport_modules(part, ["nbsupport", "pullbacks"]):
            pieces = name.split(".")
            if len(pieces) >= 2 and pieces[1] in top:
                used_top.add(pieces[1])
    assert {"intercept", "saliency"} <= used_top
    for stem in used_top:
        imported = _imported_nbsupport_modules(top[stem], ["nbsupport"])
        assert not any(n == "nbsupport.pullbacks" or n.startswith("nbsupport.pullbacks.") for n in imported), stem


@pytest.mark.parametrize("first", ["nbsupport.intercept", "nbsupport.saliency", "nbsupport.patterns",
                                   "nbsupport.attribution", "nbsupport.pullbacks.softpool",
                                   "nbsupport.pullbacks.surrogate", "nbsupport.pullbacks.ascent"])
def test_any_module_imports_first_in_a_fresh_interpreter(first):
    """An import cycle shows only when its modules are imported in the wrong order: start with each."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import nbsupport

    env = dict(os.environ, PYTHONPATH=str(Path(nbsupport.__file__).parent.parent))
    code = f"import {first}; import nbsupport.pullbacks as p; assert p.excitation_pullback"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_rules_as_functions():
    from nbsupport.pullbacks.softpool import softmax_pool2d_vjp, softmax_routed_max_pool2d
    from nbsupport.pullbacks.surrogate import surrogate_relu

    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    out = surrogate_relu(z, 0.2)
    assert torch.equal(out, torch.relu(z))
    grad = torch.randn(3, 7, dtype=torch.float64, generator=g)
    torch.testing.assert_close(torch.autograd.grad(out, z, grad)[0], grad * torch.sigmoid(z / 0.2))
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=g, requires_grad=True)
    pooled = softmax_routed_max_pool2d(x, 3, 2, 1, temperature=0.5)
    assert torch.equal(pooled, F.max_pool2d(x, 3, 2, 1))
    grad = torch.randn(pooled.shape, dtype=torch.float64, generator=g)
    torch.testing.assert_close(torch.autograd.grad(pooled, x, grad)[0],
                               softmax_pool2d_vjp(x.detach(), grad, 3, 2, 1, temperature=0.5))
    zi = z.detach().clone()
    with torch.no_grad():
        assert surrogate_relu(zi, inplace=True) is zi and bool((zi >= 0).all())
    with pytest.raises(ValueError, match="temperature"):
        surrogate_relu(z, 0.0)
    with pytest.raises(ValueError, match="padding_value"):
        softmax_routed_max_pool2d(x, 2, padding_value=1.0)


@pytest.fixture(params=[True, False], ids=["fused", "three-pass"])
def gate_route(request, monkeypatch):
    """Run a test on the fused kernel (when this torch passes the feature test) and on the forced
    fallback; yields a list that counts the calls of the three-pass route."""
    from nbsupport.pullbacks import surrogate

    if request.param and not surrogate._FUSED_GATE:
        pytest.skip("this torch has no usable aten::softplus_backward: only the fallback runs")
    monkeypatch.setattr(surrogate, "_FUSED_GATE", request.param)
    calls, three_pass = [], surrogate._three_pass_gate

    def counted(*args):
        calls.append(args[1].dtype)
        return three_pass(*args)

    monkeypatch.setattr(surrogate, "_three_pass_gate", counted)
    return request.param, calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_sigmoid_gate_to_the_last_bits(dtype, gate_route):
    """The surrogate ReLU's backward is sigmoid(z / T) * grad, on both routes (the fused kernel in
    float32/64 when the feature test passed, three passes otherwise): within a few units in the
    last place of scipy's logistic function, exactly 1 far above 0, negligible far below."""
    from scipy.special import expit

    from nbsupport.pullbacks.surrogate import surrogate_relu

    fused, calls = gate_route
    T = 0.3
    z = (torch.linspace(-150, 150, 20001, dtype=torch.float64) * T).to(dtype).requires_grad_(True)
    (gate,) = torch.autograd.grad(surrogate_relu(z, T), z, torch.ones_like(z))
    # the route taken: three passes unless fused and float32/64
    assert bool(calls) == (not fused or dtype == torch.bfloat16)
    x = z.detach().double() / T
    expected = torch.from_numpy(expit(x.numpy()))
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    assert gate.dtype == dtype
    # rounding z / T in the dtype moves exp(z / T) by up to |z / T| eps relative; then a few roundings
    assert bool(((gate.double() - expected).abs() <= (4 + x.abs()) * eps * expected + 2 * tiny).all())
    # an in-place ReLU keeps the gate from the forward pass: exactly the formula's value
    (kept,) = torch.autograd.grad(surrogate_relu(z * 1, T, inplace=True), z, torch.ones_like(z))
    assert torch.equal(kept, torch.sigmoid(z.detach() / T))
    far = x > 40  # sigmoid(40) rounds to 1 in every dtype here; the fused kernel passes grad unchanged there
    assert bool((gate[far] == 1).all()) and bool((gate[x < -110].double() < 1e-44).all())


def test_mlp_pullback_on_both_gate_routes(gate_route):
    """The pullback of a two-hidden-layer MLP against the chain rule written out per sample, with
    the gate as scipy's logistic function, on the fused route and on the forced fallback."""
    from scipy.special import expit

    fused, calls = gate_route
    torch.manual_seed(1)
    net = mlp([4, 6, 5, 3]).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 2, 1, 0])
    T = 0.3
    got = excitation_pullback(net, x, target, T)
    assert bool(calls) == (not fused)
    w = [net[i].weight.detach().numpy() for i in (0, 2, 4)]
    b = [net[i].bias.detach().numpy() for i in (0, 2)]
    for n in range(len(x)):
        z1 = w[0] @ x[n].numpy() + b[0]
        z2 = w[1] @ np.maximum(z1, 0) + b[1]
        v = ((w[2][target[n]] * expit(z2 / T)) @ w[1] * expit(z1 / T)) @ w[0]
        np.testing.assert_allclose(got[n].numpy(), v, rtol=1e-12, atol=1e-14)


def test_the_feature_test_accepts_only_the_formula():
    """_fused_gate_available answers True for an operator that computes grad * sigmoid(beta z)
    (saturating to grad above the threshold) and False for a missing, failing or wrong one."""
    from nbsupport.pullbacks.surrogate import _GATE_SATURATES, _fused_gate_available

    def formula(grad, z, beta, threshold):
        return grad * torch.where(z * beta > threshold, torch.ones_like(z), torch.sigmoid(z * beta))

    def raises(grad, z, beta, threshold):
        raise RuntimeError("schema changed")

    assert _GATE_SATURATES == 40.0
    assert _fused_gate_available(formula)
    assert not _fused_gate_available(lambda grad, z, beta, threshold: grad)  # the vanilla pass-through
    assert not _fused_gate_available(lambda grad, z, beta, threshold: grad * torch.sigmoid(z))  # beta ignored
    assert not _fused_gate_available(lambda grad, z, beta, threshold: formula(grad, z, beta, threshold).float())
    assert not _fused_gate_available(lambda grad, z, beta, threshold: formula(grad, z, beta, threshold)[:-1])
    assert not _fused_gate_available(raises)
    # the installed torch: the flag is what the probe of the real operator says
    from nbsupport.pullbacks import surrogate

    has_op = hasattr(torch.ops.aten, "softplus_backward")
    assert surrogate._FUSED_GATE == (has_op and _fused_gate_available(torch.ops.aten.softplus_backward))


def test_train_mode_is_refused_naming_the_fix():
    net = vgg_cnn((3, 4), image_size=8).double()  # a fresh module is in training mode
    x = _images(2, side=8)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        excitation_pullback(net, x, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError):
        projected_gradient_ascent(net, x, 0, steps=1)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # running stats untouched
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2)).double()
    with pytest.raises(ValueError, match="Dropout"):
        excitation_pullback(dropout, x, 0)
    excitation_pullback(dropout.eval(), x, 0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 2)).double()  # nothing mode-dependent
    torch.testing.assert_close(excitation_pullback(plain, x, 1, 1e-8), input_gradient(plain, x, 1))


class _FunctionalDropout(nn.Module):
    """Dropout called functionally (``F.dropout(x, p, self.training)``): no module to inspect."""

    def __init__(self, p=0.5):
        super().__init__()
        self.a, self.b, self.p = nn.Linear(64, 6), nn.Linear(6, 3), p

    def forward(self, x):
        return self.b(F.dropout(F.relu(self.a(x.flatten(1))), self.p, self.training))


def test_functional_training_calls_are_refused_during_the_forward_pass():
    """Dropout and batch norm in training mode are caught at the call (functional calls too),
    before it runs: the running statistics stay as they were and the model is restored; after
    model.eval() the same calls go through. allow_training=True lets them run."""
    torch.manual_seed(1)
    x = _images(3, side=8)
    net = _FunctionalDropout().double()  # training mode, and no Dropout module
    before = _snapshot(net)
    for call in (lambda: excitation_pullback(net, x, 0), lambda: guided_backprop(net, x, 0)):
        with pytest.raises(ValueError, match=r"dropout.*model\.eval\(\)"):
            call()
        _assert_restored(net, before)
    with surrogate_gradients(net, allow_training=True):  # random, but allowed when asked for
        assert input_gradient(net, x, 0).shape == x.shape
    net.eval()
    z = net.a(x.flatten(1)).detach()
    expected = (net.b.weight[0] * torch.sigmoid(z / 0.3)) @ net.a.weight  # no dropout in eval mode
    torch.testing.assert_close(excitation_pullback(net, x, 0).flatten(1), expected.detach())
    no_dropout = _FunctionalDropout(p=0.0).double()  # p = 0: nothing random, nothing refused
    excitation_pullback(no_dropout, x, 0)
    # batch norm: a module in training mode, and one without running statistics (batch
    # statistics even in eval mode, where check_eval_mode cannot see it)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    before = _snapshot(bn)
    with pytest.raises(ValueError, match="model.eval"):
        with surrogate_gradients(bn):
            input_gradient(bn, x, 0)
    _assert_restored(bn, before)  # the running statistics were not updated
    stateless = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6, track_running_stats=False),
                              nn.ReLU(), nn.Linear(6, 3)).double().eval()
    with pytest.raises(ValueError, match="track_running_stats"):
        excitation_pullback(stateless, x, 0)
    excitation_pullback(bn.eval(), x, 0)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_is_refused(reentrant):
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 7), nn.Linear(7, 3)

        def forward(self, x):  # a functional ReLU inside the checkpointed region, outside any submodule
            return self.b(checkpoint(lambda t: F.relu(self.a(t)), x.flatten(1), use_reentrant=reentrant))

    torch.manual_seed(0)
    net = Checkpointed().double().eval()
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64, requires_grad=False)
    before = _snapshot(net)
    with pytest.raises(ValueError, match="model uses activation checkpointing"):
        excitation_pullback(net, x, 0)
    _assert_restored(net, before)  # hooks removed, no mode left active, nothing routed any more
    with pytest.raises(ValueError, match="checkpoint"):
        guided_backprop(net, x, 0)
    _assert_restored(net, before)
    # nn.ReLU modules inside a checkpointed Sequential are refused as well
    from torch.utils.checkpoint import checkpoint_sequential

    seq = nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(),
                        nn.Linear(5, 3)).double().eval()

    class Sequentially(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = seq

        def forward(self, x):
            return checkpoint_sequential(self.seq, 2, x, use_reentrant=reentrant)

    wrapped = Sequentially()
    before = _snapshot(wrapped)
    with pytest.raises(ValueError, match="checkpoint"):
        excitation_pullback(wrapped, x.requires_grad_(True), 1)
    x.requires_grad_(False)
    _assert_restored(wrapped, before)
    torch.testing.assert_close(excitation_pullback(seq, x, 1, 1e-9), input_gradient(seq, x, 1))
    # the same network without checkpointing: the pullback is the soft-gated product (closed form)
    class Plain(Checkpointed):
        def forward(self, x):
            return self.b(F.relu(self.a(x.flatten(1))))

    plain = Plain().double().eval()
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        z = plain.a(x.flatten(1))
    expected = (plain.b.weight[0] * torch.sigmoid(z / 0.3)) @ plain.a.weight
    torch.testing.assert_close(excitation_pullback(plain, x, 0).flatten(1), expected)


class _Checkpointing(nn.Module):
    """Two functional ReLUs outside any submodule: run plainly, through torch.utils.checkpoint, or
    through selective activation checkpointing (every op marked for recomputation)."""

    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.c, self.how = nn.Linear(6, 7), nn.Linear(7, 5), nn.Linear(5, 3), how

    def body(self, h):
        return F.relu(self.b(F.relu(self.a(h))))

    def forward(self, x):
        from functools import partial

        from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,
                                            create_selective_checkpoint_contexts)
        h = x.flatten(1)
        if self.how == "none":
            return self.c(self.body(h))
        context_fn = None
        if self.how == "selective":
            def policy(ctx, op, *args, **kwargs):
                return CheckpointPolicy.PREFER_RECOMPUTE
            context_fn = partial(create_selective_checkpoint_contexts, policy)
        kwargs = {} if context_fn is None else {"context_fn": context_fn}
        return self.c(checkpoint(self.body, h, use_reentrant=False, **kwargs))


def test_selective_checkpointing_is_refused():
    """Selective activation checkpointing runs through torch.utils.checkpoint (its context_fn), so
    the routing sees checkpoint's frames and refuses, as for plain checkpointing."""
    torch.manual_seed(0)
    net = _Checkpointing("selective").double().eval()
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    before = _snapshot(net)
    with pytest.raises(ValueError, match="model uses activation checkpointing"):
        excitation_pullback(net, x, 0)
    _assert_restored(net, before)


@pytest.mark.slow
def test_torch_compile_keeps_the_rules_and_the_checkpoint_refusal():
    """torch.compile cannot bypass the routing: the rules are traced into the graph (the pullback and
    guided backpropagation of the compiled net equal the eager ones, also when the partitioner is
    told to recompute all it can, activation_memory_budget = 0: what it recomputes is the traced
    graph, rules included), and checkpointing inside a compiled net, plain or selective, is
    still refused. Backends without a C compiler: aot_eager, and aot_eager_decomp_partition (the
    min-cut rematerialising partitioner of inductor, without its code generation)."""
    import torch._functorch.config as functorch_config

    torch.manual_seed(0)
    eager = _Checkpointing("none").double().eval()
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    expected, guided = excitation_pullback(eager, x, 1), guided_backprop(eager, x, 1)
    saved_budget = functorch_config.activation_memory_budget
    try:
        for budget in (1.0, 0.0):
            functorch_config.activation_memory_budget = budget
            torch._dynamo.reset()
            compiled = torch.compile(eager, backend="aot_eager_decomp_partition")
            torch.testing.assert_close(excitation_pullback(compiled, x, 1), expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(guided_backprop(compiled, x, 1), guided, rtol=1e-12, atol=1e-12)
        for how in ("plain", "selective"):
            net = _Checkpointing(how).double().eval()
            net.load_state_dict(eager.state_dict())
            torch._dynamo.reset()
            with pytest.raises(ValueError, match="model uses activation checkpointing"):
                excitation_pullback(torch.compile(net, backend="aot_eager"), x, 1)
    finally:
        functorch_config.activation_memory_budget = saved_budget
        torch._dynamo.reset()


def test_surrogate_relu_module_trains_down_the_surrogate_gradient():
    """SurrogateReLU is relu forward and grad * sigmoid(z / T) backward (closed form, by hand for a
    one-hidden-layer net), its repr names T (so the weight cache tells it from nn.ReLU), and bad
    temperatures are refused."""
    from nbsupport.pullbacks import SurrogateReLU

    g = torch.Generator().manual_seed(9)
    lin1, lin2 = nn.Linear(5, 6).double(), nn.Linear(6, 3).double()
    net = nn.Sequential(lin1, SurrogateReLU(0.4), lin2)
    x = torch.randn(7, 5, dtype=torch.float64, generator=g)
    z = lin1(x).detach()
    out = net(x)
    torch.testing.assert_close(out, lin2(torch.relu(z)))
    out[:, 1].sum().backward()
    # d out_1 / d W1 = sum_n (w2[1] * sigmoid(z_n / T)) outer x_n, computed by hand
    gate = lin2.weight[1].detach() * torch.sigmoid(z / 0.4)
    torch.testing.assert_close(lin1.weight.grad, gate.T @ x)
    torch.testing.assert_close(lin1.bias.grad, gate.sum(0))
    # with nn.ReLU the same gradient is the hard-gated one: the two differ
    hard = (lin2.weight[1].detach() * (z > 0)).T @ x
    assert (lin1.weight.grad - hard).abs().max() > 1e-3
    assert "temperature=0.4" in repr(net) and repr(net) != repr(nn.Sequential(lin1, nn.ReLU(), lin2))
    zi = torch.randn(4, dtype=torch.float64, generator=g)
    with torch.no_grad():
        assert SurrogateReLU(0.3, inplace=True)(zi) is zi and bool((zi >= 0).all())
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            SurrogateReLU(bad)


def test_gated_value_mlp_on_its_own_gates_is_the_mlp():
    """GatedValueMLP given an mlp's own hard gates and that mlp's weights computes the mlp (the
    gates are its ReLUs); with all gates 1 it is the product of the affine maps (closed form);
    gates of another image change the output; bad widths and input shapes are refused."""
    from nbsupport.models import mlp
    from nbsupport.patterns import activation_patterns
    from nbsupport.pullbacks import GatedValueMLP

    torch.manual_seed(3)
    widths = [6, 5, 4, 3]
    net = mlp(widths).double().eval()
    value = GatedValueMLP(widths).double()
    for layer, linear in zip(value.layers, [m for m in net if isinstance(m, nn.Linear)]):
        layer.load_state_dict(linear.state_dict())
    x = torch.randn(8, 6, dtype=torch.float64)
    gates = torch.cat([g.double() for g in activation_patterns(net, x)], 1)
    assert value.n_gates == 9 and gates.shape == (8, 9)
    torch.testing.assert_close(value(torch.cat([x, gates], 1)), net(x))
    w = [layer.weight.detach() for layer in value.layers]
    b = [layer.bias.detach() for layer in value.layers]
    linear = ((x @ w[0].T + b[0]) @ w[1].T + b[1]) @ w[2].T + b[2]
    torch.testing.assert_close(value(torch.cat([x, torch.ones_like(gates)], 1)), linear)
    assert (value(torch.cat([x, gates.roll(1, 0)], 1)) - net(x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="inputs"):
        value(x)
    with pytest.raises(ValueError, match="widths"):
        GatedValueMLP([6, 3])
    with pytest.raises(ValueError, match="widths"):
        GatedValueMLP([6, 0, 3])


def test_frozen_gate_mlp_is_a_value_network_on_the_frozen_gates():
    """FrozenGateMLP starts as its gate model, equals GatedValueMLP on that model's gates, keeps
    the gates when trained (buffers, no parameters), and trains the same on every route."""
    from nbsupport.models import mlp, train, train_seeds
    from nbsupport.patterns import activation_patterns
    from nbsupport.pullbacks import FrozenGateMLP, GatedValueMLP

    torch.manual_seed(4)
    widths = [6, 5, 4, 3]
    net = mlp(widths).double().eval()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    frozen = FrozenGateMLP(net)
    torch.testing.assert_close(frozen(x), net(x), rtol=1e-14, atol=1e-14)  # starts as the MLP
    gates = torch.cat([g.double() for g in activation_patterns(net, x)], 1)
    torch.testing.assert_close(frozen.gates(x), gates, rtol=0, atol=0)
    assert [n for n, _ in frozen.named_parameters()] == [f"values.layers.{i}.{k}" for i in range(3)
                                                          for k in ("weight", "bias")]
    torch.manual_seed(9)
    fresh = GatedValueMLP(widths).double()
    other = FrozenGateMLP(net, values=fresh)
    torch.testing.assert_close(other(x), fresh(torch.cat([x, gates], 1)))
    # training moves the values, never the gates; the MLP itself is untouched
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train(frozen, (x, y), epochs=3, lr=0.05, batch_size=16, cache=False, progress=False)
    torch.testing.assert_close(frozen.gates(x), gates, rtol=0, atol=0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert (frozen.values.layers[0].weight - net[0].weight).abs().max() > 1e-3
    # the null: the same training of the MLP itself lets the gates move
    free = mlp(widths).double()
    free.load_state_dict(before)
    train(free, (x, y), epochs=3, lr=0.05, batch_size=16, cache=False, progress=False)
    moved = torch.cat([g.double() for g in activation_patterns(free.eval(), x)], 1)
    assert (moved != gates).any()
    # vmap over seeds (buffers stacked per seed) = the loop, in float64
    nets = {s: (torch.manual_seed(s), mlp(widths).double())[1] for s in (0, 1)}
    kwargs = dict(epochs=2, lr=0.05, batch_size=16, cache=False, progress=False)
    vm = train_seeds(lambda s: FrozenGateMLP(nets[s]), (x, y), [0, 1], method="vmap", **kwargs)
    loop = train_seeds(lambda s: FrozenGateMLP(nets[s]), (x, y), [0, 1], method="loop", **kwargs)
    for (a, _), (b, _) in zip(vm, loop):
        for k, v in a.state_dict().items():
            assert (v - b.state_dict()[k]).abs().max() < 1e-10
    # bad input
    for bad in (nn.Linear(6, 3), mlp([6, 3]), mlp(widths, bias=False), mlp(widths, activation=nn.Tanh), "mlp"):
        with pytest.raises(ValueError, match="gate_model"):
            FrozenGateMLP(bad)
    with pytest.raises(ValueError, match="values"):
        FrozenGateMLP(net, values=GatedValueMLP([6, 5, 3]))
    with pytest.raises(ValueError, match="x must have shape"):
        frozen(torch.randn(4, 5, dtype=torch.float64))

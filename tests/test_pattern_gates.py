"""nbsupport.patterns.gates (the gate reader and local affine maps) against layer-by-layer loops and autograd."""

import copy

import pytest
import torch
from torch import nn

from nbsupport.models import mlp, small_resnet, vgg_cnn
from nbsupport.patterns import activation_patterns, relu_inputs


def test_activation_patterns_of_an_mlp_by_hand():
    torch.manual_seed(0)
    net = mlp([3, 6, 5, 2])
    x = torch.randn(50, 3)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    gates = activation_patterns(net, x)
    z1 = x @ net[0].weight.T + net[0].bias
    z2 = torch.relu(z1) @ net[2].weight.T + net[2].bias
    assert len(gates) == 2 and torch.equal(gates[0], z1 > 0) and torch.equal(gates[1], z2 > 0)
    assert net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not any(m._forward_pre_hooks for m in net.modules())


class Nested(nn.Module):
    """ReLUs in a tree (one in-place, one inside a child), and a convolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.block = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(2 * 4 * 4, 3), nn.ReLU())

    def forward(self, x):
        return self.head(self.block(self.conv(x)))


def test_activation_patterns_nested_and_inplace():
    torch.manual_seed(0)
    model = Nested()
    x = torch.randn(7, 1, 6, 6)
    gates = activation_patterns(model, x)
    conv = model.conv(x)
    assert torch.equal(gates[0], (conv > 0).reshape(7, -1))  # read before the in-place ReLU
    assert torch.equal(gates[1], model.head[0](torch.relu(conv).reshape(7, -1)) > 0)


def test_activation_patterns_errors_remove_hooks():
    net = mlp([3, 4, 2])
    with pytest.raises(ValueError, match="does not fit the model"):
        activation_patterns(net, torch.randn(5, 7))  # wrong input width
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())
    assert not torch._C._is_torch_function_mode_enabled()
    with pytest.raises(ValueError, match="ReLU"):
        activation_patterns(nn.Linear(2, 2), torch.randn(3, 2))
    for bad in (torch.zeros(3, 3, dtype=torch.long), torch.zeros(3)):
        with pytest.raises(ValueError, match="x must"):
            relu_inputs(net, bad)
    with pytest.raises(ValueError, match="model"):
        relu_inputs(lambda t: t, torch.zeros(3, 3))


def test_activation_patterns_leave_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    activation_patterns(model, torch.randn(16, 3) + 5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def _assert_untouched(model, before):
    state, modes = before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())   # running stats, batch counter
    assert [m.training for m in model.modules()] == modes
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert not torch._C._is_torch_function_mode_enabled()


def _random_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


def _loop_vgg(model, x):
    """vgg_cnn's stages module by module: record the input of every ReLU."""
    zs, h = [], x
    for module in model[0]:
        if isinstance(module, nn.ReLU):
            zs.append(h.clone())
        h = module(h)
    return zs


def _loop_resnet18(m, x):
    """torchvision's ResNet-18 written out: the stem, then two ReLU calls per basic block."""
    zs = [m.bn1(m.conv1(x))]
    h = m.maxpool(torch.relu(zs[-1]))
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for block in layer:
            identity = h if block.downsample is None else block.downsample(h)
            zs.append(block.bn1(block.conv1(h)))
            zs.append(block.bn2(block.conv2(torch.relu(zs[-1]))) + identity)
            h = torch.relu(zs[-1])
    return zs


def _resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return _random_batchnorm(torchvision.models.resnet18(weights=None, num_classes=5)).double()


@pytest.mark.parametrize("arch", ["mlp", "vgg", "resnet18"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_gate_reader_matches_a_layer_by_layer_loop(arch, train):
    """Both readers (relu_inputs and activation_patterns) against a plain forward
    loop on a copy, in eval mode (running statistics) and in train mode (batch statistics); the
    model's buffers and modes are untouched afterwards."""
    g = torch.Generator().manual_seed(1)
    if arch == "mlp":
        torch.manual_seed(0)
        model, x = mlp([5, 8, 7, 3]).double(), torch.randn(20, 5, dtype=torch.float64, generator=g)
        loop = lambda m, inp: [m[0](inp), m[2](torch.relu(m[0](inp)))]  # noqa: E731
    elif arch == "vgg":
        torch.manual_seed(0)
        model = _random_batchnorm(vgg_cnn((4, 6), image_size=12)).double()
        x, loop = torch.rand(6, 1, 12, 12, dtype=torch.float64, generator=g), _loop_vgg
    else:
        model, x, loop = _resnet18(), torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=g), _loop_resnet18
    model.train(train)
    with torch.no_grad():
        expected = [z.reshape(len(x), -1) for z in loop(copy.deepcopy(model), x)]
    before = _state(model)
    inputs, gates = relu_inputs(model, x), activation_patterns(model, x)
    _assert_untouched(model, before)
    assert len(inputs) == len(gates) == len(expected) == {"mlp": 2, "vgg": 4, "resnet18": 17}[arch]
    for z, a, ref in zip(inputs, gates, expected):
        assert torch.equal(z, ref) and torch.equal(a, ref > 0)
    assert any(bool((z < 0).any()) for z in inputs)  # read before the in-place ReLUs overwrote them


def test_the_old_readers_no_longer_diverge():
    """Before the merge, pullbacks.relu_inputs ran a train-mode BatchNorm as it was (updating its
    running statistics) and saw functional ReLUs, while patterns.activation_patterns restored the
    buffers and saw nn.ReLU modules only. Now every name reads the same gates the same way."""
    torch.manual_seed(0)
    model = _random_batchnorm(small_resnet((4, 6), image_size=12)).train()
    x = torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(2)) + 3   # far from the running mean
    before = _state(model)
    gates = activation_patterns(model, x)
    _assert_untouched(model, before)
    # one nn.ReLU module (the stem), four functional calls in the blocks: all five are read
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1 and len(gates) == 5
    for a, z in zip(gates, relu_inputs(model, x), strict=True):
        assert torch.equal(a, z > 0)
    _assert_untouched(model, before)
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        stem = copy_[0][1](copy_[0][0](x))                # train mode: the batch's statistics
    assert torch.equal(gates[0], (stem > 0).flatten(1))
    assert not torch.equal(copy_[0][1].running_mean, model[0][1].running_mean)  # a plain pass updates them


def test_gate_reader_restores_the_model_after_an_error():
    torch.manual_seed(0)
    model = _random_batchnorm(vgg_cnn((4, 6), image_size=12)).train()
    model[0][1].eval()  # mixed modes are kept as they are
    before = _state(model)

    def boom(module, args, output):
        raise KeyError("inside forward")

    handle = model[0][4].register_forward_hook(boom)   # after a training-mode BatchNorm has run
    with pytest.raises(KeyError):
        relu_inputs(model, torch.rand(4, 1, 12, 12))
    handle.remove()
    _assert_untouched(model, before)


def test_local_affine_maps_against_autograd():
    """J is the Jacobian (torch.func.jacrev, an independent route) and f(x) = J x + c on the sample's own pattern."""
    from torch.func import jacrev, vmap

    from nbsupport.patterns import local_affine_maps
    torch.manual_seed(0)
    model = mlp([3, 7, 5, 2]).double()
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac, offset = local_affine_maps(model, x)
    torch.testing.assert_close(jac, vmap(jacrev(model))(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.einsum("noj,nj->no", jac, x) + offset, model(x).detach(), rtol=1e-12, atol=1e-12)
    # another sample's pattern gives another affine piece, which does not reproduce f at x
    gates = activation_patterns(model, x)
    other = [g.roll(1, 0) for g in gates]
    changed = torch.stack([(g != o).any(1) for g, o in zip(gates, other)]).any(0)
    jac_o, offset_o = local_affine_maps(model, x, gates=other)
    error = (torch.einsum("noj,nj->no", jac_o, x) + offset_o - model(x).detach()).abs().amax(1)
    assert changed.sum() > 10 and (error[changed] > 1e-6).float().mean() > 0.5
    assert error[~changed].max() < 1e-12


def test_local_affine_maps_keeps_dtype_and_rejects_other_models():
    from nbsupport.patterns import local_affine_maps
    torch.manual_seed(0)
    model = mlp([2, 4, 1])
    jac, offset = local_affine_maps(model, torch.randn(5, 2))
    assert jac.shape == (5, 1, 2) and offset.shape == (5, 1) and jac.dtype == torch.float32
    gates = activation_patterns(model, torch.randn(5, 2))   # imposed gates: x only gives N, dtype, device
    assert local_affine_maps(model, torch.randn(5, 2, dtype=torch.float64), gates)[0].dtype == torch.float64
    with pytest.raises(ValueError, match="model"):
        local_affine_maps(nn.Sequential(nn.Linear(2, 3), nn.Tanh()), torch.randn(5, 2))
    with pytest.raises(ValueError, match="gates"):
        local_affine_maps(model, torch.randn(5, 2), gates=[torch.ones(4, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match="x"):
        local_affine_maps(model, torch.randn(5, 3))


def test_gate_reader_lets_relu_relatives_run():
    """Reading gates needs no backward rule: relu6 and adaptive max-pooling (which the excitation rules
    refuse) run as usual and only the true ReLU calls are read."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU6(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(5, 1, 8, 8)
    gates = activation_patterns(model, x)
    with torch.no_grad():
        z = model[2](model[1](model[0](x)))
    assert len(gates) == 1 and torch.equal(gates[0], (z > 0).flatten(1))


def test_gate_reader_runs_inside_surrogate_gradients_and_leaves_the_pullback_alone():
    from nbsupport.pullbacks.surrogate import excitation_pullback, surrogate_gradients

    torch.manual_seed(0)
    net = vgg_cnn((4, 8)).double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    outside = activation_patterns(net, x)
    pullback = excitation_pullback(net, x, 1)
    with surrogate_gradients(net):  # was: RuntimeError "rules are already routed on this model"
        inside = activation_patterns(net, x)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(xg)[:, 1].sum(), xg)
    assert len(inside) == len(outside) and all(torch.equal(a, b) for a, b in zip(inside, outside))
    torch.testing.assert_close(grad, pullback, rtol=0, atol=0)  # the surrogate rules still apply
    torch.testing.assert_close(excitation_pullback(net, x, 1), pullback, rtol=0, atol=0)


@pytest.mark.parametrize("batch", [4, 5])  # 4: the parameter's first axis is as long as the batch
def test_a_relu_of_a_parameter_is_not_a_gate(batch):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 4)
            self.scale, self.mix = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4, 4))
            self.register_buffer("offset", torch.randn(4))

        def forward(self, x):
            h = torch.relu(self.linear(x)) * torch.relu(self.scale) + torch.relu(self.offset)
            return h @ torch.relu(self.mix)

    x = torch.randn(batch, 3)
    model = Scaled()
    gates = activation_patterns(model, x)
    with torch.no_grad():  # as a plotting helper calls it
        assert all(torch.equal(a, b) for a, b in zip(activation_patterns(model, x), gates))
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(activation_patterns(model, x), gates))
    assert [tuple(g.shape) for g in gates] == [(batch, 4)]
    assert torch.equal(gates[0], model.linear(x) > 0)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_the_three_gated_mlps_agree():
    """Issue 25: the gated MLP is written three times for three jobs (batched affine maps here, the
    polyhedron and its map in nbsupport.orthant.regions, the forward pass with any gates in
    nbsupport.gating). With one imposed pattern per sample (another sample's, so not the inputs' own)
    they must give the same map: J x + c == gated_forward(x), (J, c) == region(...)'s (J, c)."""
    from nbsupport.gating import gated_forward
    from nbsupport.orthant.regions import mlp_layers, region
    from nbsupport.patterns import local_affine_maps

    torch.manual_seed(0)
    model = mlp([3, 6, 5, 2]).double()
    x = torch.randn(9, 3, dtype=torch.float64)
    own = activation_patterns(model, x)
    imposed = [g[torch.roll(torch.arange(len(x)), 1)] for g in own]      # sample n gets sample n-1's
    assert any(not torch.equal(a, b) for a, b in zip(own, imposed))
    jac, offset = local_affine_maps(model, x, imposed)
    forward = gated_forward(model, x, [g.double() for g in imposed])
    torch.testing.assert_close(torch.einsum("noi,ni->no", jac, x) + offset, forward, rtol=1e-12, atol=1e-12)
    weights, biases = mlp_layers(model)
    for n in range(len(x)):
        _, _, J, c = region(weights, biases, torch.cat([g[n] for g in imposed]).numpy())
        torch.testing.assert_close(jac[n], torch.from_numpy(J), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(offset[n], torch.from_numpy(c), rtol=1e-12, atol=1e-12)


class _Colliding(nn.Module):
    """One gate (the hidden layer) beside ReLUs of functions of x that are not gates: of the mean
    over the batch (shape (d,)) and of a (4,)-shaped parameter times a scalar of x (shape (4,))."""

    def __init__(self, d):
        super().__init__()
        self.linear, self.w = nn.Linear(d, 4), nn.Parameter(torch.randn(4))

    def forward(self, x):
        h = torch.relu(self.linear(x))
        mean = torch.relu(x.mean(0))                      # first axis d: collides when d == N
        scaled = torch.relu(self.w * x.sum())             # first axis 4: collides when N == 4
        return h + mean.sum() + scaled.sum()


@pytest.mark.parametrize("batch, d", [(4, 4), (4, 3), (3, 3), (2, 2), (3, 2), (1, 1), (1, 4), (5, 5)])
def test_only_calls_whose_first_axis_follows_the_batch_are_gates(batch, d):
    """Issue 25: the reader used to keep every x-dependent call whose first axis had length N, so
    with N == d (x.mean(0)) or N == 4 (the parameter's length) it listed non-gates as gates.
    Batch sizes that collide with both, and ones that do not; the gates against a plain forward."""
    torch.manual_seed(batch * 10 + d)
    model, x = _Colliding(d), torch.randn(batch, d)
    gates = activation_patterns(model, x)
    assert [tuple(g.shape) for g in gates] == [(batch, 4)]
    assert torch.equal(gates[0], model.linear(x) > 0)
    (z,) = relu_inputs(model, x)
    torch.testing.assert_close(z, model.linear(x), rtol=0, atol=0)


def test_an_empty_batch_is_refused_naming_x():
    with pytest.raises(ValueError, match="x must hold at least one sample"):
        activation_patterns(mlp([3, 5, 4, 2]), torch.zeros(0, 3))


def test_a_model_with_batch_dependent_relu_calls_is_refused():
    class PerRow(nn.Module):  # one ReLU call per row, at most three: a count that follows N
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x):
            return torch.stack([torch.relu(self.linear(x))[i] for i in range(min(len(x), 3))])

    with pytest.raises(ValueError, match="3 ReLU calls on a batch of 4 and 2 on a batch of 2"):
        activation_patterns(PerRow(), torch.randn(4, 3))


def test_the_batch_check_leaves_the_global_random_state_as_one_forward_pass_does():
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2), nn.ReLU())
    model.train()
    x = torch.randn(8, 3)
    torch.manual_seed(7)
    activation_patterns(model, x)
    after_reader = torch.random.get_rng_state()
    torch.manual_seed(7)
    with torch.no_grad():
        model(x)
    assert torch.equal(after_reader, torch.random.get_rng_state())

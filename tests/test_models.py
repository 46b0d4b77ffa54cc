"""nbsupport.models: the MLP against a hand-written forward pass, and the cached training loop."""

import numpy as np
import pytest
import torch
from torch import nn

from nbsupport.models import config_hash, evaluate, mlp, train


def test_mlp_structure_and_forward():
    torch.manual_seed(0)
    net = mlp([3, 5, 4, 2])
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert net[1] is not net[3]  # one module per layer, so hooks can tell layers apart
    x = torch.randn(10, 3)
    h = x
    for lin in (net[0], net[2]):  # reference: x W^T + b, then relu, by hand
        h = torch.clamp(h @ lin.weight.T + lin.bias, min=0)
    expected = h @ net[4].weight.T + net[4].bias
    torch.testing.assert_close(net(x), expected)


def test_mlp_variants():
    assert len(mlp([4, 2])) == 1
    net = mlp([2, 3, 1], activation=nn.Tanh, bias=False)
    assert isinstance(net[1], nn.Tanh) and net[0].bias is None


@pytest.mark.parametrize("widths", [[3], [], [3, 0, 1], [3, 2.5, 1], [True, 2]])
def test_mlp_bad_widths(widths):
    with pytest.raises(ValueError, match="widths"):
        mlp(widths)


def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + torch.stack([2.0 * y - 1, torch.zeros(n)], dim=1)
    return x, y


def _net(seed=0):
    torch.manual_seed(seed)
    return mlp([2, 16, 2])


def test_config_hash_sees_weights_data_and_settings():
    x, y = _blobs()
    net = _net()
    base = config_hash(net, [x, y], lr=1e-3)
    assert base == config_hash(net, [x, y], lr=1e-3)
    assert base != config_hash(net, [x, y], lr=1e-2)
    assert base != config_hash(net, [x[:-1], y[:-1]], lr=1e-3)
    assert base != config_hash(_net(seed=1), [x, y], lr=1e-3)


def test_evaluate_matches_a_manual_count():
    x, y = _blobs()
    net = _net()
    loss, acc = evaluate(net, x, y, batch_size=50)
    out = net(x)
    assert acc == pytest.approx((out.argmax(1) == y).double().mean().item())
    assert loss == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-5)
    assert net.training  # mode restored


@pytest.mark.slow
def test_train_learns_checkpoints_and_is_deterministic(tmp_path):
    x, y = _blobs()
    net = _net()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    res = train(net, (x, y), epochs=20, lr=0.02, batch_size=32, test_data=_blobs(seed=1),
                checkpoints=[0, 10, 20], cache=False, progress=False)
    assert [r["epoch"] for r in res.history] == list(range(1, 21))
    assert res.history[-1]["loss"] < 0.5 * res.history[0]["loss"]
    assert res.history[-1]["test_accuracy"] > 0.95  # well-separated blobs
    assert sorted(res.checkpoints) == [0, 10, 20]
    for k in init:
        assert torch.equal(res.checkpoints[0][k], init[k])
        assert torch.equal(res.checkpoints[20][k], net.state_dict()[k])
    again = _net()
    train(again, (x, y), epochs=20, lr=0.02, batch_size=32, cache=False, progress=False)
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_train_cache_roundtrip(tmp_path):
    x, y = _blobs()
    first = _net()
    res1 = train(first, (x, y), epochs=3, checkpoints=[1], cache_dir=tmp_path, progress=False)
    assert not res1.from_cache and (tmp_path / f"{res1.key}.pt").is_file()
    second = _net()  # same initial weights, same configuration: loaded, not trained
    res2 = train(second, (x, y), epochs=3, checkpoints=[1], cache_dir=tmp_path, progress=False)
    assert res2.from_cache and res2.key == res1.key and res2.history == res1.history
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k])
        assert torch.equal(res1.checkpoints[1][k], res2.checkpoints[1][k])
    third = _net()  # another configuration: a new key, trained again
    res3 = train(third, (x, y), epochs=4, cache_dir=tmp_path, progress=False)
    assert not res3.from_cache and res3.key != res1.key


@pytest.mark.parametrize("kwargs, word", [(dict(epochs=0), "epochs"), (dict(epochs=1, lr=0.0), "lr"),
                                          (dict(epochs=1, batch_size=0), "batch_size"),
                                          (dict(epochs=1, weight_decay=-1.0), "weight_decay"),
                                          (dict(epochs=2, checkpoints=[3]), "checkpoints")])
def test_train_bad_arguments(kwargs, word):
    x, y = _blobs()
    with pytest.raises(ValueError, match=word):
        train(_net(), (x, y), cache=False, progress=False, **kwargs)
    with pytest.raises(ValueError, match="data"):
        train(_net(), (x, y[:-1]), epochs=1, cache=False, progress=False)


def test_init_normal_variances():
    from nbsupport.models import init_normal_
    net = init_normal_(mlp([400, 300, 200]), C_W=2.0, C_b=0.5, seed=0)
    for layer in (net[0], net[2]):  # sample variances within 5 standard errors of the target
        w = layer.weight.detach().double()
        target = 2.0 / layer.in_features
        assert abs(w.var().item() - target) < 5 * target * (2 / w.numel()) ** 0.5
        assert abs(layer.bias.detach().double().var().item() - 0.5) < 5 * 0.5 * (2 / layer.bias.numel()) ** 0.5
    again = init_normal_(mlp([400, 300, 200]), C_W=2.0, C_b=0.5, seed=0)
    assert torch.equal(net[0].weight, again[0].weight)
    with pytest.raises(ValueError, match="C_W"):
        init_normal_(net, C_W=-1.0)
    # the rng rule: an int seeds a private generator (the same draws as torch.Generator().manual_seed),
    # a torch or numpy generator is used and advanced, None is refused
    g = torch.Generator().manual_seed(0)
    expected = torch.randn(net[0].weight.shape, generator=g, dtype=torch.float64) * (2.0 / 400) ** 0.5
    torch.testing.assert_close(net[0].weight, expected.float())
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a = init_normal_(mlp([4, 3, 2]), C_W=1.0, seed=g1)[0].weight.clone()
    assert torch.equal(a, init_normal_(mlp([4, 3, 2]), C_W=1.0, seed=g2)[0].weight)
    assert not torch.equal(a, init_normal_(mlp([4, 3, 2]), C_W=1.0, seed=g1)[0].weight)
    init_normal_(mlp([4, 3, 2]), C_W=1.0, seed=np.random.default_rng(0))
    for bad in (None, -1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            init_normal_(net, C_W=1.0, seed=bad)


def test_train_with_sgd(tmp_path):
    x, y = _blobs()
    res = train(_net(), (x, y), epochs=10, lr=0.05, optimizer="sgd", cache_dir=tmp_path, progress=False)
    assert res.history[-1]["loss"] < 0.5 * res.history[0]["loss"]
    adam = train(_net(), (x, y), epochs=10, lr=0.05, cache_dir=tmp_path, progress=False)
    assert adam.key != res.key
    with pytest.raises(ValueError, match="optimizer"):
        train(_net(), (x, y), epochs=1, optimizer="lbfgs", cache=False, progress=False)


def test_cache_key_tells_losses_apart_and_handles_batchnorm():
    from nbsupport.models import callable_key
    square, absolute = (lambda out, y: (out - y).pow(2).mean()), (lambda out, y: (out - y).abs().mean())
    assert callable_key(square) != callable_key(absolute)  # two lambdas, same qualified name

    def scaled(c):
        return lambda out, y: c * (out - y).pow(2).mean()
    assert callable_key(scaled(1.0)) != callable_key(scaled(2.0))  # closures over different values
    import functools
    assert callable_key(functools.partial(F_cross_entropy, label_smoothing=0.1)) == \
        callable_key(functools.partial(F_cross_entropy, label_smoothing=0.1))
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))  # 0-d buffer inside
    x, y = _blobs()
    assert config_hash(net, [x, y]) == config_hash(net, [x, y])


F_cross_entropy = nn.functional.cross_entropy


def test_cache_key_sees_referenced_names_and_globals():
    """Regression (issue 16): the two lambdas below have the same bytecode and constants; only the
    attribute they read differs, and train() used to load one's weights for the other."""
    from nbsupport.models import callable_key
    F = nn.functional
    ce, nll = (lambda o, t: F.cross_entropy(o, t)), (lambda o, t: F.nll_loss(o, t))
    assert ce.__code__.co_code == nll.__code__.co_code  # what the old key looked at is identical
    assert callable_key(ce) != callable_key(nll)
    # a global read by the function enters the key through its value
    namespace = {"scale": 1.0}
    exec("def loss(o, t):\n    return scale * (o - t).pow(2).mean()", namespace)
    before = callable_key(namespace["loss"])
    namespace["scale"] = 2.0
    assert callable_key(namespace["loss"]) != before
    # loss modules: settings count, addresses do not
    assert callable_key(nn.CrossEntropyLoss(label_smoothing=0.1)) != callable_key(nn.CrossEntropyLoss())
    assert callable_key(nn.CrossEntropyLoss()) == callable_key(nn.CrossEntropyLoss())


@pytest.mark.slow
def test_cache_key_is_the_same_in_another_process():
    """No memory address (e.g. of a nested code object) may enter the key."""
    import subprocess
    import sys
    src = ("import torch.nn.functional as F\nfrom nbsupport.models import callable_key\n"
           "def outer(o, t):\n    inner = lambda u: F.cross_entropy(u, t)\n    return inner(o)\n"
           "print(callable_key(outer))")
    keys = {subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(keys) == 1 and "0x" not in keys.pop()


def test_train_does_not_reuse_weights_across_losses(tmp_path):
    x, y = _blobs()
    F = nn.functional
    first = train(_net(), (x, y), epochs=1, loss_fn=lambda o, t: F.cross_entropy(o, t), cache_dir=tmp_path,
                  progress=False)
    second = train(_net(), (x, y), epochs=1, loss_fn=lambda o, t: F.nll_loss(o, t), cache_dir=tmp_path,
                   progress=False)
    assert first.key != second.key and not second.from_cache


def test_weight_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NBSUPPORT_WEIGHTS", str(tmp_path / "cold"))
    x, y = _blobs()
    result = train(_net(), (x, y), epochs=1, progress=False)
    assert not result.from_cache and any((tmp_path / "cold").iterdir())
    assert train(_net(), (x, y), epochs=1, progress=False).from_cache


def test_weights_trained_with_another_thread_count_are_not_reused(tmp_path):
    """Parallel reductions round differently with another thread count, so the trained weights
    differ: the count is part of the configuration."""
    x, y = _blobs()
    threads = torch.get_num_threads()
    first = train(_net(), (x, y), epochs=1, cache_dir=tmp_path, progress=False)
    try:
        torch.set_num_threads(threads + 1)
        second = train(_net(), (x, y), epochs=1, cache_dir=tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert first.key != second.key and not second.from_cache


def test_numpy_and_tensor_scalars_accepted_bools_refused():
    import numpy as np
    from nbsupport.models import init_normal_
    assert repr(mlp([np.int64(2), torch.tensor(3), 1])) == repr(mlp([2, 3, 1]))
    a = init_normal_(mlp([4, 3]), C_W=np.float64(2.0), C_b=torch.tensor(0.5), seed=np.int64(1))
    b = init_normal_(mlp([4, 3]), C_W=2.0, C_b=0.5, seed=1)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[0].bias, b[0].bias)
    x, y = _blobs()
    plain = train(_net(), (x, y), epochs=2, lr=1e-2, batch_size=64, checkpoints=[1], cache=False, progress=False)
    numpy = train(_net(), (x, y), epochs=np.int64(2), lr=np.float64(1e-2), batch_size=torch.tensor(64),
                  weight_decay=np.float32(0.0), checkpoints=[np.int64(1)], rng=np.int64(0), cache=False, progress=False)
    assert numpy.key == plain.key and numpy.history == plain.history and list(numpy.checkpoints) == [1]
    for kwargs, word in ((dict(epochs=True), "epochs"), (dict(epochs=2, batch_size=True), "batch_size"),
                         (dict(epochs=2, lr=True), "lr"), (dict(epochs=2, rng=True), "rng"),
                         (dict(epochs=2, checkpoints=[True]), "checkpoints")):
        with pytest.raises(ValueError, match=word):
            train(_net(), (x, y), cache=False, progress=False, **kwargs)
    with pytest.raises(ValueError, match="C_b"):
        init_normal_(mlp([4, 3]), C_W=1.0, C_b=True)


def test_train_takes_rng_as_an_int_or_a_generator(tmp_path):
    """rng=s and a torch Generator seeded s draw the same minibatch orders (identical weights and
    history); a generator ends where the epochs' permutations leave it, also on a cache hit (so
    what the caller draws next does not depend on the cache); its state enters the key; a numpy
    Generator gives one seed; anything else is refused naming rng."""
    x, y = _blobs()
    kw = dict(epochs=2, lr=1e-2, batch_size=64, progress=False)
    by_int, by_gen = _net(), _net()
    from_int = train(by_int, (x, y), rng=3, cache=False, **kw)
    g = torch.Generator().manual_seed(3)
    from_gen = train(by_gen, (x, y), rng=g, cache_dir=tmp_path, **kw)
    assert from_gen.history == from_int.history and not from_gen.from_cache
    assert all(torch.equal(a, b) for a, b in zip(by_int.parameters(), by_gen.parameters()))
    reference = torch.Generator().manual_seed(3)
    for _ in range(2):  # the loop's draws, by hand: one permutation per epoch
        torch.randperm(len(x), generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())
    g_again = torch.Generator().manual_seed(3)
    again = train(_net(), (x, y), rng=g_again, cache_dir=tmp_path, **kw)
    assert again.from_cache and again.key == from_gen.key and again.history == from_gen.history
    assert torch.equal(g_again.get_state(), reference.get_state())
    assert train(_net(), (x, y), rng=g_again, cache=False, **kw).key != from_gen.key  # another state
    seed = int(np.random.default_rng(5).integers(0, 2**63 - 1))
    from_numpy = train(_net(), (x, y), rng=np.random.default_rng(5), cache=False, **kw)
    assert from_numpy.key == train(_net(), (x, y), rng=seed, cache=False, **kw).key
    for bad in (None, -1, 1.5, "0", True):
        with pytest.raises(ValueError, match="rng"):
            train(_net(), (x, y), rng=bad, cache=False, **kw)


def _seeded_net(seed):
    torch.manual_seed(1000 + seed)
    return mlp([2, 8, 2])


@pytest.mark.slow
def test_train_seeds_equals_separate_train_calls(tmp_path):
    """Reference: one train() call per seed, by hand, with the same initial weights."""
    from nbsupport.models import train_seeds
    x, y = _blobs()
    kwargs = dict(epochs=3, lr=0.02, batch_size=32, checkpoints=[1], test_data=_blobs(seed=1), progress=False)
    pairs = train_seeds(_seeded_net, (x, y), [0, 3, 1], method="loop", cache=False, **kwargs)
    assert len(pairs) == 3
    for s, (model, result) in zip([0, 3, 1], pairs):
        reference = _seeded_net(s)
        expected = train(reference, (x, y), rng=s, cache=False, **kwargs)
        assert result.history == expected.history and result.key == expected.key
        for k, v in reference.state_dict().items():
            assert torch.equal(model.state_dict()[k], v)
            assert torch.equal(result.checkpoints[1][k], expected.checkpoints[1][k])
    # different seeds give different models (init and minibatch order both differ)
    assert not torch.equal(pairs[0][0][0].weight, pairs[1][0][0].weight)


def test_train_seeds_shares_the_cache_of_train(tmp_path):
    from nbsupport.models import train_seeds
    x, y = _blobs()
    first = train_seeds(_seeded_net, (x, y), [0, 1], method="loop", epochs=1, cache_dir=tmp_path, progress=False)
    assert not any(r.from_cache for _, r in first)
    alone = train(_seeded_net(1), (x, y), epochs=1, rng=1, cache_dir=tmp_path, progress=False)
    assert alone.from_cache and alone.key == first[1][1].key
    again = train_seeds(_seeded_net, (x, y), [1, 0], method="loop", epochs=1, cache_dir=tmp_path, progress=False)
    assert all(r.from_cache for _, r in again)
    assert torch.equal(again[0][0][0].weight, first[1][0][0].weight)


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1], [1.5], "01", 3, [True]])
def test_train_seeds_bad_seeds(seeds):
    from nbsupport.models import train_seeds
    with pytest.raises(ValueError, match="seeds"):
        train_seeds(_seeded_net, _blobs(), seeds, epochs=1, cache=False, progress=False)


def test_train_seeds_bad_arguments():
    from nbsupport.models import train_seeds
    for name in ("rng", "seed"):  # the seeds are the source of every seed's minibatch order
        with pytest.raises(ValueError, match=name):
            train_seeds(_seeded_net, _blobs(), [0], epochs=1, cache=False, progress=False, **{name: 2})
    with pytest.raises(ValueError, match="make_model"):
        train_seeds(lambda s: None, _blobs(), [0], epochs=1, cache=False, progress=False)
    with pytest.raises(ValueError, match="make_model"):
        train_seeds("mlp", _blobs(), [0], epochs=1, cache=False, progress=False)


def _images(n=48, side=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, side, side, generator=g, dtype=dtype) + y.to(dtype).view(-1, 1, 1, 1)
    return x, y


def _max_gap(pairs_a, pairs_b):
    return max((a.state_dict()[k].double() - b.state_dict()[k].double()).abs().max().item()
               for (a, _), (b, _) in zip(pairs_a, pairs_b) for k in a.state_dict())


# Tolerance for float64 vmap-vs-loop agreement. Both routes do the same arithmetic per seed except
# that the batched kernels sum in another order, so each gradient differs from the loop's by a few
# ulps (relative ~1e-15). An Adam update is lr * m / (sqrt(v) + 1e-8): a relative gradient change
# d moves it by at most ~lr * d * |g| / 1e-8, i.e. <= 0.02 * 1e-15 / 1e-8 = 2e-9 in the worst case of
# a gradient at the eps scale and ~lr * d ~ 2e-17 for ordinary ones; over ~30 steps of a short,
# non-chaotic run that stays far below 1e-10 for ordinary coordinates. Any real difference (another
# minibatch order, another optimiser state, a seed's gradient leaking into another's) moves weights
# by ~lr = 1e-2 per step, 8 orders of magnitude more.
TOL64 = 1e-10


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_seeds_vmap_matches_the_loop_in_float64(optimizer):
    from nbsupport.models import train_seeds
    x, y = _blobs()
    make = lambda s: _seeded_net(s).double()  # noqa: E731
    xt, yt = _blobs(n=64, seed=1)
    kwargs = dict(epochs=3, lr=0.02, batch_size=48, weight_decay=1e-3, optimizer=optimizer, checkpoints=[0, 2],
                  test_data=(xt.double(), yt), cache=False, progress=False)
    x = x.double()
    vm = train_seeds(make, (x, y), [0, 5, 2], method="vmap", **kwargs)
    loop = train_seeds(make, (x, y), [0, 5, 2], method="loop", **kwargs)
    assert _max_gap(vm, loop) < TOL64
    for (_, rv), (_, rl) in zip(vm, loop):
        assert [r["epoch"] for r in rv.history] == [1, 2, 3] and rv.key != rl.key
        for a, b in zip(rv.history, rl.history):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-12, abs=0)
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-9, abs=0)
            assert a["test_accuracy"] == b["test_accuracy"]
        for epoch in (0, 2):
            for k, v in rl.checkpoints[epoch].items():
                assert (rv.checkpoints[epoch][k] - v).abs().max().item() < TOL64
    # the comparison can fail: seeds differ from each other by far more than the tolerance, and so
    # does the vmap route when one seed is given another's minibatch order (5 <-> 2 swapped)
    assert (vm[1][0][0].weight - vm[2][0][0].weight).abs().max().item() > 1e-3
    swapped = train_seeds(lambda s: make({5: 2, 2: 5}.get(s, s)), (x, y), [0, 2, 5], method="vmap", **kwargs)
    gap = max((swapped[1][0][0].weight - vm[2][0][0].weight).abs().max().item(),
              (swapped[2][0][0].weight - vm[1][0][0].weight).abs().max().item())
    assert gap > 1e4 * TOL64


def test_train_seeds_vmap_float32_stays_close_to_the_loop():
    """float32: rounding differences are ~1e-7 relative per step and grow slowly over a short run."""
    from nbsupport.models import train_seeds
    x, y = _blobs()
    kwargs = dict(epochs=2, lr=0.02, batch_size=64, cache=False, progress=False)
    vm = train_seeds(_seeded_net, (x, y), [1, 2], method="vmap", **kwargs)
    loop = train_seeds(_seeded_net, (x, y), [1, 2], method="loop", **kwargs)
    assert _max_gap(vm, loop) < 1e-5  # ~1e-7 relative per step, 8 steps of size <= lr


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_train_seeds_vmap_handles_batchnorm_buffers(arch):
    """BatchNorm: each seed's running statistics are updated from its own minibatches."""
    from nbsupport.models import small_resnet, train_seeds, vgg_cnn
    builder = {"vgg": lambda: vgg_cnn((3,), n_classes=3, image_size=8),
               "resnet": lambda: small_resnet((3, 4), n_classes=3, image_size=8)}[arch]

    def make(s):
        torch.manual_seed(s)
        return builder().double()
    x, y = _images()
    kwargs = dict(epochs=2, lr=0.01, batch_size=16, test_data=_images(n=20, seed=1), cache=False, progress=False)
    vm = train_seeds(make, (x, y), [0, 1], method="vmap", **kwargs)
    loop = train_seeds(make, (x, y), [0, 1], method="loop", **kwargs)
    assert _max_gap(vm, loop) < TOL64
    bn = [m for m in vm[0][0].modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert int(bn.num_batches_tracked) == 2 * 3  # 2 epochs x 3 minibatches
    bn1 = [m for m in vm[1][0].modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert (bn.running_mean - bn1.running_mean).abs().max().item() > 1e-6  # per-seed statistics
    for (_, rv), (_, rl) in zip(vm, loop):
        assert rv.history[-1]["test_accuracy"] == rl.history[-1]["test_accuracy"]


def test_train_seeds_vmap_cache(tmp_path):
    from nbsupport.models import train_seeds
    x, y = _blobs()
    kwargs = dict(epochs=1, batch_size=64, cache_dir=tmp_path, progress=False)
    first = train_seeds(_seeded_net, (x, y), [0, 1], method="vmap", **kwargs)
    assert not any(r.from_cache for _, r in first) and len(list(tmp_path.glob("*.pt"))) == 2
    again = train_seeds(_seeded_net, (x, y), [0, 1], method="vmap", **kwargs)
    assert all(r.from_cache for _, r in again)
    for (a, ra), (b, rb) in zip(first, again):
        assert ra.key == rb.key and ra.history == rb.history
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # the loop's entries are separate (another rounding), and another group trains again
    loop = train_seeds(_seeded_net, (x, y), [0, 1], method="loop", **kwargs)
    assert not any(r.from_cache for _, r in loop)
    bigger = train_seeds(_seeded_net, (x, y), [0, 1, 2], method="vmap", **kwargs)
    assert not any(r.from_cache for _, r in bigger)


def test_auto_method_and_bad_inputs():
    from nbsupport.models import auto_method, train_seeds, vgg_cnn
    assert auto_method(mlp([784, 64, 64, 10])) == "vmap"
    assert auto_method(mlp([2, 3, 2], activation=nn.Tanh)) == "vmap"
    assert auto_method(vgg_cnn((8, 16))) == "loop"  # convolutions and BatchNorm buffers
    assert auto_method(nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5), nn.Linear(3, 2))) == "loop"
    x, y = _blobs()
    with pytest.raises(ValueError, match="method"):
        train_seeds(_seeded_net, (x, y), [0], method="fast", epochs=1, cache=False, progress=False)
    with pytest.raises(ValueError, match="make_model"):
        train_seeds(lambda s: mlp([2, 4 + s, 2]), (x, y), [0, 1], method="vmap", epochs=1, cache=False,
                    progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_seeds(_seeded_net, (x, y), [0], method="vmap", epochs=0, cache=False, progress=False)


def _twin_classes():
    """Two classes with the same name and repr whose forward passes differ (ReLU before / after)."""
    def before():
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(2, 2)

            def forward(self, x):
                return self.lin(torch.relu(x))
        return Net

    def after():
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(2, 2)

            def forward(self, x):
                return torch.relu(self.lin(x))
        return Net
    return before(), after()


def test_cache_key_sees_forward_code(tmp_path):
    """Regression (issue 25): the key was repr(model) plus weights, so a model whose forward applies the
    ReLU before its Linear loaded the weights trained for one that applies it after."""
    Before, After = _twin_classes()
    torch.manual_seed(0)
    a = Before()
    torch.manual_seed(0)
    b = After()
    assert repr(a) == repr(b) and all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    x, y = _blobs()
    key_a = config_hash(a, [x, y])
    assert key_a != config_hash(b, [x, y])
    first = train(a, (x, y), epochs=1, cache_dir=tmp_path, progress=False)
    second = train(b, (x, y), epochs=1, cache_dir=tmp_path, progress=False)
    assert not second.from_cache and second.key != first.key
    # a helper method called by forward counts too, and an instance's own forward
    class Helper(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.act(self.lin(x))

        def act(self, z):
            return torch.relu(z)
    torch.manual_seed(0)
    h = Helper()
    base = config_hash(h, [x, y])
    Helper.act = lambda self, z: torch.tanh(z)
    assert config_hash(h, [x, y]) != base
    h.forward = lambda x: h.lin(x)
    assert config_hash(h, [x, y]) != config_hash(Helper(), [x, y])
    # the same class and weights still share a key (the cache still hits)
    torch.manual_seed(0)
    assert config_hash(Before(), [x, y]) == key_a  # a itself was trained in place since


@pytest.mark.slow
def test_config_hash_is_the_same_in_another_process():
    """Regression: Conv2d's __init__ holds a frozenset constant ({'same', 'valid'}) whose repr order
    follows the process's string hashing, so the CNNs' keys changed from process to process. The two
    hash seeds below order such a set differently."""
    import os
    import subprocess
    import sys
    src = ("import torch\nfrom nbsupport.models import callable_key, config_hash, small_resnet, vgg_cnn, mlp\n"
           "torch.manual_seed(0)\nx = torch.zeros(2, 1, 28, 28)\nMODES = {'same', 'valid', 'zeros', 'reflect'}\n"
           "def f(m):\n    return m in {'same', 'valid', 'zeros', 'reflect'} or m in MODES\n"
           "print([config_hash(m, [x]) for m in (vgg_cnn((4, 8)), small_resnet((4, 8)), mlp([3, 4, 2]))],\n"
           "      callable_key(f))")
    keys = {subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(keys) == 1


def test_bad_labels_and_dtypes_are_refused_by_name_before_torch_sees_them():
    """Issue 25: float labels failed in torch's gather, out-of-range ones with 'Target 7 is out of
    bounds', a float32 batch with a float64 net with 'mat1 and mat2'. Each is a ValueError naming
    what is wrong, from train, train_seeds and evaluate alike, and nothing is trained or changed."""
    from nbsupport.models import train_seeds
    x, y = _blobs()
    n_out = _net()(x[:1]).shape[1]
    bad = {"float labels": (x, y.double()), "labels out of range": (x, torch.full_like(y, n_out)),
           "negative labels": (x, y - 1 - y.max()), "2-D labels": (x, y[:, None]),
           "float64 batch, float32 net": (x.double(), y), "integer batch": (x.long(), y)}
    words = {"float labels": "y must be a 1-D integer", "labels out of range": rf"\[0, {n_out}\)",
             "negative labels": rf"\[0, {n_out}\)", "2-D labels": "y must be a 1-D integer",
             "float64 batch, float32 net": "x is torch.float64", "integer batch": "x must be a floating"}
    for case, data in bad.items():
        net = _net()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(ValueError, match=words[case]):
            train(net, data, epochs=1, cache=False, progress=False)
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items()), case
        with pytest.raises(ValueError, match=words[case]):
            evaluate(net, *data)
        with pytest.raises(ValueError, match=words[case]):
            train_seeds(lambda s: _net(), data, [0, 1], epochs=1, cache=False, progress=False, method="vmap")
        with pytest.raises(ValueError, match="test_data: .*" + words[case]):
            train(_net(), (x, y), epochs=1, cache=False, progress=False, test_data=data)
    # the boundary is exact: the largest valid class and class 0 pass, a float target passes a loss
    # that takes one (binary cross-entropy on one output), and the eval-mode probe leaves flags alone
    edge = torch.where(torch.arange(len(y)) % 2 == 0, torch.zeros_like(y), torch.full_like(y, n_out - 1))
    net = _net().train()
    loss, acc = evaluate(net, x, edge)
    assert net.training and 0 <= acc <= 1 and loss > 0
    one = nn.Sequential(nn.Linear(x.shape[1], 1))
    bce = lambda out, t, reduction="mean": nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
        out[:, 0], t, reduction=reduction)
    assert evaluate(one, x, (y > 0).to(x.dtype), loss_fn=bce)[0] > 0
    with pytest.raises(ValueError, match="data"):
        train(_net(), [x], epochs=1, cache=False, progress=False)


def test_start_epoch_resumes_on_the_same_minibatches_with_a_fresh_optimiser():
    """Reference: epochs 2-3 by hand, from the weights after epoch 1, the minibatch orders
    drawn from the seed's generator after skipping epoch 1's, a new Adam."""
    from nbsupport.models import train_seeds
    x, y = _blobs()
    x = x.double()
    kwargs = dict(lr=0.02, batch_size=48, cache=False, progress=False)
    full = _net().double()
    first = train(full, (x, y), epochs=3, rng=4, checkpoints=[1], **kwargs)
    resumed = _net().double()
    resumed.load_state_dict(first.checkpoints[1])
    result = train(resumed, (x, y), epochs=3, rng=4, start_epoch=1, checkpoints=[1, 2], **kwargs)
    reference = _net().double()
    reference.load_state_dict(first.checkpoints[1])
    opt = torch.optim.Adam(reference.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(4)
    torch.randperm(len(x), generator=g)  # epoch 1's order, skipped
    for _ in (2, 3):
        for idx in torch.randperm(len(x), generator=g).split(48):
            loss = nn.functional.cross_entropy(reference(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for k, v in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v)
    assert [r["epoch"] for r in result.history] == [2, 3] and sorted(result.checkpoints) == [1, 2]
    assert all(torch.equal(result.checkpoints[1][k], v) for k, v in first.checkpoints[1].items())
    # the check can fail: the uninterrupted training (Adam's state kept) ends elsewhere, and so
    # does a resumed run on epoch 1's orders (start_epoch not honoured)
    assert max((full.state_dict()[k] - v).abs().max().item() for k, v in reference.state_dict().items()) > 1e-6
    wrong = _net().double()
    wrong.load_state_dict(first.checkpoints[1])
    train(wrong, (x, y), epochs=2, rng=4, **kwargs)
    assert max((wrong.state_dict()[k] - v).abs().max().item() for k, v in reference.state_dict().items()) > 1e-6
    # the cache key sees start_epoch; with 0 it is train's old key
    key0 = train(_net().double(), (x, y), epochs=3, rng=4, **kwargs).key
    assert key0 == train(_net().double(), (x, y), epochs=3, rng=4, start_epoch=0, **kwargs).key
    assert result.key != key0
    # the vmap route resumes the same way
    make = lambda s: (lambda m: (m.load_state_dict(first.checkpoints[1]), m)[1])(_net().double())  # noqa: E731
    vm = train_seeds(make, (x, y), [4], method="vmap", epochs=3, start_epoch=1, **kwargs)
    assert _max_gap(vm, [(reference, None)]) < TOL64
    assert [r["epoch"] for r in vm[0][1].history] == [2, 3]


@pytest.mark.parametrize("kwargs, word", [(dict(epochs=2, start_epoch=2), "start_epoch"),
                                          (dict(epochs=2, start_epoch=-1), "start_epoch"),
                                          (dict(epochs=2, start_epoch=1.5), "start_epoch"),
                                          (dict(epochs=3, start_epoch=1, checkpoints=[0]), "checkpoints")])
def test_start_epoch_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        train(_net(), _blobs(), cache=False, progress=False, **kwargs)


@pytest.mark.parametrize("case", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=3, stride=2, ceil_mode=True),
                                  dict(kernel_size=2, stride=1, dilation=2)])
def test_max_pool_is_nn_max_pool_bit_for_bit(case):
    from nbsupport.models import MaxPool2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 11, 9, generator=g).relu()  # ties at zero, as after a ReLU
    ours, theirs = MaxPool2d(**case), nn.MaxPool2d(**case)
    with torch.no_grad():  # the channels-last route
        out = ours(x)
        assert torch.equal(out, theirs(x)) and out.is_contiguous()
        assert torch.equal(ours(x[0]), theirs(x[0]))  # an unbatched input takes nn's route
    # with autograd: nn.MaxPool2d's forward and backward
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(out.shape, generator=g)
    ours(a).backward(grad)
    theirs(b).backward(grad)
    assert torch.equal(a.grad, b.grad)
    # inside torch.func.vmap without autograd (the channels-last route cannot run there)
    with torch.no_grad():
        batched = torch.func.vmap(ours)(x[None].expand(2, *x.shape))
    assert torch.equal(batched[1], theirs(x))

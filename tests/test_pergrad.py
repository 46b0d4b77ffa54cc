"""nbsupport.pergrad against the per-sample loop and explicit P x P covariances."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbsupport.covariance import decompose_covariance, group_moments
from nbsupport.models import mlp
from nbsupport.patterns import activation_patterns, group_by_pattern
from nbsupport.pergrad import (gradient_gram, gradient_gram_per_layer, gram_decomposition, group_gram_spectra,
                               layer_signals, per_sample_grads, per_sample_grads_loop)


def _setup(widths=(4, 8, 6, 3), n=60, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = mlp(list(widths)).to(dtype)
    x = torch.randn(n, widths[0], dtype=dtype)
    y = torch.randint(0, widths[-1], (n,))
    return net, x, y


@pytest.mark.parametrize("method", ["auto", "outer", "vmap"])
def test_per_sample_grads_equal_the_loop(method):
    net, x, y = _setup()
    ref = per_sample_grads_loop(net, F.cross_entropy, x, y)
    assert ref.shape == (60, sum(p.numel() for p in net.parameters()))
    torch.testing.assert_close(per_sample_grads(net, F.cross_entropy, x, y, method=method), ref, rtol=1e-5, atol=1e-6)


def test_per_sample_grads_mean_is_the_batch_gradient():
    net, x, y = _setup(dtype=torch.float64)
    F.cross_entropy(net(x), y).backward()
    full = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(per_sample_grads(net, F.cross_entropy, x, y).mean(0), full, rtol=1e-10, atol=1e-12)


def test_frozen_parameters_and_grad_fields():
    net, x, y = _setup(dtype=torch.float64)
    net[2].weight.requires_grad_(False)
    ref = per_sample_grads_loop(net, F.cross_entropy, x, y)
    assert all(p.grad is None for p in net.parameters())  # the loop leaves .grad alone
    for method in ("outer", "vmap"):
        torch.testing.assert_close(per_sample_grads(net, F.cross_entropy, x, y, method=method), ref)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_vmap_route_for_other_models():
    torch.manual_seed(0)
    model, x, y = SmallCNN().double(), torch.randn(10, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (10,))
    ref = per_sample_grads_loop(model, F.cross_entropy, x, y)
    torch.testing.assert_close(per_sample_grads(model, F.cross_entropy, x, y), ref)
    with pytest.raises(ValueError, match="nn.Sequential"):
        per_sample_grads(model, F.cross_entropy, x, y, method="outer")


def test_bad_input():
    net, x, y = _setup()
    with pytest.raises(ValueError, match="x and y"):
        per_sample_grads(net, F.cross_entropy, x, y[:-1])
    with pytest.raises(ValueError, match="method"):
        per_sample_grads(net, F.cross_entropy, x, y, method="fast")
    with pytest.raises(ValueError, match="model"):
        per_sample_grads_loop(lambda t: t, F.cross_entropy, x, y)


def test_layer_signals_are_inputs_and_output_gradients():
    net, x, y = _setup(dtype=torch.float64)
    (l1, a1, d1), (l2, a2, d2), (l3, a3, d3) = layer_signals(net, F.cross_entropy, x, y)
    assert l1 is net[0] and torch.equal(a1, x)
    torch.testing.assert_close(a2, torch.relu(net[0](x)))
    p = torch.softmax(net(x), 1)
    torch.testing.assert_close(d3, p - F.one_hot(y, 3).double())  # d(CE)/d(logits) per sample


def _explicit(widths=(3, 6, 5, 4), n=80):
    net, x, y = _setup(widths, n=n, dtype=torch.float64, seed=1)
    g = per_sample_grads_loop(net, F.cross_entropy, x, y)
    inverse = group_by_pattern(activation_patterns(net, x)[0]).inverse
    return net, x, y, g, inverse


def test_gradient_gram_equals_g_gt():
    net, x, y, g, _ = _explicit()
    gram = gradient_gram(net, F.cross_entropy, x, y)
    torch.testing.assert_close(gram, g @ g.T, rtol=1e-10, atol=1e-12)
    layers = gradient_gram_per_layer(net, F.cross_entropy, x, y)
    sizes = [p.numel() for p in net.parameters()]
    starts = torch.tensor([0] + sizes).cumsum(0).tolist()
    for l, k_l in enumerate(layers):  # layer l owns parameters 2l (weight) and 2l+1 (bias)
        block = g[:, starts[2 * l]:starts[2 * l + 2]]
        torch.testing.assert_close(k_l, block @ block.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1])
def test_gram_decomposition_equals_explicit_covariance(ddof):
    net, x, y, g, inverse = _explicit()
    assert 3 < int(inverse.max()) + 1 < len(x)  # a real partition: several groups, some shared
    explicit = decompose_covariance(g, inverse, ddof=ddof)  # P x P matrices
    res = gram_decomposition(gradient_gram(net, F.cross_entropy, x, y), inverse, ddof=ddof, k=6)
    for name in ("total", "within", "between"):
        cov = getattr(explicit, name)
        assert abs(getattr(res.traces, name).item() - torch.trace(cov).item()) < 1e-8
        top = torch.linalg.eigvalsh(cov).flip(0)[:6]
        torch.testing.assert_close(getattr(res.eigenvalues, name), top, rtol=0, atol=1e-8)
    t = res.traces
    assert abs((t.total - t.within - t.between).item()) < 1e-10


def test_group_gram_spectra_equal_explicit_group_covariances():
    net, x, y, g, inverse = _explicit(n=200)
    moments = group_moments(g, inverse, min_count=3, ddof=1)
    assert len(moments.groups) >= 2
    traces, top = group_gram_spectra(gradient_gram(net, F.cross_entropy, x, y), inverse, moments.groups, ddof=1, k=4)
    for slot, cov in enumerate(moments.covariances):
        assert abs(traces[slot].item() - torch.trace(cov).item()) < 1e-8
        ref = torch.linalg.eigvalsh(cov).flip(0)[:4]
        torch.testing.assert_close(top[slot], ref, rtol=0, atol=1e-8)


def test_gram_bad_input():
    k = torch.eye(4, dtype=torch.float64)
    inv = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="gram"):
        gram_decomposition(k[:3], inv)
    with pytest.raises(ValueError, match="inverse"):
        gram_decomposition(k, inv[:3])
    with pytest.raises(ValueError, match="ddof"):
        gram_decomposition(k, inv, ddof=2)
    with pytest.raises(ValueError, match="k must"):
        gram_decomposition(k, inv, k=0)
    with pytest.raises(ValueError, match="more than ddof"):
        group_gram_spectra(k, torch.tensor([0, 1, 1, 1]), torch.tensor([0]), ddof=1)


def test_gram_decomposition_large_n_and_empty_groups():
    net, x, y = _setup((3, 6, 4), n=300, dtype=torch.float64, seed=2)
    g = per_sample_grads_loop(net, F.cross_entropy, x, y)
    inverse = group_by_pattern(activation_patterns(net, x)[0][:, :3]).inverse * 2  # odd labels empty
    res = gram_decomposition(g @ g.T, inverse, k=4)
    explicit = decompose_covariance(g, inverse)
    for name in ("total", "within", "between"):
        cov = getattr(explicit, name)
        assert abs(getattr(res.traces, name).item() - torch.trace(cov).item()) < 1e-8
        # k = 4 leading eigenvalues; the between part has at most G (here 4 or more) of them
        expected_length = min(4, len(torch.unique(inverse))) if name == "between" else 4
        assert len(getattr(res.eigenvalues, name)) == expected_length
        top = torch.linalg.eigvalsh(cov).flip(0)[:expected_length]
        torch.testing.assert_close(getattr(res.eigenvalues, name), top, rtol=0, atol=1e-8)


def test_shared_linear_falls_back_to_vmap():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4).double()
    net = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(4, 3).double())
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    ref = per_sample_grads_loop(net, F.cross_entropy, x, y)
    torch.testing.assert_close(per_sample_grads(net, F.cross_entropy, x, y), ref)
    with pytest.raises(ValueError, match="nn.Sequential"):
        gradient_gram(net, F.cross_entropy, x, y, method="signals")
    # the blocks route sees the shared layer once: its gradient is the sum over both uses
    torch.testing.assert_close(gradient_gram(net, F.cross_entropy, x, y), ref @ ref.T, rtol=1e-10, atol=1e-12)


def test_more_bad_gram_input():
    k = torch.eye(4, dtype=torch.float64)
    inv = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="groups"):
        group_gram_spectra(k, inv, torch.tensor([-1]))
    with pytest.raises(ValueError, match="inverse"):
        gram_decomposition(k, torch.tensor([0, -1, 1, 1]))
    with pytest.raises(ValueError, match="symmetric"):
        gram_decomposition(torch.triu(torch.ones(4, 4, dtype=torch.float64)), inv)


def test_out_buffer_is_filled_and_returned():
    net, x, y = _setup(dtype=torch.float64)
    ref = per_sample_grads_loop(net, F.cross_entropy, x, y)
    for method in ("outer", "vmap"):
        buf = torch.full_like(ref, float("nan"))  # every entry must be overwritten
        res = per_sample_grads(net, F.cross_entropy, x, y, method=method, out=buf)
        assert res.data_ptr() == buf.data_ptr()
        torch.testing.assert_close(buf, ref, rtol=1e-10, atol=1e-12)
    net[0].bias.requires_grad_(False)  # fewer columns: a frozen bias has none
    ref = per_sample_grads_loop(net, F.cross_entropy, x, y)
    buf = torch.full_like(ref, float("nan"))
    torch.testing.assert_close(per_sample_grads(net, F.cross_entropy, x, y, out=buf), ref, rtol=1e-10, atol=1e-12)
    for bad in (torch.empty(len(x), ref.shape[1] + 1, dtype=torch.float64), torch.empty_like(ref, dtype=torch.float32),
                torch.empty(ref.shape[1], len(x), dtype=torch.float64).T):
        with pytest.raises(ValueError, match="out must"):
            per_sample_grads(net, F.cross_entropy, x, y, out=bad)


@pytest.mark.parametrize("frozen", [None, "weight", "bias", "both"])
def test_gram_routes_agree_with_g_gt_under_frozen_parameters(frozen):
    net, x, y = _setup(dtype=torch.float64, seed=3)
    if frozen in ("weight", "both"):
        net[2].weight.requires_grad_(False)
    if frozen in ("bias", "both"):
        net[2].bias.requires_grad_(False)
    g = per_sample_grads_loop(net, F.cross_entropy, x, y)
    for method in ("signals", "blocks"):
        torch.testing.assert_close(gradient_gram(net, F.cross_entropy, x, y, method=method), g @ g.T,
                                   rtol=1e-10, atol=1e-12)


def test_blocks_route_for_a_cnn_per_module_and_in_chunks():
    torch.manual_seed(0)
    model, x, y = SmallCNN().double(), torch.randn(23, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (23,))
    g = per_sample_grads_loop(model, F.cross_entropy, x, y)
    torch.testing.assert_close(gradient_gram(model, F.cross_entropy, x, y), g @ g.T, rtol=1e-10, atol=1e-12)
    parts = gradient_gram_per_layer(model, F.cross_entropy, x, y, chunk_size=5)  # conv, then fc
    n_conv = sum(p.numel() for p in model.conv.parameters())
    assert len(parts) == 2
    torch.testing.assert_close(parts[0], g[:, :n_conv] @ g[:, :n_conv].T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(parts[1], g[:, n_conv:] @ g[:, n_conv:].T, rtol=1e-10, atol=1e-12)
    # the spectra of Cov(G) then follow without G, as for MLPs
    inverse = torch.arange(23) % 3
    explicit = decompose_covariance(g, inverse)
    res = gram_decomposition(gradient_gram(model, F.cross_entropy, x, y), inverse, k=3)
    for name in ("total", "within", "between"):
        assert abs(getattr(res.traces, name).item() - torch.trace(getattr(explicit, name)).item()) < 1e-10


def test_gradient_gram_bad_input():
    net, x, y = _setup()
    with pytest.raises(ValueError, match="method"):
        gradient_gram(net, F.cross_entropy, x, y, method="dense")
    with pytest.raises(ValueError, match="chunk_size"):
        gradient_gram(net, F.cross_entropy, x, y, method="blocks", chunk_size=0)
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        gradient_gram(net, F.cross_entropy, x, y, method="blocks")


def test_numpy_and_tensor_scalars_accepted_bools_refused():
    import numpy as np
    net, x, y, g, inverse = _explicit()
    gram = gradient_gram(net, F.cross_entropy, x, y)
    ref = gram_decomposition(gram, inverse, ddof=1, k=3)
    for ddof, k in ((np.int64(1), np.int32(3)), (torch.tensor(1), torch.tensor(3))):
        other = gram_decomposition(gram, inverse, ddof=ddof, k=k)
        assert all(torch.equal(a, b) for a, b in zip(ref.eigenvalues, other.eigenvalues))
    assert torch.equal(gradient_gram(net, F.cross_entropy, x, y, method="blocks", chunk_size=np.int64(7)),
                       gradient_gram(net, F.cross_entropy, x, y, method="blocks", chunk_size=7))
    for kwargs, word in ((dict(ddof=True), "ddof"), (dict(k=True), "k"), (dict(k=2.0), "k")):
        with pytest.raises(ValueError, match=rf"\b{word} must"):  # the argument named, not any letter
            gram_decomposition(gram, inverse, **kwargs)
    with pytest.raises(ValueError, match="chunk_size"):
        gradient_gram(net, F.cross_entropy, x, y, method="blocks", chunk_size=True)


def test_bad_labels_and_dtypes_are_refused_by_name():
    """Issue 25: torch's own messages (gather, 'Target 3 is out of bounds', 'mat1 and mat2') become
    ValueErrors naming x or y, in every entry point; a loss with float targets keeps them."""
    net, x, y = _setup()
    n_out = net(x[:1]).shape[1]
    cases = [((x, y.float()), "y must be a 1-D integer"), ((x, torch.full_like(y, n_out)), rf"\[0, {n_out}\)"),
             ((x.double(), y), "x is torch.float64")]
    for (xb, yb), word in cases:
        for fn in (per_sample_grads, per_sample_grads_loop, gradient_gram):
            with pytest.raises(ValueError, match=word):
                fn(net, F.cross_entropy, xb, yb)
    mse = lambda out, t: F.mse_loss(out[:, 0], t)  # noqa: E731
    ref = per_sample_grads_loop(net, mse, x, y.float())
    torch.testing.assert_close(per_sample_grads(net, mse, x, y.float(), method="vmap"), ref)

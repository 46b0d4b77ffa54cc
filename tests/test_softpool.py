"""nbsupport.pullbacks.softpool: the closed-form vector-Jacobian product against autograd, and argument
checks.

The pooling itself is tested against a per-window loop in ``test_pullbacks.py`` (forward and the
surrogate backward of every pooling geometry)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbsupport.pullbacks.softpool import softmax_pool2d, softmax_pool2d_vjp

CASES = [
    dict(kernel_size=2),                                       # tiled route
    dict(kernel_size=(2, 3), ceil_mode=True),                  # tiled route only if the size divides
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), ceil_mode=True),
    dict(kernel_size=2, stride=3, ceil_mode=True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("padding_value", [-math.inf, 0.0])
@pytest.mark.parametrize("side", [(8, 12), (9, 11)])
def test_vjp_is_autograd_through_the_pooling(case, padding_value, side):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, *side, dtype=torch.float64, generator=g)
    xr = x.clone().requires_grad_(True)
    out = softmax_pool2d(xr, **case, temperature=0.4, padding_value=padding_value)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=g)
    (expected,) = torch.autograd.grad(out, xr, grad_out)
    got = softmax_pool2d_vjp(x, grad_out, **case, temperature=0.4, padding_value=padding_value)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.shape == x.shape
    # an unbatched (C, H, W) input gives the first sample's result
    torch.testing.assert_close(softmax_pool2d_vjp(x[0], grad_out[0], **case, temperature=0.4,
                                                  padding_value=padding_value), expected[0], rtol=1e-12, atol=1e-12)
    assert out.shape == F.max_pool2d(x, **case).shape


def test_vjp_keeps_dtype_and_checks_grad_output():
    x = torch.randn(1, 2, 6, 6)
    grad = softmax_pool2d_vjp(x, torch.ones(1, 2, 3, 3), 2)
    assert grad.dtype == torch.float32 and grad.shape == x.shape
    with pytest.raises(ValueError, match="grad_output"):
        softmax_pool2d_vjp(x, torch.ones(1, 2, 2, 2), 2)
    with pytest.raises(ValueError, match="temperature"):
        softmax_pool2d_vjp(x, torch.ones(1, 2, 3, 3), 2, temperature=-1.0)


@pytest.mark.parametrize("case", [dict(kernel_size=2), dict(kernel_size=(2, 3)), dict(kernel_size=3, ceil_mode=True),
                                  dict(kernel_size=3, stride=2, padding=1)], ids=str)
def test_routed_max_pool_forward_is_max_pool_and_backward_the_vjp(case):
    from nbsupport.pullbacks.softpool import softmax_routed_max_pool2d

    g = torch.Generator().manual_seed(7)
    for shape in [(2, 3, 9, 11), (3, 8, 12)]:            # floor-mode leftovers; an unbatched input
        x = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
        out = softmax_routed_max_pool2d(x, **case, temperature=0.6)
        assert torch.equal(out, F.max_pool2d(x, **case))
        grad_out = torch.randn(out.shape, dtype=torch.float64, generator=g)
        doubled = (out * 1).relu_()            # a later in-place op on the output leaves the backward alone
        with torch.no_grad():
            out.mul_(0)
        (got,) = torch.autograd.grad(doubled, x, grad_out * (doubled > 0))
        torch.testing.assert_close(got, softmax_pool2d_vjp(x.detach(), grad_out * (doubled > 0), **case,
                                                           temperature=0.6), rtol=1e-12, atol=1e-12)


def test_vjp_with_minus_infinity_in_a_window_matches_autograd():
    # exp(-inf) = 0 times u = -inf was NaN for the whole window on the tiled route
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[0, 0, 0, 0] = x[0, 1, 3, 5] = -math.inf
    g = torch.randn(1, 2, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(softmax_pool2d(xr, 2), xr, g)
    got = softmax_pool2d_vjp(x, g, 2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_vjp_refuses_a_grad_output_of_the_right_size_but_wrong_shape():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="grad_output must have the pooled shape"):
        softmax_pool2d_vjp(x, torch.ones(3, 2, 2, 2), 2)  # (C, N, oh, ow): same numel


def test_padding_value_accepts_numpy_reals_and_refuses_the_rest():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    reference = softmax_pool2d(x, kernel_size=2, temperature=0.4, padding_value=0.0)
    for value in (0, np.float32(0.0), np.int64(0)):
        torch.testing.assert_close(softmax_pool2d(x, kernel_size=2, temperature=0.4, padding_value=value),
                                   reference, rtol=0, atol=0)
    softmax_pool2d(x, kernel_size=2, temperature=0.4, padding_value=np.float64(-np.inf))
    for bad in (True, np.bool_(False), 1.0, "0", None, torch.tensor(0.0)):
        with pytest.raises(ValueError, match="padding_value"):
            softmax_pool2d(x, kernel_size=2, temperature=0.4, padding_value=bad)

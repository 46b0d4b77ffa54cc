r"""Softmax pooling: max-pooling's windows, each averaged with weights :math:`\mathrm{softmax}(x/T)`.

The soft branch of the excitation rules :cite:p:`satkiewicz2025tapping`: a max-pooling routes the
incoming gradient as the softmax pooling over the same windows would (Listing 2 of the source).
:func:`softmax_pool2d` is the pooling itself, :func:`softmax_pool2d_vjp` its vector-Jacobian
product in closed form (what the surrogate rule of :mod:`nbsupport.pullbacks.surrogate` passes
back), and :func:`~nbsupport.intercept.pool_geometry` / :func:`pool_output_size` reproduce
``F.max_pool2d``'s argument handling and window grid, ``ceil_mode`` and dilation included.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import flag, real
from ..intercept import PoolGeometry, pool_geometry

__all__ = ["softmax_pool2d", "softmax_pool2d_vjp", "softmax_routed_max_pool2d", "SoftMaxPool2d", "pool_output_size",
           "check_padding_value"]


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of ``max_pool2d`` along one axis (PyTorch's rule, ``ceil_mode`` included).

    In ceil mode a last, partial window is kept only if it starts inside the input or the left
    padding.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        raise ValueError(f"the pooling window (kernel {kernel}, dilation {dilation}) is larger than the "
                         f"padded input ({size} + 2*{padding})")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def check_padding_value(value) -> float:
    """The padding of the soft windows: ``-inf`` (max-pooling's) or ``0.0`` (the source's ``F.unfold``),
    as a Python or NumPy real number (booleans refused)."""
    real_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real_number and (value == 0 or value == -math.inf)):
        raise ValueError(f"padding_value must be -inf (max-pooling's padding) or 0.0 (Listing 2's), got {value!r}")
    return float(value)


def _windows(x: torch.Tensor, geometry: PoolGeometry, ceil_mode: bool, padding_value: float):
    """Pooling windows of ``x`` (N, C, H, W) as a tensor (N*C, kh*kw, L), padded positions ``padding_value``.

    Returns the windows, the output size (oh, ow), the padded size and the pads, for folding.
    """
    kernel, stride, padding, dilation = geometry
    n, c, h, w = x.shape
    oh, ow = _output_size(h, w, geometry, ceil_mode)
    # extra bottom/right padding so that the last (ceil-mode) window fits; never negative here
    extra_h = max(0, (oh - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1 - (h + 2 * padding[0]))
    extra_w = max(0, (ow - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1 - (w + 2 * padding[1]))
    pads = (padding[1], padding[1] + extra_w, padding[0], padding[0] + extra_h)
    xp = F.pad(x.reshape(n * c, 1, h, w), pads, value=padding_value)
    # with this padding unfold's window grid is exactly max_pool2d's (oh, ow)
    win = F.unfold(xp, kernel, dilation=dilation, stride=stride)  # (N*C, kh*kw, oh*ow)
    return win, (oh, ow), xp.shape[2:], pads


def _check_pool_input(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor of shape (N, C, H, W) or (C, H, W), got {shape}")
    return (x, False) if x.ndim == 4 else (x.unsqueeze(0), True)


def softmax_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
                   temperature: float = 0.3, padding_value: float = -math.inf) -> torch.Tensor:
    r"""Softmax pooling: each window's values averaged with weights :math:`\mathrm{softmax}(x/T)`.

    :math:`s = \sum_i w_i x_i` with :math:`w = \mathrm{softmax}(x_{\text{window}} / T)`, over the same
    windows as ``F.max_pool2d`` with the same arguments; padded positions take no part (they are
    :math:`-\infty`, as in max-pooling, where the source's Listing 2 pads with zeros and supports only
    an int kernel, no dilation and no ``ceil_mode`` :cite:p:`satkiewicz2025tapping`). As
    :math:`T \to 0` it tends to max-pooling.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W) or (C, H, W)
    kernel_size, stride, padding, dilation : int or pair of ints
        As in ``torch.nn.functional.max_pool2d`` (``stride`` defaults to ``kernel_size``).
    ceil_mode : bool
    temperature : float
        :math:`T > 0`.
    padding_value : float
        ``-inf`` (max-pooling's padding, the default) or ``0.0`` (what ``F.unfold`` in the source's
        Listing 2 pads with: a padded zero then takes part in the softmax).

    Returns
    -------
    Tensor, shape of ``F.max_pool2d(x, ...)``
    """
    temperature = real(temperature, "temperature", low=0)
    padding_value = check_padding_value(padding_value)
    x4, squeeze = _check_pool_input(x)
    geometry = pool_geometry(kernel_size, stride, padding, dilation)
    win, (oh, ow), _, _ = _windows(x4, geometry, ceil_mode, padding_value)
    weights = torch.softmax(win / temperature, dim=1)
    out = (weights * win.nan_to_num(neginf=0.0)).sum(1).reshape(*x4.shape[:2], oh, ow)
    return out[0] if squeeze else out


def softmax_pool2d_vjp(x: torch.Tensor, grad_output: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                       ceil_mode: bool = False, temperature: float = 0.3,
                       padding_value: float = -math.inf, *, detach_weights: bool = False) -> torch.Tensor:
    r"""Vector-Jacobian product of :func:`softmax_pool2d` at ``x``, in closed form.

    With :math:`s = \sum_i w_i x_i` over a window, :math:`\partial s / \partial x_i = w_i (1 + (x_i -
    s)/T)`; every window's contributions, times its entry of ``grad_output``, are summed back onto
    the input. Non-overlapping, unpadded windows take a route without ``F.unfold``.

    With ``detach_weights=True`` the weights are held constant, :math:`\partial s / \partial x_i
    = w_i`: the rule of the source's later code, which detaches the softmax weights, so that no
    entry of the routing is negative (the full derivative's factor :math:`1 + (x_i - s)/T` is
    negative for window entries more than :math:`T` below the soft maximum).

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W) or (C, H, W)
    grad_output : Tensor, shape of ``softmax_pool2d(x, ...)``
    kernel_size, stride, padding, dilation, ceil_mode, temperature, padding_value
        As in :func:`softmax_pool2d`.
    detach_weights : bool
        Treat the softmax weights as constants (default ``False``: the full derivative).

    Returns
    -------
    Tensor, shape of ``x``
        :math:`\sum_o g_o\, \partial s_o / \partial x`.
    """
    temperature = real(temperature, "temperature", low=0)
    padding_value = check_padding_value(padding_value)
    x4, squeeze = _check_pool_input(x)
    geometry = pool_geometry(kernel_size, stride, padding, dilation)
    n, c, h, w = x4.shape
    oh, ow = _output_size(h, w, geometry, ceil_mode)
    pooled = (n, c, oh, ow)[1 if squeeze else 0:]
    if not (isinstance(grad_output, torch.Tensor) and tuple(grad_output.shape) == pooled):
        raise ValueError(f"grad_output must have the pooled shape {pooled}, got "
                         f"{tuple(getattr(grad_output, 'shape', ()))}")
    grad = _vjp(x4, grad_output.reshape(n, c, oh, ow), geometry, bool(ceil_mode), temperature, padding_value,
                detach_weights=flag(detach_weights, "detach_weights"))
    return grad[0] if squeeze else grad


def _output_size(h: int, w: int, geometry: PoolGeometry, ceil_mode: bool) -> tuple[int, int]:
    kernel, stride, padding, dilation = geometry
    return (pool_output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode),
            pool_output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode))


def _vjp(x, grad_output, geometry: PoolGeometry, ceil_mode: bool, temperature: float, padding_value: float,
         window_max=None, detach_weights: bool = False):
    """:func:`softmax_pool2d_vjp` on checked arguments: ``x`` (N, C, H, W), ``grad_output`` (N, C, oh, ow).

    ``window_max``, if given, is ``F.max_pool2d(x, ...)`` (tiled windows only; saves recomputing it).
    ``detach_weights`` passes back ``w_i g`` (the weights held constant) instead.
    """
    kernel, stride, padding, dilation = geometry
    n, c, h, w = x.shape
    if not detach_weights and dilation == (1, 1) and stride == kernel and padding == (0, 0) and (
            not ceil_mode or (h % kernel[0] == 0 and w % kernel[1] == 0)):
        return _tiled_vjp(x, grad_output, kernel, temperature, window_max)
    oh, ow = grad_output.shape[-2:]
    win, _, padded, pads = _windows(x, geometry, ceil_mode, padding_value)
    weights = torch.softmax(win / temperature, dim=1)
    if detach_weights:
        local = weights * grad_output.reshape(n * c, 1, oh * ow)
    else:
        values = win.nan_to_num(neginf=0.0)  # padded positions have weight 0; keep them finite
        soft = (weights * values).sum(1, keepdim=True)
        local = weights * (1 + (values - soft) / temperature) * grad_output.reshape(n * c, 1, oh * ow)
    grad = F.fold(local, padded, kernel, dilation=dilation, stride=stride)
    return grad[:, 0, pads[2]: pads[2] + h, pads[0]: pads[0] + w].reshape(n, c, h, w)


def _tiled_vjp(x, grad_output, kernel, temperature, window_max=None):
    """:func:`softmax_pool2d_vjp` for non-overlapping, unpadded windows.

    Window position ``k = (i, j)`` of every output is the strided view ``x[..., i::kh, j::kw]``;
    one copy lays these views out as ``u[k]`` of shape (N, C, oh, ow), contiguous, so that every
    further step is contiguous elementwise work and the sums over a window are ``kh*kw - 1``
    additions. With :math:`u_k = (x_k - \\max_j x_j)/T`, :math:`e_k = \\exp(u_k)`,
    :math:`Z = \\sum_k e_k` and :math:`\\bar u = \\sum_k e_k u_k / Z`, the derivative
    :math:`w_k (1 + (x_k - s)/T)` is :math:`e_k (1 + u_k - \\bar u) / Z`.
    """
    n, c, h, w = x.shape
    (kh, kw), oh, ow = kernel, h // kernel[0], w // kernel[1]

    def windows(t):  # (kh, kw, N, C, oh, ow), a view of t
        return t[:, :, : oh * kh, : ow * kw].unflatten(3, (ow, kw)).unflatten(2, (oh, kh)).permute(3, 5, 0, 1, 2, 4)

    if kh * kw == 1:  # 1x1 windows with stride 1: the softmax pooling is the identity
        return grad_output.reshape(x.shape).clone()
    u = windows(x).clone(memory_format=torch.contiguous_format).flatten(0, 1)   # (kh*kw, N, C, oh, ow)
    top = window_max
    if top is None:
        top = torch.maximum(u[0], u[1])
        for part in u[2:]:
            top = torch.maximum(top, part)
    # below -1e4, exp underflows to 0 in every float dtype: clamping -inf there keeps e_k u_k = 0, not NaN
    u.sub_(top).div_(temperature).clamp_(min=-1e4)
    # the gradient's memory serves as scratch for e until the result is copied into it: one
    # allocation fewer (fresh memory costs page faults, as much as the arithmetic here)
    grad = x.new_empty(x.shape)
    e = torch.exp(u, out=grad.view(-1)[: u.numel()].view(u.shape))
    total = e[0] + e[1]
    weighted = e[0] * u[0]
    for k in range(1, len(u)):
        if k > 1:
            total += e[k]
        weighted.addcmul_(e[k], u[k])
    scale = grad_output / total                                            # g / Z
    offset = weighted.div_(total).neg_().add_(1).mul_(scale)              # (1 - sum_k e_k u_k / Z) g / Z
    torch.addcmul(offset, u, scale, out=u).mul_(e)                         # e_k (u_k + 1 - u_bar) g / Z
    for k, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
        # one strided copy per window position: a single permuted copy would loop over kw innermost
        # (short strided runs; slower on CPU when this was written: bench_pullbacks.py times the whole VJP)
        grad[:, :, i: oh * kh: kh, j: ow * kw: kw].copy_(u[k])
    if oh * kh < h:  # floor mode: the rows and columns that no window covers get 0
        grad[:, :, oh * kh:].zero_()
    if ow * kw < w:
        grad[:, :, :, ow * kw:].zero_()
    return grad


class _SoftmaxRoutedMaxPool(torch.autograd.Function):
    """Forward ``max_pool2d``; backward the vector-Jacobian product of the softmax pooling."""

    @staticmethod
    def forward(ctx, x, geometry, ceil_mode, temperature, padding_value, detach_weights=False):
        out = F.max_pool2d(x, *geometry, ceil_mode=ceil_mode)
        # the window maxima, for the backward pass (a copy: the caller may modify out in place)
        tiled = geometry.dilation == (1, 1) and geometry.stride == geometry.kernel and geometry.padding == (0, 0)
        ctx.save_for_backward(x, out.clone() if tiled and not ceil_mode and not detach_weights else None)
        ctx.params = (geometry, ceil_mode, temperature, padding_value)
        ctx.detach_weights = detach_weights
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, window_max = ctx.saved_tensors
        x4, squeeze = (x, False) if x.ndim == 4 else (x.unsqueeze(0), True)
        if squeeze and window_max is not None:
            window_max = window_max.unsqueeze(0)
        grad = _vjp(x4, grad.reshape(*x4.shape[:2], *grad.shape[-2:]), *ctx.params, window_max=window_max,
                    detach_weights=ctx.detach_weights)
        return (grad[0] if squeeze else grad), None, None, None, None, None


def softmax_routed_max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                              ceil_mode: bool = False, temperature: float = 0.3,
                              padding_value: float = -math.inf, *, detach_weights: bool = False) -> torch.Tensor:
    r"""``F.max_pool2d`` whose backward pass is that of :func:`softmax_pool2d` (the surrogate rule).

    Listing 2 of :cite:t:`satkiewicz2025tapping` builds it as ``hard.detach() + soft -
    soft.detach()``; here the forward pass is max-pooling alone and the backward pass
    :func:`softmax_pool2d_vjp`'s closed form.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W) or (C, H, W)
    kernel_size, stride, padding, dilation, ceil_mode
        As in ``F.max_pool2d``.
    temperature, padding_value
        Of the softmax pooling whose vector-Jacobian product is passed back.
    detach_weights : bool
        Pass back the product with the softmax weights held constant (the source's later rule,
        see :func:`softmax_pool2d_vjp`); default ``False``.

    Returns
    -------
    Tensor
        Exactly ``F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)``.
    """
    _check_pool_input(x)
    geometry = pool_geometry(kernel_size, stride, padding, dilation)
    return _SoftmaxRoutedMaxPool.apply(x, geometry, bool(ceil_mode), real(temperature, "temperature", low=0),
                                       check_padding_value(padding_value), flag(detach_weights, "detach_weights"))


class SoftMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``'s arguments, forward pass :func:`softmax_pool2d` (the soft branch itself).

    Parameters
    ----------
    kernel_size, stride, padding, dilation, ceil_mode
        As in :class:`torch.nn.MaxPool2d` (``return_indices`` is not supported).
    temperature : float
        :math:`T > 0`.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, temperature: float = 0.3):
        super().__init__(kernel_size, stride, padding, dilation, return_indices=False, ceil_mode=ceil_mode)
        self.temperature = real(temperature, "temperature", low=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                              self.temperature)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"

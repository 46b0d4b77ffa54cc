r"""Excitation pullbacks: input gradients with soft ReLU gates and softmax-pool routing.

Source :cite:p:`satkiewicz2025tapping` keeps a ReLU network's forward pass and changes only its
backward pass: every ReLU passes the incoming gradient times :math:`\sigma(z/T)` instead of
:math:`\1(z > 0)`, and every max-pooling routes it as a softmax pooling at temperature :math:`T`
would. The input gradient of a class logit under these rules is the *excitation pullback*.

The rules are installed by a :class:`torch.overrides.TorchFunctionMode` that is active only while
the model's forward pass runs (entered and left by forward hooks on every submodule). It intercepts
the *functions* ``torch.relu``, ``torch.relu_``, ``F.relu`` (in place or not), ``Tensor.relu``,
``Tensor.relu_``, ``F.max_pool2d`` (also with ``return_indices``) and ``torch.max_pool2d``, so it
covers ``nn.ReLU``/``nn.MaxPool2d`` modules (which call those functions) and ReLUs called inside a
``forward`` alike, without touching the model: restoring it means removing the hooks. Related
functions for which no rule exists (``relu6``, ``threshold``, other max-poolings) raise
:class:`NotImplementedError` naming the call rather than keeping their vanilla gradient. ReLUs
written as ``clamp(min=0)``, ``torch.maximum`` or ``torch.where`` cannot be recognised.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from ._validate import real

__all__ = [
    "surrogate_gradients",
    "excitation_pullback",
    "input_gradient",
    "guided_backprop",
    "gate_patterns",
    "relu_inputs",
    "path_correlation",
    "softmax_pool2d",
    "SoftMaxPool2d",
    "pool_output_size",
    "projected_gradient_ascent",
    "check_target",
    "remap_legacy_densenet_keys",
    "load_imagenet_checkpoint",
]


# ---------------------------------------------------------------------------------------------
# Validation shared by the attribution functions
# ---------------------------------------------------------------------------------------------

def _check_temperature(temperature: float, name: str = "temperature") -> float:
    return real(temperature, name, low=0)


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating tensor of shape (N, ...) with a batch axis, got {shape}")


def check_target(target, n: int, n_classes: int, device=None) -> torch.Tensor:
    """Validate class indices and broadcast them to one per sample.

    Parameters
    ----------
    target : int or Tensor of shape () or (N,)
        Class indices in ``[0, n_classes)``.
    n, n_classes : int
        Batch size and number of classes (outputs of the model).

    Returns
    -------
    Tensor, long, shape (N,)
    """
    if isinstance(target, bool):
        raise ValueError(f"target must be an int or an integer tensor of shape ({n},), got {target!r}")
    if isinstance(target, int):
        target = torch.full((n,), target, dtype=torch.long, device=device)
    elif isinstance(target, torch.Tensor) and not target.is_floating_point() and target.dtype != torch.bool:
        if target.ndim == 0:
            target = target.expand(n)
        if target.shape != (n,):
            raise ValueError(f"target must have shape ({n},) (one class per sample), got {tuple(target.shape)}")
        target = target.to(device=device, dtype=torch.long)
    else:
        raise ValueError(f"target must be an int or an integer tensor of shape ({n},), got {target!r}")
    if len(target) and not (0 <= int(target.min()) and int(target.max()) < n_classes):
        raise ValueError(f"target must lie in [0, {n_classes}) (the model has {n_classes} outputs), "
                         f"got values in [{int(target.min())}, {int(target.max())}]")
    return target


# torch's messages for an input whose shape does not fit a layer
_SHAPE_ERROR = re.compile(r"shape|size mismatch|must match the size|Expected .*input|channels|dimension", re.IGNORECASE)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = model(x)
    except NotImplementedError:  # a call without a backward rule: not about x
        raise
    except RuntimeError as err:
        if not _SHAPE_ERROR.search(str(err)):  # out of memory, devices, dtypes: not about x's shape
            raise
        raise ValueError(f"x of shape {tuple(x.shape)} does not fit the model: {err}") from err
    if not (isinstance(out, torch.Tensor) and out.ndim == 2 and len(out) == len(x)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must map x of shape {tuple(x.shape)} to logits (N, classes), got {shape}")
    return out


def input_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    r"""Gradient of the target logit with respect to the input (vanilla gradient, "saliency").

    Computed with whatever backward rules are active: inside :func:`surrogate_gradients` this is
    the excitation pullback. Gradients are taken with ``torch.autograd.grad``, so the parameters'
    ``.grad`` are left untouched; grad mode is switched on even under ``torch.no_grad``. The model
    is called as it is (call ``model.eval()`` first for BatchNorm to use its running statistics).

    Parameters
    ----------
    model : nn.Module
        Maps a batch ``(N, ...)`` to logits ``(N, classes)``.
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
        Class whose logit is differentiated, per sample.

    Returns
    -------
    Tensor, shape of ``x``
        :math:`\partial f_{c_n}(x_n) / \partial x_n` for every sample ``n``.
    """
    _check_input(x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = _logits(model, xg)
        target = check_target(target, len(x), out.shape[1], device=out.device)
        (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return grad


# ---------------------------------------------------------------------------------------------
# Softmax pooling: the soft branch of the pooling rule
# ---------------------------------------------------------------------------------------------

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


def _pool_params(kernel_size, stride, padding, dilation):
    kernel = _pair(kernel_size)
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _pair(stride)
    padding, dilation = _pair(padding), _pair(dilation)
    if not (all(k >= 1 for k in kernel) and all(s >= 1 for s in stride) and all(d >= 1 for d in dilation)
            and all(0 <= p <= k // 2 for p, k in zip(padding, kernel))):
        raise ValueError(f"pooling needs kernel_size, stride, dilation >= 1 and 0 <= padding <= kernel_size // 2, "
                         f"got kernel_size={kernel}, stride={stride}, padding={padding}, dilation={dilation}")
    return kernel, stride, padding, dilation


def _windows(x: torch.Tensor, kernel, stride, padding, dilation, ceil_mode, padding_value: float = -math.inf):
    """Pooling windows of ``x`` (N, C, H, W) as a tensor (N*C, kh*kw, L), padded positions ``padding_value``.

    Returns the windows, the output size (oh, ow) and the padded size with the pads, for folding.
    """
    n, c, h, w = x.shape
    oh = pool_output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    # extra bottom/right padding so that the last (ceil-mode) window fits; never negative here
    extra_h = max(0, (oh - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1 - (h + 2 * padding[0]))
    extra_w = max(0, (ow - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1 - (w + 2 * padding[1]))
    pads = (padding[1], padding[1] + extra_w, padding[0], padding[0] + extra_h)
    xp = F.pad(x.reshape(n * c, 1, h, w), pads, value=padding_value)
    # with this padding unfold's window grid is exactly max_pool2d's (oh, ow)
    win = F.unfold(xp, kernel, dilation=dilation, stride=stride)  # (N*C, kh*kw, oh*ow)
    return win, (oh, ow), xp.shape[2:], pads


def _check_padding_value(value) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and (value == 0 or value == -math.inf)):
        raise ValueError(f"padding_value must be -inf (max-pooling's padding) or 0.0 (Listing 2's), got {value!r}")
    return float(value)


def _check_pool_input(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating tensor of shape (N, C, H, W) or (C, H, W), got {shape}")
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
    temperature = _check_temperature(temperature)
    padding_value = _check_padding_value(padding_value)
    x4, squeeze = _check_pool_input(x)
    kernel, stride, padding, dilation = _pool_params(kernel_size, stride, padding, dilation)
    win, (oh, ow), _, _ = _windows(x4, kernel, stride, padding, dilation, ceil_mode, padding_value)
    weights = torch.softmax(win / temperature, dim=1)
    out = (weights * win.nan_to_num(neginf=0.0)).sum(1).reshape(*x4.shape[:2], oh, ow)
    return out[0] if squeeze else out


def _softmax_pool_backward(x: torch.Tensor, grad_out: torch.Tensor, kernel, stride, padding, dilation, ceil_mode,
                           temperature: float, padding_value: float = -math.inf) -> torch.Tensor:
    r"""Vector-Jacobian product of :func:`softmax_pool2d` at ``x`` (N, C, H, W).

    With :math:`s = \sum_i w_i x_i`, :math:`\partial s / \partial x_i = w_i (1 + (x_i - s)/T)`; the
    windows' contributions are summed back onto the input by ``F.fold``.
    """
    n, c, h, w = x.shape
    if dilation == (1, 1) and stride == kernel and padding == (0, 0) and (
            not ceil_mode or (h % kernel[0] == 0 and w % kernel[1] == 0)):
        return _tiled_softmax_pool_backward(x, grad_out, kernel, temperature)
    win, (oh, ow), padded, pads = _windows(x, kernel, stride, padding, dilation, ceil_mode, padding_value)
    weights = torch.softmax(win / temperature, dim=1)
    values = win.nan_to_num(neginf=0.0)  # padded positions have weight 0; keep them finite
    soft = (weights * values).sum(1, keepdim=True)
    g = grad_out.reshape(n * c, 1, oh * ow)
    local = weights * (1 + (values - soft) / temperature) * g
    grad = F.fold(local, padded, kernel, dilation=dilation, stride=stride)
    return grad[:, 0, pads[2]: pads[2] + h, pads[0]: pads[0] + w].reshape(n, c, h, w)


def _tiled_softmax_pool_backward(x, grad_out, kernel, temperature):
    """:func:`_softmax_pool_backward` for non-overlapping, unpadded windows.

    The window position (i, j) of every output is the strided view ``x[..., i::kh, j::kw]``, so the
    softmax over a window is elementwise work on kh*kw views of the output's size: no unfold, no
    reductions over non-contiguous axes.
    """
    n, c, h, w = x.shape
    (kh, kw), oh, ow = kernel, h // kernel[0], w // kernel[1]
    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    parts = [x[:, :, i: oh * kh: kh, j: ow * kw: kw] for i, j in offsets]        # each (N, C, oh, ow)
    top = parts[0]
    for part in parts[1:]:
        top = torch.maximum(top, part)
    weights = [(part - top).div_(temperature).exp_() for part in parts]
    total = sum(weights[1:], weights[0].clone())
    weights = [weight.div_(total) for weight in weights]
    soft = sum((weight * part for weight, part in zip(weights[1:], parts[1:])), weights[0] * parts[0])
    grad = x.new_zeros(x.shape)
    for (i, j), weight, part in zip(offsets, weights, parts):
        grad[:, :, i: oh * kh: kh, j: ow * kw: kw] = (part - soft).div_(temperature).add_(1).mul_(weight).mul_(grad_out)
    return grad


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
        self.temperature = _check_temperature(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                              self.temperature)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"


# ---------------------------------------------------------------------------------------------
# Backward rules as autograd functions (forward exactly the original operation)
# ---------------------------------------------------------------------------------------------

class _SurrogateReLU(torch.autograd.Function):
    """Forward ``relu``; backward ``grad * sigmoid(z / T)`` (Listing 1 of the source)."""

    @staticmethod
    def forward(ctx, z, temperature, inplace):
        ctx.temperature = temperature
        if inplace:
            ctx.save_for_backward(z.clone())
            ctx.mark_dirty(z)
            return z.relu_()
        ctx.save_for_backward(z)
        return torch.relu(z)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return z.div(ctx.temperature).sigmoid_().mul_(grad), None, None


class _GuidedReLU(torch.autograd.Function):
    """Forward ``relu``; backward ``max(grad, 0) * 1(z > 0)`` (guided backpropagation)."""

    @staticmethod
    def forward(ctx, z, inplace):
        if inplace:
            ctx.save_for_backward(z > 0)
            ctx.mark_dirty(z)
            return z.relu_()
        ctx.save_for_backward(z > 0)
        return torch.relu(z)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (active,) = ctx.saved_tensors
        return grad.clamp(min=0) * active, None


class _SoftmaxRoutedMaxPool(torch.autograd.Function):
    """Forward ``max_pool2d``; backward the vector-Jacobian product of the softmax pooling."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode, temperature, padding_value):
        ctx.save_for_backward(x)
        ctx.params = (kernel, stride, padding, dilation, ceil_mode, temperature, padding_value)
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        x4, squeeze = (x, False) if x.ndim == 4 else (x.unsqueeze(0), True)
        g = _softmax_pool_backward(x4, grad.reshape(x4.shape[0], x4.shape[1], *grad.shape[-2:]), *ctx.params)
        return (g[0] if squeeze else g), None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# The mode that dispatches ReLU and max-pool calls to the rules
# ---------------------------------------------------------------------------------------------

_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_}
_MAXPOOL = {F.max_pool2d, torch.max_pool2d}
_MAXPOOL_INDICES = {F.max_pool2d_with_indices}
_UNSUPPORTED = {F.relu6, F.threshold, torch.threshold, torch.threshold_, F.threshold_, F.max_pool1d, F.max_pool3d,
                F.max_pool1d_with_indices, F.max_pool3d_with_indices, torch.max_pool1d, torch.max_pool3d,
                F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.fractional_max_pool2d,
                F.fractional_max_pool3d, F.lp_pool2d, F.hardtanh, F.hardtanh_}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _bind(args, kwargs, names):
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


class _BackwardRules(TorchFunctionMode):
    """Route ReLU and max-pool calls to ``relu_rule(z, inplace)`` and ``pool_rule(x, *params)``."""

    def __init__(self, relu_rule: Callable, pool_rule: Callable | None):
        super().__init__()
        self.relu_rule, self.pool_rule = relu_rule, pool_rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU:
            bound = _bind(args, kwargs, ("input", "inplace"))
            return self.relu_rule(bound["input"], bool(bound.get("inplace", False)))
        if func in _RELU_INPLACE:
            return self.relu_rule(args[0], True)
        if self.pool_rule is not None and (func in _MAXPOOL or func in _MAXPOOL_INDICES):
            b = _bind(args, kwargs, _POOL_ARGS)
            kernel, stride, padding, dilation = _pool_params(b["kernel_size"], b.get("stride"), b.get("padding", 0),
                                                             b.get("dilation", 1))
            x, ceil_mode = b["input"], bool(b.get("ceil_mode", False))
            out = self.pool_rule(x, kernel, stride, padding, dilation, ceil_mode)
            if func in _MAXPOOL_INDICES or b.get("return_indices", False):
                with torch.no_grad():
                    _, indices = F.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
                return out, indices
            return out
        if func in _UNSUPPORTED:
            name = getattr(func, "__name__", repr(func))
            raise NotImplementedError(f"the model calls {func.__module__ or 'torch'}.{name}, for which these backward "
                                      f"rules have none; its gradient would silently stay the vanilla one")
        return func(*args, **kwargs)


_ACTIVE: set[int] = set()


@contextlib.contextmanager
def _backward_rules(model: nn.Module, relu_rule: Callable, pool_rule: Callable | None) -> Iterator[nn.Module]:
    """Install a :class:`_BackwardRules` mode during every forward call of ``model`` (or a submodule)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if id(model) in _ACTIVE:
        raise RuntimeError("backward rules are already installed on this model; nesting them is not supported")
    mode = _BackwardRules(relu_rule, pool_rule)
    depth = [0]

    def enter(module, args):
        if depth[0] == 0:
            mode.__enter__()
        depth[0] += 1

    def leave(module, args, output):
        depth[0] -= 1
        if depth[0] == 0:
            mode.__exit__(None, None, None)

    handles = []
    _ACTIVE.add(id(model))
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        _ACTIVE.discard(id(model))


def surrogate_gradients(model: nn.Module, temperature: float = 0.3, pool_temperature: float | None = None,
                        pool_padding_value: float = -math.inf) -> contextlib.AbstractContextManager:
    r"""Context manager: inside it, ``model``'s backward pass uses the excitation rules.

    Every ReLU keeps its forward pass exactly and passes ``grad * sigmoid(z / T)`` backwards
    (Listing 1 of :cite:t:`satkiewicz2025tapping`); every 2-d max-pooling keeps its forward pass
    exactly and passes back the vector-Jacobian product of :func:`softmax_pool2d` with the same
    kernel, stride, padding, dilation and ``ceil_mode`` (Listing 2, with :math:`-\infty` padding). The
    model itself is not modified: only hooks are added (and removed on exit, also after an
    exception). Functional calls are covered (see the module docstring); unsupported relatives raise
    ``NotImplementedError``.

    Parameters
    ----------
    model : nn.Module
    temperature : float
        :math:`T > 0` of the ReLU gates :math:`\sigma(z/T)`.
    pool_temperature : float, optional
        Temperature of the softmax pooling; default ``temperature`` (as in the source).
    pool_padding_value : float
        ``-inf`` (default, max-pooling's padding) or ``0.0`` (Listing 2's zero padding through
        ``F.unfold``), see :func:`softmax_pool2d`.

    Examples
    --------
    >>> with surrogate_gradients(model, 0.3):
    ...     v = input_gradient(model, x, target)   # the excitation pullback
    """
    temperature = _check_temperature(temperature)
    pool_temperature = temperature if pool_temperature is None else _check_temperature(pool_temperature,
                                                                                         "pool_temperature")
    pool_padding_value = _check_padding_value(pool_padding_value)

    def relu_rule(z, inplace):
        return _SurrogateReLU.apply(z, temperature, inplace)

    def pool_rule(x, kernel, stride, padding, dilation, ceil_mode):
        return _SoftmaxRoutedMaxPool.apply(x, kernel, stride, padding, dilation, ceil_mode, pool_temperature,
                                           pool_padding_value)

    return _backward_rules(model, relu_rule, pool_rule)


def excitation_pullback(model: nn.Module, x: torch.Tensor, target, temperature: float = 0.3,
                        pool_temperature: float | None = None, pool_padding_value: float = -math.inf) -> torch.Tensor:
    r"""The excitation pullback :math:`v_\Gamma(x)` of the target logit, batched.

    The input gradient of the target logit under :func:`surrogate_gradients`: the ordinary forward
    pass, ReLU derivatives replaced by :math:`\sigma(z/T)` and max-pool routing by softmax-pool
    routing :cite:p:`satkiewicz2025tapping` (Sections 4, 5.2, 5.3).

    Parameters
    ----------
    model : nn.Module
        Maps ``(N, ...)`` to logits ``(N, classes)``; put it in eval mode first.
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
        Class indices in ``[0, classes)``.
    temperature, pool_temperature, pool_padding_value : float
        See :func:`surrogate_gradients`.

    Returns
    -------
    Tensor, shape of ``x``
    """
    temperature = _check_temperature(temperature)
    with surrogate_gradients(model, temperature, pool_temperature, pool_padding_value):
        return input_gradient(model, x, target)


def guided_backprop(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    r"""Guided backpropagation :cite:p:`springenberg2015striving`, all ReLU call paths covered.

    Each ReLU passes back :math:`\max(g, 0)\,\1(z > 0)`; max-pooling keeps its usual routing.
    Unlike Captum's ``GuidedBackprop`` (which hooks ``nn.ReLU`` modules only), ReLUs called
    functionally are covered too.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)

    Returns
    -------
    Tensor, shape of ``x``
    """
    with _backward_rules(model, lambda z, inplace: _GuidedReLU.apply(z, inplace), None):
        return input_gradient(model, x, target)


def relu_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    r"""The pre-activations :math:`z` entering every ReLU call of ``model`` on ``x``, functional calls included.

    The forward pass runs under ``torch.no_grad`` with the model as it is (train/eval mode, buffers:
    call ``model.eval()`` first, a BatchNorm in training mode would update its statistics).

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)

    Returns
    -------
    list of Tensor, shape (N, m_l)
        One per ReLU call in call order, unit axes flattened.
    """
    _check_input(x)
    inputs: list[torch.Tensor] = []

    def record(z, inplace):
        inputs.append(z.reshape(len(z), -1).clone())
        return z.relu_() if inplace else torch.relu(z)

    with _backward_rules(model, record, None), torch.no_grad():
        _logits(model, x)
    return inputs


def gate_patterns(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    r"""The gates :math:`\1(z > 0)` of every ReLU call (see :func:`relu_inputs`): bool, shapes (N, m_l)."""
    return [z > 0 for z in relu_inputs(model, x)]


def path_correlation(gates_a: Sequence[torch.Tensor], gates_b: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Pearson correlation, per sample, of two rank-one path tensors :math:`\bigotimes_\ell a_\ell` and
    :math:`\bigotimes_\ell b_\ell`.

    The source's Hypothesis 1 is stated for gate tensors :math:`\tilde G(x) \in \R^{P_1}`,
    :math:`P_1 = \prod_\ell d_\ell` :cite:p:`satkiewicz2025tapping`, far too many entries to list.
    For rank-one tensors the moments over paths factorise, :math:`\operatorname{mean}(A B) =
    \prod_\ell \operatorname{mean}_i(a_\ell[i] b_\ell[i])` and so on, so the correlation is exact
    from per-layer means.

    Parameters
    ----------
    gates_a, gates_b : sequences of Tensor, each of shape (N, m_l)
        Gates of the same layers (bool or values in [0, 1]), e.g. from :func:`gate_patterns`.

    Returns
    -------
    Tensor, float64, shape (N,)
        NaN where a tensor is constant over paths.
    """
    if len(gates_a) != len(gates_b) or not gates_a or any(a.shape != b.shape or a.ndim != 2
                                                         for a, b in zip(gates_a, gates_b)):
        raise ValueError("gates_a and gates_b must list the same number (>= 1) of (N, m_l) tensors of equal shapes")
    mean_a = mean_b = mean_ab = mean_aa = mean_bb = 1.0
    for a, b in zip(gates_a, gates_b):
        a, b = a.double(), b.double()
        mean_a, mean_b = mean_a * a.mean(1), mean_b * b.mean(1)
        mean_ab, mean_aa, mean_bb = mean_ab * (a * b).mean(1), mean_aa * (a * a).mean(1), mean_bb * (b * b).mean(1)
    return (mean_ab - mean_a * mean_b) / ((mean_aa - mean_a**2) * (mean_bb - mean_b**2)).sqrt()


# ---------------------------------------------------------------------------------------------
# Projected gradient ascent (Section 5.1 of the source)
# ---------------------------------------------------------------------------------------------

def projected_gradient_ascent(model: nn.Module, x: torch.Tensor, target, steps: int = 10, step_size: float = 0.72,
                              radius: float = 3.6, temperature: float = 0.3, method: str = "pullback",
                              bounds: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    r"""Move ``x`` towards a higher target logit along pullbacks or gradients, within an L2 ball.

    Each step adds ``step_size`` times the direction divided by its L2 norm (per sample), then
    projects onto the L2 ball of ``radius`` around the original ``x`` and clamps to ``bounds``.
    Clamping after the ball projection stays inside the ball (each coordinate moves towards
    ``x``'s, which lies in ``bounds``), so the result lies in both sets. The source's protocol
    :cite:p:`satkiewicz2025tapping` is 10 steps of length 20 in a ball of radius 100 on 224x224x3
    images in [-1, 1]; the defaults are the same per-pixel RMS on 28x28 images in [0, 1].

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
        Values in ``bounds``.
    target : int or Tensor of shape (N,)
    steps : int
        Number of steps, >= 1.
    step_size, radius : float
        L2 length of a step and of the largest perturbation, > 0.
    temperature : float
        Of the excitation pullback (``method="pullback"``).
    method : {"pullback", "gradient"}
    bounds : (low, high)
        Valid pixel range.

    Returns
    -------
    Tensor, shape of ``x``
        The perturbed inputs.
    """
    _check_input(x)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not (step_size > 0 and radius > 0):
        raise ValueError(f"step_size and radius must be > 0, got step_size={step_size!r}, radius={radius!r}")
    if method not in ("pullback", "gradient"):
        raise ValueError(f"method must be 'pullback' or 'gradient', got {method!r}")
    low, high = bounds
    if not low < high:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    if bool((x < low).any() or (x > high).any()):
        raise ValueError(f"x must lie in bounds {tuple(bounds)}")
    temperature = _check_temperature(temperature)

    def norm(v):
        return v.flatten(1).norm(dim=1).reshape(-1, *[1] * (v.ndim - 1))

    x0 = x.detach()
    current = x0.clone()
    for _ in range(steps):
        if method == "pullback":
            direction = excitation_pullback(model, current, target, temperature)
        else:
            direction = input_gradient(model, current, target)
        current = current + step_size * direction / norm(direction).clamp_min(torch.finfo(x.dtype).tiny)
        delta = current - x0
        current = x0 + delta * (radius / norm(delta)).clamp(max=1.0)
        current = current.clamp(low, high)
    return current


# ---------------------------------------------------------------------------------------------
# Optional: torchvision ImageNet checkpoints from a local file (never downloaded here)
# ---------------------------------------------------------------------------------------------

_LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                                  r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def remap_legacy_densenet_keys(state_dict: dict) -> dict:
    """Rename DenseNet keys of the legacy layout (``...denselayer1.norm.1.weight``) to torchvision's
    current one (``...denselayer1.norm1.weight``), as torchvision does when it loads its own
    ``DenseNet121_Weights.IMAGENET1K_V1`` file. Other keys are kept.

    Parameters
    ----------
    state_dict : dict of str to Tensor

    Returns
    -------
    dict
        A new dict; the tensors are the same objects.
    """
    out = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_imagenet_checkpoint(name: str, path, map_location="cpu") -> nn.Module:
    """A torchvision ImageNet model with weights read from a local checkpoint file, in eval mode.

    ``name`` is a torchvision constructor (``"resnet50"``, ``"vgg11_bn"``, ``"densenet121"``, ...),
    built with ``weights=None`` (nothing is downloaded); DenseNet files in the legacy key layout are
    remapped by :func:`remap_legacy_densenet_keys`. Loading is strict: a file for another
    architecture raises.

    Parameters
    ----------
    name : str
    path : str or os.PathLike
        A ``torch.save``'d state dict (e.g. from ``$TORCH_HOME/hub/checkpoints``).
    map_location : str or torch.device

    Returns
    -------
    nn.Module
    """
    import torchvision

    constructor = getattr(torchvision.models, name, None)
    if not isinstance(name, str) or constructor is None or not callable(constructor):
        raise ValueError(f"name must be a torchvision.models constructor such as 'resnet50', got {name!r}")
    model = constructor(weights=None)
    state = torch.load(path, map_location=map_location, weights_only=True)
    if name.startswith("densenet"):
        state = remap_legacy_densenet_keys(state)
    model.load_state_dict(state)
    return model.eval()

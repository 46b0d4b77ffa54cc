r"""The excitation rules: ReLU's and max-pooling's forward passes kept, their backward passes soft.

Source :cite:p:`satkiewicz2025tapping` keeps a ReLU network's forward pass and changes only its
backward pass: every ReLU passes the incoming gradient times :math:`\sigma(z/T)` instead of
:math:`\1(z > 0)`, and every max-pooling routes it as a softmax pooling at temperature :math:`T`
would (:mod:`nbsupport.softpool`). The input gradient of a class logit under these rules is the
*excitation pullback*. :func:`surrogate_relu` and :func:`softmax_routed_max_pool2d` are the two
rules as functions; :func:`surrogate_gradients` routes every ReLU and max-pool call of a model to
them (:func:`nbsupport.intercept.route_calls`, functional calls included).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import real
from .intercept import route_calls
from .saliency import input_gradient
from .softpool import PoolGeometry, check_padding_value, pool_geometry, softmax_pool2d_vjp

__all__ = ["surrogate_relu", "softmax_routed_max_pool2d", "surrogate_gradients", "excitation_pullback"]


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


class _SoftmaxRoutedMaxPool(torch.autograd.Function):
    """Forward ``max_pool2d``; backward the vector-Jacobian product of the softmax pooling."""

    @staticmethod
    def forward(ctx, x, geometry, ceil_mode, temperature, padding_value):
        ctx.save_for_backward(x)
        ctx.params = (geometry, ceil_mode, temperature, padding_value)
        return F.max_pool2d(x, *geometry, ceil_mode=ceil_mode)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        geometry, ceil_mode, temperature, padding_value = ctx.params
        return (softmax_pool2d_vjp(x, grad, *geometry, ceil_mode, temperature, padding_value),
                None, None, None, None)


def surrogate_relu(z: torch.Tensor, temperature: float = 0.3, inplace: bool = False) -> torch.Tensor:
    r"""``relu(z)`` whose backward pass is ``grad * sigmoid(z / T)`` (Listing 1 of the source).

    Parameters
    ----------
    z : Tensor, any shape
    temperature : float
        :math:`T > 0`.
    inplace : bool
        Overwrite ``z`` with the result (as ``F.relu(z, inplace=True)``).

    Returns
    -------
    Tensor, shape of ``z``
        Exactly ``relu(z)``.
    """
    return _SurrogateReLU.apply(z, real(temperature, "temperature", low=0), bool(inplace))


def softmax_routed_max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                              ceil_mode: bool = False, temperature: float = 0.3,
                              padding_value: float = -math.inf) -> torch.Tensor:
    r"""``F.max_pool2d`` whose backward pass is that of :func:`~nbsupport.softpool.softmax_pool2d`.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W) or (C, H, W)
    kernel_size, stride, padding, dilation, ceil_mode
        As in ``F.max_pool2d``.
    temperature, padding_value
        Of the softmax pooling whose vector-Jacobian product is passed back
        (:func:`~nbsupport.softpool.softmax_pool2d_vjp`).

    Returns
    -------
    Tensor
        Exactly ``F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)``.
    """
    geometry = pool_geometry(kernel_size, stride, padding, dilation)
    return _SoftmaxRoutedMaxPool.apply(x, geometry, bool(ceil_mode), real(temperature, "temperature", low=0),
                                       check_padding_value(padding_value))


def surrogate_gradients(model: nn.Module, temperature: float = 0.3, pool_temperature: float | None = None,
                        pool_padding_value: float = -math.inf) -> contextlib.AbstractContextManager:
    r"""Context manager: inside it, ``model``'s backward pass uses the excitation rules.

    Every ReLU keeps its forward pass exactly and passes ``grad * sigmoid(z / T)`` backwards
    (Listing 1 of :cite:t:`satkiewicz2025tapping`); every 2-d max-pooling keeps its forward pass
    exactly and passes back the vector-Jacobian product of
    :func:`~nbsupport.softpool.softmax_pool2d` with the same kernel, stride, padding, dilation and
    ``ceil_mode`` (Listing 2, with :math:`-\infty` padding). The model itself is not modified:
    only hooks are added (and removed on exit, also after an exception). Functional calls are
    covered (see :mod:`nbsupport.intercept`); unsupported relatives raise ``NotImplementedError``.

    Parameters
    ----------
    model : nn.Module
    temperature : float
        :math:`T > 0` of the ReLU gates :math:`\sigma(z/T)`.
    pool_temperature : float, optional
        Temperature of the softmax pooling; default ``temperature`` (as in the source).
    pool_padding_value : float
        ``-inf`` (default, max-pooling's padding) or ``0.0`` (Listing 2's zero padding through
        ``F.unfold``), see :func:`~nbsupport.softpool.softmax_pool2d`.

    Examples
    --------
    >>> with surrogate_gradients(model, 0.3):
    ...     v = input_gradient(model, x, target)   # the excitation pullback
    """
    temperature = real(temperature, "temperature", low=0)
    pool_temperature = temperature if pool_temperature is None else real(pool_temperature, "pool_temperature", low=0)
    pool_padding_value = check_padding_value(pool_padding_value)

    def relu_rule(z, inplace):
        return _SurrogateReLU.apply(z, temperature, inplace)

    def pool_rule(x, geometry: PoolGeometry, ceil_mode):
        return _SoftmaxRoutedMaxPool.apply(x, geometry, ceil_mode, pool_temperature, pool_padding_value)

    return route_calls(model, relu_rule, pool_rule)


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
    with surrogate_gradients(model, temperature, pool_temperature, pool_padding_value):
        return input_gradient(model, x, target)

r"""The excitation rules: ReLU's and max-pooling's forward passes kept, their backward passes soft.

Source :cite:p:`satkiewicz2025tapping` keeps a ReLU network's forward pass and changes only its
backward pass: every ReLU passes the incoming gradient times :math:`\sigma(z/T)` instead of
:math:`\1(z > 0)`, and every max-pooling routes it as a softmax pooling at temperature :math:`T`
would (:mod:`nbsupport.pullbacks.softpool`). The input gradient of a class logit under these
rules is the *excitation pullback*. :func:`surrogate_relu` and
:func:`~nbsupport.pullbacks.softpool.softmax_routed_max_pool2d` are the two rules as functions;
:func:`surrogate_gradients` routes every ReLU and max-pool call of a model to them
(:func:`nbsupport.intercept.route_calls`, functional calls included).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .._validate import flag, real
from ..intercept import PoolGeometry, relu_forward_saving, route_calls
from ..saliency import input_gradient
from .softpool import check_padding_value, softmax_routed_max_pool2d

__all__ = ["surrogate_relu", "SurrogateReLU", "surrogate_gradients", "excitation_pullback"]

# z / T above which the fused kernel passes grad unchanged: sigmoid(z / T) rounds to 1 there in
# float32 and float64 (from about 17.4 and 37.5); below it the kernel agrees with sigmoid to a few
# ulp (tested)
_GATE_SATURATES = 40.0


def _fused_gate_available(op=None) -> bool:
    """Feature test for the fused gate: does ``op`` compute ``grad * sigmoid(beta z)``?

    ``op`` defaults to ``torch.ops.aten.softplus_backward``, an internal ATen operator with no
    stability promise: its name, signature ``(grad, z, beta, threshold)`` or meaning may change in
    a PyTorch release. So it is used only if it exists and, on a probe in float64 and float32,
    gives ``grad * sigmoid(beta z)`` below the threshold and ``grad`` above it; anything else
    (missing, an exception, another result) answers ``False`` and the rule takes the three-pass
    computation (:func:`_three_pass_gate`).
    """
    if op is None:
        try:
            op = torch.ops.aten.softplus_backward
        except (AttributeError, RuntimeError):
            return False
    beta = 1.0 / 0.3
    for dtype in (torch.float64, torch.float32):
        z = torch.tensor([-6.0, -0.3, 0.0, 0.1, 2.0, 13.0, 20.0], dtype=dtype)
        grad = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5, 4.0], dtype=dtype)
        x = z.double() * beta
        # the formula in plain float64 Python (independent of torch's kernels)
        want = torch.tensor([g * (1.0 if v > _GATE_SATURATES else 1.0 / (1.0 + math.exp(-v)))
                             for g, v in zip(grad.double().tolist(), x.tolist())], dtype=torch.float64)
        try:
            got = op(grad, z, beta, _GATE_SATURATES)
        except Exception:  # noqa: BLE001 - any failure of an internal op means: do not use it
            return False
        if not (isinstance(got, torch.Tensor) and got.dtype == dtype and got.shape == z.shape):
            return False
        if not torch.allclose(got.double(), want, rtol=64 * torch.finfo(dtype).eps, atol=0.0):
            return False
    return True


#: Whether the ReLU rule's backward pass uses the fused kernel (decided once, at import, by
#: :func:`_fused_gate_available`); ``False`` selects the three-pass fallback everywhere.
_FUSED_GATE = _fused_gate_available()


def _three_pass_gate(grad: torch.Tensor, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``grad * sigmoid(z / T)`` in three elementwise passes (divide, sigmoid, multiply): the
    fallback, and the route of float16/bfloat16 (whose ``exp`` overflows below the fused threshold)."""
    return z.div(temperature).sigmoid_().mul_(grad)


def _sigmoid_gate_vjp(grad: torch.Tensor, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``grad * sigmoid(z / T)``, in one pass where possible.

    The derivative of ``softplus(z, beta=1/T)`` is ``sigmoid(z / T)``, and its backward kernel
    (``aten::softplus_backward``, elementwise and vectorised) computes ``grad * sigmoid(z / T)``
    reading each tensor once, as ``threshold_backward`` does for ReLU's vanilla rule; above its
    threshold it passes ``grad`` (the gate is 1 to the last bit there). That kernel is internal to
    PyTorch, so it is used only when the feature test :func:`_fused_gate_available` passed
    (``_FUSED_GATE``) and for float32/float64; otherwise :func:`_three_pass_gate` computes the same
    product (to a few ulp; both routes are tested against a plain-Python sigmoid).
    """
    if _FUSED_GATE and z.dtype in (torch.float32, torch.float64) and grad.dtype == z.dtype:
        return torch.ops.aten.softplus_backward(grad, z, 1.0 / temperature, _GATE_SATURATES)
    return _three_pass_gate(grad, z, temperature)


class _SurrogateReLU(torch.autograd.Function):
    """Forward ``relu``; backward ``grad * sigmoid(z / T)`` (Listing 1 of the source).

    An in-place ReLU overwrites ``z``, so the forward pass must keep a copy of it anyway: it keeps
    the gate ``sigmoid(z / T)`` instead (same memory, computed once), and the backward pass is one
    multiplication. Otherwise ``z`` itself is kept and the gate computed in the backward pass.
    """

    @staticmethod
    def forward(ctx, z, temperature, inplace):
        ctx.temperature, ctx.gated = temperature, bool(inplace)
        return relu_forward_saving(ctx, z, z.div(temperature).sigmoid_() if inplace else z, inplace)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        if ctx.gated:
            return grad * saved, None, None
        return _sigmoid_gate_vjp(grad, saved, ctx.temperature), None, None


class _ExcitedReLU(torch.autograd.Function):
    """Forward ``relu``; backward ``grad * excitation(z)`` for an excitation function of one's own.

    The gate ``excitation(z)`` is computed in the forward pass, before an in-place ReLU could
    overwrite ``z``, and kept for the backward pass.
    """

    @staticmethod
    def forward(ctx, z, excitation, inplace):
        gate = excitation(z.detach())
        if not (isinstance(gate, torch.Tensor) and gate.shape == z.shape and gate.dtype == z.dtype):
            got = (f"{tuple(gate.shape)} {gate.dtype}" if isinstance(gate, torch.Tensor) else type(gate).__name__)
            raise ValueError(f"excitation must map z to a tensor of z's shape {tuple(z.shape)} and dtype "
                             f"{z.dtype} (e.g. torch.where(z > 0, 1.0, torch.full_like(z, 0.3))), got {got}")
        return relu_forward_saving(ctx, z, gate, inplace)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad * gate, None, None


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

    Notes
    -----
    The backward product is one fused pass through PyTorch's internal kernel
    ``aten::softplus_backward`` (the derivative of ``softplus(z, beta=1/T)`` is
    ``sigmoid(z / T)``) when a feature test at import finds that kernel and checks its result;
    otherwise, and for float16/bfloat16, three elementwise passes (divide, sigmoid, multiply).
    Both agree with the formula to a few units in the last place.
    """
    return _SurrogateReLU.apply(z, real(temperature, "temperature", low=0), bool(inplace))


class SurrogateReLU(nn.Module):
    r"""A ReLU layer whose backward pass is the excitation rule: ``relu`` forward, ``grad *
    sigmoid(z / T)`` backward (:func:`surrogate_relu` as a module).

    For *training* with the surrogate backward (a network built with it, e.g.
    ``mlp(widths, activation=lambda: SurrogateReLU(0.3))``, descends the surrogate gradient of its
    loss), the open question of :cite:t:`satkiewicz2025tapping`, Section 6.1. Its ``repr``
    names the temperature, so :func:`nbsupport.models.train` caches such a network apart from a
    plain ReLU one.

    Parameters
    ----------
    temperature : float
        :math:`T > 0`.
    inplace : bool
        As ``nn.ReLU``'s.

    Notes
    -----
    Not supported by ``torch.func.vmap`` (the rule is a classic autograd function): train such
    networks with ``train_seeds(..., method="loop")``.
    """

    def __init__(self, temperature: float = 0.3, inplace: bool = False):
        super().__init__()
        self.temperature = real(temperature, "temperature", low=0)
        self.inplace = bool(inplace)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Shape-preserving: ``relu(z)``, any shape."""
        return _SurrogateReLU.apply(z, self.temperature, self.inplace)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}" + (", inplace=True" if self.inplace else "")


def surrogate_gradients(model: nn.Module, temperature: float = 0.3, pool_temperature: float | None = None,
                        pool_padding_value: float = -math.inf, *, pool_detach_weights: bool = False,
                        allow_training: bool = False, excitation=None) -> contextlib.AbstractContextManager:
    r"""Context manager: inside it, ``model``'s backward pass uses the excitation rules.

    Every ReLU keeps its forward pass exactly and passes ``grad * sigmoid(z / T)`` backwards
    (Listing 1 of :cite:t:`satkiewicz2025tapping`); every 2-d max-pooling keeps its forward pass
    exactly and passes back the vector-Jacobian product of
    :func:`~nbsupport.pullbacks.softpool.softmax_pool2d` with the same kernel, stride, padding,
    dilation and ``ceil_mode`` (Listing 2, with :math:`-\infty` padding). The model itself is not
    modified: only hooks are added (and removed on exit, also after an exception). Functional
    calls are covered (see :mod:`nbsupport.intercept`); unsupported relatives raise ``NotImplementedError``.

    Parameters
    ----------
    model : nn.Module
    temperature : float
        :math:`T > 0` of the ReLU gates :math:`\sigma(z/T)`.
    pool_temperature : float, optional
        Temperature of the softmax pooling; default ``temperature`` (as in the source).
    pool_padding_value : float
        ``-inf`` (default, max-pooling's padding) or ``0.0`` (Listing 2's zero padding through
        ``F.unfold``), see :func:`~nbsupport.pullbacks.softpool.softmax_pool2d`.
    pool_detach_weights : bool
        ``False`` (default): the pooling rule is the full derivative of the softmax pooling,
        :math:`w_i (1 + (x_i - s)/T)` (Listing 2). ``True``: the softmax weights are held
        constant, :math:`w_i` (the source's later code detaches them; no routing entry is then
        negative), see :func:`~nbsupport.pullbacks.softpool.softmax_pool2d_vjp`.
    allow_training : bool
        ``False`` (default): training mode is refused with a ``ValueError`` naming the fix,
        ``model.eval()``: on entry, a BatchNorm or dropout module in training mode
        (``nbsupport._validate.eval_mode``), and during the forward pass a dropout or
        batch-norm call with its training flag on (functional calls included), before it runs.
        Dropout would make the map random; batch norm would make one image's map depend on the
        batch and update the running statistics. ``True`` lets such passes run, e.g. to train
        through the soft backward pass (:class:`SurrogateReLU` is the module for that).
    excitation : callable, optional
        An excitation function of one's own in place of :math:`\sigma(z/T)`: ``excitation(z)``
        maps the pre-activations ``z`` of a ReLU call (a tensor, detached) to the gates, a tensor
        of the same shape and dtype, and the ReLU passes back ``grad * excitation(z)`` (its forward
        pass is still ``relu``). ``temperature`` then sets only the pooling's temperature (when
        ``pool_temperature`` is not given). For example
        ``lambda z: torch.where(z > 0, 1.0, torch.full_like(z, 0.3))`` is the backward pass of a
        LeakyReLU of slope 0.3 under a ReLU forward pass :cite:p:`linse2024leaky`, the constant
        excitation per half-line of the source's Section 6.1.

    Raises
    ------
    ValueError
        On entry or in the forward pass: training mode (above), or activation checkpointing
        around a ReLU or max-pool call (its recomputation in the backward pass would bypass the
        rules; see :mod:`nbsupport.intercept`).

    Examples
    --------
    >>> with surrogate_gradients(model, 0.3):
    ...     v = input_gradient(model, x, target)   # the excitation pullback
    """
    temperature = real(temperature, "temperature", low=0)
    pool_temperature = temperature if pool_temperature is None else real(pool_temperature, "pool_temperature", low=0)
    pool_padding_value = check_padding_value(pool_padding_value)
    pool_detach_weights = flag(pool_detach_weights, "pool_detach_weights")
    if excitation is not None and not callable(excitation):
        raise ValueError(f"excitation must be a callable z -> gates or None, got {excitation!r}")

    def relu_rule(z, inplace):
        if excitation is not None:
            return _ExcitedReLU.apply(z, excitation, inplace)
        return _SurrogateReLU.apply(z, temperature, inplace)

    def pool_rule(x, geometry: PoolGeometry, ceil_mode):
        return softmax_routed_max_pool2d(x, *geometry, ceil_mode, pool_temperature, pool_padding_value,
                                         detach_weights=pool_detach_weights)

    return route_calls(model, relu_rule, pool_rule, eval_only=not allow_training)


def excitation_pullback(model: nn.Module, x: torch.Tensor, target, temperature: float = 0.3,
                        pool_temperature: float | None = None, pool_padding_value: float = -math.inf, *,
                        pool_detach_weights: bool = False, excitation=None) -> torch.Tensor:
    r"""The excitation pullback :math:`v_\Gamma(x)` of the target logit, batched.

    The input gradient of the target logit under :func:`surrogate_gradients`: the ordinary forward
    pass, ReLU derivatives replaced by :math:`\sigma(z/T)` and max-pool routing by softmax-pool
    routing :cite:p:`satkiewicz2025tapping` (Sections 4, 5.2, 5.3).

    Parameters
    ----------
    model : nn.Module
        Maps ``(N, ...)`` to logits ``(N, classes)``, in eval mode.
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
        Class indices in ``[0, classes)``.
    temperature, pool_temperature, pool_padding_value : float
        See :func:`surrogate_gradients`.
    pool_detach_weights : bool
        The pooling rule with the softmax weights held constant (default ``False``), see
        :func:`surrogate_gradients`.
    excitation : callable, optional
        An excitation function of one's own in place of :math:`\sigma(z/T)` (the pullback
        :math:`v_\tau` of the source's Equation 15 for a rank-one field of such gates), see
        :func:`surrogate_gradients`.

    Returns
    -------
    Tensor, shape of ``x``

    Raises
    ------
    ValueError
        If ``model`` runs in training mode or uses activation checkpointing
        (:func:`surrogate_gradients`). The model is left as it was.
    """
    with surrogate_gradients(model, temperature, pool_temperature, pool_padding_value,
                             pool_detach_weights=pool_detach_weights, excitation=excitation):
        return input_gradient(model, x, target)

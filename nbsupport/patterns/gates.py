r"""Reading the gates of a model: which ReLUs are on, per sample, and the affine map a pattern fixes.

A ReLU layer's gate matrix :math:`A = \mathbf{1}(Z > 0)` (one row per sample) assigns every sample
to a linear region of the network :cite:p:`condcov_note`. :func:`activation_patterns` reads the gates
of every ReLU call of a model (:func:`relu_inputs` the pre-activations behind them);
:func:`local_affine_maps` gives the affine map :math:`f(x) = J_a x + c_a` that a full pattern fixes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from ..intercept import route_calls
from .._validate import check_input, checked_forward

__all__ = ["activation_patterns", "relu_inputs", "path_correlation", "local_affine_maps"]


@contextmanager
def _frozen_and_restored(model: nn.Module):
    """Run a block with ``model``'s parameters frozen (``requires_grad=False``); afterwards, also
    after an error, every buffer holds its old value, every module its old train/eval flag and every
    parameter its old ``requires_grad``."""
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]
    modes = [(module, module.training) for module in model.modules()]
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)


def _read_relu_calls(model: nn.Module, x: torch.Tensor, read) -> list[torch.Tensor]:
    """``read(z)`` of the input ``z`` of every ReLU call of ``model`` on ``x`` that is a gate, in
    call order.

    The one gate reader behind :func:`relu_inputs` and :func:`activation_patterns`: ReLU calls are
    routed by :func:`~nbsupport.intercept.route_calls` (modules, functional and in-place calls
    alike), ``z`` is read before the ReLU (an in-place ReLU would overwrite it), and afterwards, also
    after an error, every buffer (BatchNorm's running statistics and batch counter) holds its old
    value and every module its old train/eval flag. It runs also inside
    :func:`~nbsupport.pullbacks.surrogate.surrogate_gradients` on the same model.

    A call is a gate when its input depends on ``x`` and its first axis is the batch axis. The
    dependence is tracked by autograd, with the parameters frozen, so a ReLU of a parameter or a
    buffer is never a gate. The batch axis is told by a second pass on a batch of another size
    ``n'`` (the first 2 or 3 rows of ``x``, repeated when ``x`` has fewer): a call is kept when its
    first axis is ``N`` long in the first pass and ``n'`` long in the second, so a function of
    ``x`` whose first axis merely happens to be ``N`` long (``relu(x.mean(0))`` when ``d == N``,
    ``relu(w * x.sum())`` for a parameter ``w`` of length ``N``) is not read as a gate. The
    second pass leaves the global random state as it found it. A model that makes a different
    number of ReLU calls on the two batches is refused.
    """
    check_input(x)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    n = len(x)
    if n == 0:
        raise ValueError(f"x must hold at least one sample, got shape {tuple(x.shape)}")
    n_other = 2 if n != 2 else 3
    other = x[torch.arange(n_other, device=x.device) % n]  # rows of x: values can steer a forward pass
    with _frozen_and_restored(model):
        calls = _relu_calls(model, x, read)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            lengths = [length for length, _ in _relu_calls(model, other, None)]
    if len(lengths) != len(calls):
        raise ValueError(f"model made {len(calls)} ReLU calls on a batch of {n} and {len(lengths)} on a "
                         f"batch of {n_other}: its gates cannot be matched across batch sizes")
    inputs = [value for (length, value), other_length in zip(calls, lengths)
              if value is not None and length == n and other_length == n_other]
    if not inputs:
        raise ValueError(f"model made no ReLU call on x (nn.ReLU, F.relu, torch.relu, Tensor.relu): "
                         f"{type(model).__name__}")
    return inputs


def _relu_calls(model: nn.Module, x: torch.Tensor, read) -> list[tuple[int | None, object]]:
    """One forward pass of ``model`` on ``x`` (parameters already frozen) with every ReLU call
    routed: per call, in order, the length of its input's first axis (``None`` for a 0-d input) and
    ``read(z)`` when ``read`` is given and the input depends on ``x`` with a first axis of
    ``len(x)``, else ``None``."""
    calls: list[tuple[int | None, object]] = []

    def record(z, inplace):
        length = len(z) if z.ndim > 0 else None
        candidate = read is not None and z.requires_grad and length == len(x)   # a function of x
        calls.append((length, read(z.detach().reshape(length, -1)) if candidate else None))
        if inplace:
            return z.relu_()
        return torch.relu(z)

    with (route_calls(model, record, strict=False, exclusive=False), torch.inference_mode(False),
          torch.enable_grad()):
        tracked = x.detach().clone().requires_grad_()  # only what depends on x requires grad
        checked_forward(model, tracked)
    return calls


def relu_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    r"""The pre-activations :math:`z` entering every ReLU call of ``model`` on the batch ``x``.

    Every ReLU call is seen: ``nn.ReLU`` modules, functional calls (``F.relu``, ``torch.relu``,
    ``Tensor.relu``, as in torchvision's DenseNet or a ResNet block's ``forward``) and their
    in-place forms, read before the ReLU overwrites its input. ReLUs written as ``clamp(min=0)``
    or ``torch.maximum`` are not recognised. A call is a gate, and listed, when its input depends
    on ``x`` and its first axis is the batch axis: a ReLU of a parameter is skipped, and so is a
    ReLU of a function of ``x`` whose first axis does not follow the batch size (checked by a
    second forward pass on 2 or 3 rows). The forward passes run with the parameters frozen (no
    gradient reaches them) and the model in its own train/eval mode (in training mode a BatchNorm
    normalises with the batch's statistics); parameters, buffers (a BatchNorm's running
    statistics) and train/eval flags are as they were afterwards, also when a forward pass raises.

    Parameters
    ----------
    model : nn.Module
        Makes at least one ReLU call on ``x``, and as many ReLU calls on any batch size.
    x : Tensor, shape (N, ...)
        A floating batch of inputs.

    Returns
    -------
    list of Tensor, each of shape (N, m_l), dtype and device of the pre-activations
        One per ReLU call, in call order (a module called twice appears twice); unit axes beyond
        the batch are flattened (``m_l = C*H*W`` for a convolutional feature map).
    """
    return _read_relu_calls(model, x, torch.clone)


def activation_patterns(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The gates :math:`\\mathbf{1}(z > 0)` of every ReLU call of ``model`` on the batch ``x``.

    ``[z > 0 for z in relu_inputs(model, x)]`` without keeping the pre-activations: the same calls
    (modules, functional and in-place ReLUs), the same order, and the same guarantees (model mode
    and buffers untouched); see :func:`relu_inputs`.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)

    Returns
    -------
    list of Tensor, each bool of shape (N, m_l)
        One gate matrix per ReLU call, in call order.
    """
    return _read_relu_calls(model, x, lambda z: z > 0)


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
        Gates of the same layers (bool or values in [0, 1]), e.g. from :func:`activation_patterns`.

    Returns
    -------
    Tensor, float64, shape (N,)
        NaN where a tensor is constant over paths.
    """
    if (not all(isinstance(g, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in g) for g in (gates_a, gates_b))
            or len(gates_a) != len(gates_b) or not gates_a
            or any(a.shape != b.shape or a.ndim != 2 for a, b in zip(gates_a, gates_b))):
        raise ValueError("gates_a and gates_b must list the same number (>= 1) of (N, m_l) tensors of equal shapes")
    mean_a = mean_b = mean_ab = mean_aa = mean_bb = 1.0
    for a, b in zip(gates_a, gates_b):
        a, b = a.double(), b.double()
        mean_a, mean_b = mean_a * a.mean(1), mean_b * b.mean(1)
        mean_ab, mean_aa, mean_bb = mean_ab * (a * b).mean(1), mean_aa * (a * a).mean(1), mean_bb * (b * b).mean(1)
    return (mean_ab - mean_a * mean_b) / ((mean_aa - mean_a**2) * (mean_bb - mean_b**2)).sqrt()


def local_affine_maps(model: nn.Sequential, x: torch.Tensor, gates: list[torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map :math:`f(x) = J_a x + c_a` that a full activation pattern fixes, per sample.

    With the gates of every ReLU fixed to :math:`a`, an MLP is the composition of affine maps and
    diagonal 0/1 masks: :math:`J_a = W^{(L+1)} D_L W^{(L)} \\cdots D_1 W^{(1)}` with
    :math:`D_l = \\operatorname{diag}(a^{(l)})`, and :math:`c_a` follows the same products applied to
    the biases. Computed from the weights and the gates, not by differentiation.

    Parameters
    ----------
    model : nn.Sequential
        ``nn.Linear``, ``nn.ReLU`` and ``nn.Identity`` modules only.
    x : Tensor, shape (N, d)
        Inputs; only their number, dtype and device are used when ``gates`` is given.
    gates : list of Tensor, each bool of shape (N, m_l), optional
        The pattern to impose on every ReLU, in call order; by default the inputs' own
        (:func:`activation_patterns`), so that ``f(x) == J x + c``. Imposing another sample's pattern
        evaluates the affine piece of its region at ``x``.

    Returns
    -------
    J : Tensor, shape (N, out, d)
    c : Tensor, shape (N, out)
        In the dtype and on the device of ``x`` (the model's parameters are cast to them).
    """
    if not (isinstance(model, nn.Sequential) and all(isinstance(m, (nn.Linear, nn.ReLU, nn.Identity)) for m in model)
            and any(isinstance(m, nn.Linear) for m in model)):
        raise ValueError(f"model must be an nn.Sequential of nn.Linear, nn.ReLU and nn.Identity, got {model!r}")
    if not (isinstance(x, torch.Tensor) and x.ndim == 2 and x.dtype.is_floating_point):
        raise ValueError(f"x must be a floating tensor of shape (N, d), got {getattr(x, 'dtype', type(x).__name__)} "
                         f"of shape {tuple(getattr(x, 'shape', ()))}")
    first = next(m for m in model if isinstance(m, nn.Linear))
    if x.shape[1] != first.in_features:
        raise ValueError(f"x has {x.shape[1]} features but the model's first layer takes {first.in_features}")
    n_relus = sum(isinstance(m, nn.ReLU) for m in model)
    if gates is None:
        gates = activation_patterns(model, x)
    if not (isinstance(gates, (list, tuple)) and len(gates) == n_relus
            and all(isinstance(g, torch.Tensor) and g.dtype == torch.bool and g.ndim == 2 and len(g) == len(x)
                    for g in gates)):
        raise ValueError(f"gates must be a list of {n_relus} bool tensors of shape (N={len(x)}, m_l)")
    n, d = x.shape
    jac = torch.eye(d, dtype=x.dtype, device=x.device).expand(n, d, d)
    offset = torch.zeros(n, d, dtype=x.dtype, device=x.device)
    layer = iter(gates)
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                weight = module.weight.to(dtype=x.dtype, device=x.device)
                if weight.shape[1] != jac.shape[1]:
                    raise ValueError(f"x has {d} features but the model does not fit it ({module})")
                jac = torch.einsum("oi,nij->noj", weight, jac)
                offset = offset @ weight.T
                if module.bias is not None:
                    offset = offset + module.bias.to(dtype=x.dtype, device=x.device)
            elif isinstance(module, nn.ReLU):
                a = next(layer)
                if a.shape[1] != jac.shape[1]:
                    raise ValueError(f"gates of a ReLU have {a.shape[1]} units, expected {jac.shape[1]}")
                mask = a.to(device=x.device, dtype=x.dtype)
                jac, offset = jac * mask.unsqueeze(2), offset * mask
    return jac, offset

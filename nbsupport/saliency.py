r"""Input gradients of a class logit, and the call shape every attribution shares.

An attribution is a function ``attribute(model, x, target) -> Tensor shaped like x`` (as Captum's
``attribute(inputs, target=...)``). :func:`input_gradient` is the simplest one, the vanilla
gradient :math:`\partial f_c / \partial x`, computed with whatever backward rules are active
(inside :func:`nbsupport.pullbacks.surrogate.surrogate_gradients` it is the excitation pullback).
:func:`check_input` and :func:`check_target` validate the arguments of that call shape; :func:`checked_forward` runs a
model and says when ``x`` does not fit it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["input_gradient", "check_input", "check_target", "checked_forward"]


def check_input(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """A floating tensor with a batch axis, ``(N, ...)`` with at least two axes; returned as it is.

    Raises
    ------
    ValueError
        Naming ``name``, for anything else (an integer tensor, a single sample, not a tensor).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor of shape (N, ...) with a batch axis, got {shape}")
    return x


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


def checked_forward(model, x: torch.Tensor):
    """``model(x)``, with a shape mismatch between ``x`` and the model reported as a ``ValueError``.

    Only errors whose message is about shapes are translated; out-of-memory, device and dtype
    errors, and ``NotImplementedError`` (a call without a backward rule), pass through unchanged.
    """
    try:
        return model(x)
    except NotImplementedError:  # a call without a backward rule: not about x
        raise
    except RuntimeError as err:
        if not _SHAPE_ERROR.search(str(err)):  # out of memory, devices, dtypes: not about x's shape
            raise
        raise ValueError(f"x of shape {tuple(x.shape)} does not fit the model: {err}") from err


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = checked_forward(model, x)
    if not (isinstance(out, torch.Tensor) and out.ndim == 2 and len(out) == len(x)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must map x of shape {tuple(x.shape)} to logits (N, classes), got {shape}")
    return out


def input_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    r"""Gradient of the target logit with respect to the input (vanilla gradient, "saliency").

    Computed with whatever backward rules are active: inside
    :func:`~nbsupport.pullbacks.surrogate.surrogate_gradients` this is the excitation pullback.
    Gradients are taken with ``torch.autograd.grad``, so the parameters' ``.grad`` are left untouched; grad mode
    is switched on even under ``torch.no_grad``. The model is called as it is (call
    ``model.eval()`` first for BatchNorm to use its running statistics).

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
    check_input(x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = _logits(model, xg)
        target = check_target(target, len(x), out.shape[1], device=out.device)
        (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return grad

r"""Input gradients of a class logit, and the call shape every attribution shares.

An attribution is a function ``attribute(model, x, target) -> Tensor shaped like x`` (as Captum's
``attribute(inputs, target=...)``). :func:`input_gradient` is the simplest one, the vanilla
gradient :math:`\partial f_c / \partial x`, computed with whatever backward rules are active
(inside :func:`nbsupport.pullbacks.surrogate.surrogate_gradients` it is the excitation pullback).
The checks of that call shape's arguments (``check_input``, ``check_target``) and of a forward
pass on ``x`` (``checked_forward``) live with the package's other checks in ``nbsupport._validate``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import check_input, check_target, checked_forward

__all__ = ["input_gradient"]


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

r"""Attribution methods beside the excitation pullback, one call shape for all of them.

Every attribution is a function ``attribute(model, x, target) -> Tensor shaped like x`` (as
Captum's ``attribute(inputs, target=...)``), so the metrics (:mod:`nbsupport.faithfulness`,
:mod:`nbsupport.randomisation`) loop over methods: the vanilla gradient lives in
:mod:`nbsupport.saliency` and the excitation pullback in :mod:`nbsupport.pullbacks.surrogate`; guided
backpropagation :cite:p:`springenberg2015striving`, gradient x input
:cite:p:`shrikumar2017learning`, integrated gradients :cite:p:`sundararajan2017axiomatic`,
SmoothGrad :cite:p:`smilkov2017smoothgrad` and three maps that know nothing about the model's
evidence (the image, a random map, a class average) are here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._validate import check_input, check_target, integer, labels, torch_rng
from .intercept import relu_forward_saving, route_calls
from .saliency import input_gradient

__all__ = [
    "Attribution",
    "guided_backprop",
    "gradient_x_input",
    "integrated_gradients",
    "smoothgrad",
    "image_map",
    "random_map",
    "class_average_map",
]

Attribution = Callable[[nn.Module, torch.Tensor, object], torch.Tensor]


class _GuidedReLU(torch.autograd.Function):
    """Forward ``relu``; backward ``max(grad, 0) * 1(z > 0)`` (guided backpropagation)."""

    @staticmethod
    def forward(ctx, z, inplace):
        return relu_forward_saving(ctx, z, z > 0, inplace)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (active,) = ctx.saved_tensors
        return grad.clamp(min=0) * active, None


def guided_backprop(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    r"""Guided backpropagation :cite:p:`springenberg2015striving`, all ReLU call paths covered.

    Each ReLU passes back :math:`\max(g, 0)\,\1(z > 0)`; max-pooling keeps its usual routing.
    Unlike Captum's ``GuidedBackprop`` (which hooks ``nn.ReLU`` modules only), ReLUs called
    functionally are covered too (:func:`nbsupport.intercept.route_calls`). A forward pass in
    training mode (dropout or batch norm with the training flag on) is refused with a
    ``ValueError`` naming the fix, ``model.eval()``, as for the excitation pullback.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)

    Returns
    -------
    Tensor, shape of ``x``
    """
    with route_calls(model, lambda z, inplace: _GuidedReLU.apply(z, inplace), eval_only=True):
        return input_gradient(model, x, target)


def gradient_x_input(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    r"""Gradient times input, :math:`x \odot \nabla_x f_c(x)` :cite:p:`shrikumar2017learning`.

    Takes ``model, x (N, ...), target`` as :func:`guided_backprop` does and returns a map shaped
    like ``x``: the contribution of each input entry against a zero baseline.
    """
    return x * input_gradient(model, x, target)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target, baseline=0.0, n_steps: int = 16) -> torch.Tensor:
    r"""Integrated gradients :cite:p:`sundararajan2017axiomatic` from a baseline, midpoint rule.

    :math:`(x - b) \odot \frac1K \sum_{k=1}^{K} \nabla_x f_c\big(b + \tfrac{k - 1/2}{K} (x - b)\big)`,
    the midpoint rule for :math:`(x - b) \odot \int_0^1 \nabla f_c(b + s(x - b))\, ds`. Its entries
    sum to about :math:`f_c(x) - f_c(b)` (completeness; exactly for a piecewise-linear path
    integral as ``n_steps`` grows). It is a contribution map for the baseline it starts from.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    baseline : float or Tensor broadcastable to ``x``
    n_steps : int
        Points of the midpoint rule, >= 1.

    Returns
    -------
    Tensor, shape of ``x``
    """
    check_input(x)
    n_steps = integer(n_steps, "n_steps", minimum=1)
    try:
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"baseline must be a number or a tensor broadcastable to {tuple(x.shape)}") from err
    total = torch.zeros_like(x)
    for k in range(n_steps):
        total += input_gradient(model, base + (k + 0.5) / n_steps * (x - base), target)
    return (x - base) * total / n_steps


def smoothgrad(model: nn.Module, x: torch.Tensor, target, n_samples: int = 16, noise_level: float = 0.15,
               rng=0) -> torch.Tensor:
    r"""SmoothGrad :cite:p:`smilkov2017smoothgrad`: the gradient averaged over noisy copies of ``x``.

    :math:`\frac1K \sum_k \nabla_x f_c(x + \varepsilon_k)`, :math:`\varepsilon_k \sim \mathcal N(0, \sigma^2 I)`
    with :math:`\sigma` = ``noise_level`` times the range ``max(x) - min(x)`` of each sample.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    n_samples : int
        Noisy copies per input, >= 1.
    noise_level : float
        Noise standard deviation relative to each sample's value range, >= 0.
    rng : int or torch.Generator
        An int seeds a private generator (the same call gives the same result); a generator on
        ``x``'s device is used and advanced. Never the global random state.

    Returns
    -------
    Tensor, shape of ``x``
    """
    check_input(x)
    n_samples = integer(n_samples, "n_samples", minimum=1)
    if not noise_level >= 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level!r}")
    flat = x.flatten(1)
    sigma = (noise_level * (flat.max(1).values - flat.min(1).values)).reshape(-1, *[1] * (x.ndim - 1))
    generator = torch_rng(rng, x.device, "rng")
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        total += input_gradient(model, x + sigma * noise, target)
    return total / n_samples


def image_map(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """The image itself as an attribution map (a baseline that knows nothing about the model).

    Parameters
    ----------
    model : nn.Module
        Ignored (kept for the common call shape).
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
        Ignored.

    Returns
    -------
    Tensor, a copy of ``x``
    """
    check_input(x)
    return x.detach().clone()


def random_map(model: nn.Module, x: torch.Tensor, target, rng=0) -> torch.Tensor:
    """A random attribution map: i.i.d. standard normal entries, never from the global generator.

    The same int ``rng`` gives the same map for inputs of the same shape, so the map does not
    depend on the model, the target or the values of ``x``.

    Parameters
    ----------
    model : nn.Module
        Ignored.
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
        Ignored.
    rng : int or torch.Generator
        An int seeds a private generator; a generator on ``x``'s device is used and advanced (a
        new map each call).

    Returns
    -------
    Tensor, shape, dtype and device of ``x``
    """
    check_input(x)
    generator = torch_rng(rng, x.device, "rng")
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def class_average_map(attribute: Attribution, x_ref: torch.Tensor, y_ref: torch.Tensor) -> Attribution:
    """An input-independent attribution: the average map of the target class over a reference set.

    Returns ``fn(model, x, target)`` whose value for sample ``n`` is the mean of
    ``attribute(model, x_ref[y_ref == c], c)`` over the reference images of class ``c = target[n]``,
    whatever ``x[n]`` is. It is recomputed from ``model`` at every call (so it follows a randomised
    model), and it is the null a faithfulness metric must beat: a map that only knows where
    garments of the class usually are.

    One call of ``attribute`` covers every reference image of the classes asked for, each with its
    own class as the target (one batch instead of one per class: about 10 times fewer calls in
    chapter 4), so ``attribute`` must treat the images of a batch independently, as every map of
    this module does (SmoothGrad's noise draws then differ from a per-class call, not their law).

    Parameters
    ----------
    attribute : callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``.
    x_ref : Tensor, shape (M, ...)
    y_ref : Tensor, long, shape (M,)
        Classes of the reference images; every class asked for later must occur.

    Returns
    -------
    callable
        ``fn(model, x, target) -> Tensor`` shaped like ``x``, on ``x``'s device.
    """
    check_input(x_ref)
    y_ref = labels(y_ref, len(x_ref), "y_ref")

    def fn(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
        check_input(x)
        if x.shape[1:] != x_ref.shape[1:]:
            raise ValueError(f"x must have samples of shape {tuple(x_ref.shape[1:])}, got {tuple(x.shape[1:])}")
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        target_idx = check_target(target, len(x), n_classes, device=x.device)
        xr, yr = x_ref.to(device=x.device, dtype=x.dtype), y_ref.to(x.device)
        wanted = target_idx.unique()
        missing = sorted(set(wanted.tolist()) - set(yr.tolist()))
        if missing:
            raise ValueError(f"y_ref has no image of class {missing[0]}")
        keep = torch.isin(yr, wanted)
        maps = attribute(model, xr[keep], yr[keep])                     # (M', ...)
        sums = maps.new_zeros((n_classes, *maps.shape[1:])).index_add_(0, yr[keep], maps)
        counts = torch.bincount(yr[keep], minlength=n_classes).to(maps.dtype)
        means = sums / counts.reshape(-1, *[1] * (maps.ndim - 1)).clamp(min=1)
        return means[target_idx]

    return fn

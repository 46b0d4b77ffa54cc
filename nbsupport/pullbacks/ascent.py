r"""Projected gradient ascent on the input: move an image towards a class along an attribution.

Section 5.1 of :cite:t:`satkiewicz2025tapping` moves images a few normalised steps along the
excitation pullback of a class logit, within an L2 ball, and finds that the pullback directions
raise the logit and look like the class; :func:`projected_gradient_ascent` does the same along the
pullback (:func:`nbsupport.pullbacks.surrogate.excitation_pullback`) or the vanilla gradient
(:func:`nbsupport.saliency.input_gradient`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._validate import check_input, eval_mode, integer, real
from ..saliency import input_gradient
from .surrogate import excitation_pullback

__all__ = ["projected_gradient_ascent"]


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

    Raises
    ------
    ValueError
        For bad arguments, and for a model in training mode with either method
        (``nbsupport._validate.eval_mode``: the two are compared on one model).
    """
    check_input(x)
    eval_mode(model)
    steps = integer(steps, "steps", minimum=1)
    step_size, radius = real(step_size, "step_size", low=0), real(radius, "radius", low=0)
    if method not in ("pullback", "gradient"):
        raise ValueError(f"method must be 'pullback' or 'gradient', got {method!r}")
    low, high = bounds
    if not low < high:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    if bool((x < low).any() or (x > high).any()):
        raise ValueError(f"x must lie in bounds {tuple(bounds)}")
    temperature = real(temperature, "temperature", low=0)

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

r"""Gates and values apart: a value network run on gates supplied from outside.

The path view of :cite:t:`satkiewicz2025tapping` writes a ReLU network as weights :math:`\omega`
(values) and input-dependent gates (features). :cite:t:`lakshminarayanan2020neural` test where the
expressive power sits by *deep gated networks*: the gates of one network (trained, or not) are
frozen and handed to a second network of the same shape, whose weights are trained from scratch.
:class:`GatedValueMLP` is that second network for fully connected ReLU networks: layer :math:`l`
computes :math:`h^{(l)} = a^{(l)} \odot (W^{(l)} h^{(l-1)} + b^{(l)})` with the supplied gates
:math:`a^{(l)}` in place of :math:`\1(W^{(l)} h^{(l-1)} + b^{(l)} > 0)`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._validate import integer

__all__ = ["GatedValueMLP"]


class GatedValueMLP(nn.Module):
    r"""A fully connected network whose hidden layers are gated by gates given with the input.

    The input of one sample is the flat image followed by its gates,
    ``cat([x.flatten(), a_1, ..., a_L])``, so that the pair travels through any training loop
    (minibatching and shuffling keep them together); the gates are typically the hard gates of
    another network (:func:`nbsupport.patterns.activation_patterns`) as floats.

    Parameters
    ----------
    widths : sequence of int
        ``[d_in, m_1, ..., m_L, d_out]`` as :func:`nbsupport.models.mlp`'s, at least one hidden
        width (``L >= 1``).

    Notes
    -----
    With the gates of an ``mlp(widths)`` on the same input and that network's weights copied in,
    the output is that network's (the gates *are* its ReLUs); with all gates 1 it is the product of
    the affine layers (tested).
    """

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        widths = list(widths) if not isinstance(widths, (str, bytes)) else []
        if len(widths) < 3:
            raise ValueError(f"widths must list d_in, at least one hidden width and d_out, got {widths!r}")
        widths = [integer(w, f"widths[{i}]", minimum=1) for i, w in enumerate(widths)]
        self.widths = tuple(widths)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    @property
    def n_gates(self) -> int:
        """Total number of gates per sample, :math:`\\sum_l m_l`."""
        return sum(self.widths[1:-1])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, d_out) from ``inputs`` of shape (N, d_in + n_gates)."""
        d_in = self.widths[0]
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or inputs.shape[1] != d_in + self.n_gates:
            raise ValueError(f"inputs must have shape (N, {d_in + self.n_gates}) = (N, d_in + n_gates), got "
                             f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}")
        h, start = inputs[:, :d_in], d_in
        for layer, width in zip(self.layers[:-1], self.widths[1:-1]):
            h = inputs[:, start:start + width] * layer(h)
            start += width
        return self.layers[-1](h)

    def extra_repr(self) -> str:
        return f"widths={self.widths}"

r"""Gates and values apart: a value network run on gates supplied from outside.

The path view of :cite:t:`satkiewicz2025tapping` writes a ReLU network as weights :math:`\omega`
(values) and input-dependent gates (features). :cite:t:`lakshminarayanan2020neural` test where the
expressive power sits by *deep gated networks*: the gates of one network (trained, or not) are
frozen and handed to a second network of the same shape, whose weights are trained from scratch.
:class:`GatedValueMLP` is that second network for fully connected ReLU networks: layer :math:`l`
computes :math:`h^{(l)} = a^{(l)} \odot (W^{(l)} h^{(l-1)} + b^{(l)})` with the supplied gates
:math:`a^{(l)}` in place of :math:`\1(W^{(l)} h^{(l-1)} + b^{(l)} > 0)`. :class:`FrozenGateMLP`
computes those gates itself, from a frozen copy of an MLP's weights, so that it takes the plain
input and trains like any network (all seeds at once, ``train_seeds(..., method="vmap")``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._validate import integer, module

__all__ = ["GatedValueMLP", "FrozenGateMLP"]


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


class FrozenGateMLP(nn.Module):
    r"""A deep gated network: the hard gates of a frozen MLP, and trainable values.

    Layer :math:`l` computes :math:`h^{(l)} = \1(z_g^{(l)} > 0) \odot (W^{(l)} h^{(l-1)} + b^{(l)})`,
    where :math:`z_g^{(l)}` are the pre-activations of the *gate network* on the same input (a
    copy of ``gate_model``'s weights, kept as buffers: no optimiser moves them, so an input's gates
    never change) and :math:`W, b` the *values* (a :class:`GatedValueMLP`, the only parameters).
    With ``values=None`` the values start as a copy of ``gate_model``'s weights, so the network
    starts as ``gate_model`` itself and training it continues ``gate_model``'s training with its
    gates frozen (the source's Note 4.1, gates fixed from :math:`t_\gamma` on
    :cite:p:`satkiewicz2025tapping`); with a fresh ``GatedValueMLP`` it is the value network of
    :cite:t:`lakshminarayanan2020neural` on ``gate_model``'s gates.

    Parameters
    ----------
    gate_model : nn.Sequential
        An MLP as :func:`nbsupport.models.mlp` builds it: ``nn.Linear`` layers with ``nn.ReLU``
        between them, at least one hidden layer, biases present.
    values : GatedValueMLP, optional
        Of ``gate_model``'s widths; default a copy of ``gate_model``'s weights.

    Notes
    -----
    The forward pass takes ``x`` of shape (N, d_in) and returns logits (N, d_out); it equals
    ``values(cat([x, gates]))`` with ``gates`` the hard gates of ``gate_model`` on ``x`` (tested).
    """

    def __init__(self, gate_model: nn.Module, values: GatedValueMLP | None = None):
        super().__init__()
        module(gate_model, "gate_model")
        layers = list(gate_model) if isinstance(gate_model, nn.Sequential) else []
        linear, ok = [m for m in layers if isinstance(m, nn.Linear)], len(layers) >= 3
        ok = ok and all(isinstance(m, nn.Linear if i % 2 == 0 else nn.ReLU) for i, m in enumerate(layers))
        ok = ok and len(layers) % 2 == 1 and all(m.bias is not None for m in linear)
        if not ok:
            raise ValueError("gate_model must be an nn.Sequential of nn.Linear (with bias) and nn.ReLU "
                             f"alternating, with at least one hidden layer, as mlp() builds it; got {gate_model!r}")
        widths = [linear[0].in_features] + [m.out_features for m in linear]
        if values is None:
            values = GatedValueMLP(widths).to(linear[0].weight)
            with torch.no_grad():
                for v, g in zip(values.layers, linear):
                    v.weight.copy_(g.weight)
                    v.bias.copy_(g.bias)
        elif not isinstance(values, GatedValueMLP) or tuple(values.widths) != tuple(widths):
            raise ValueError(f"values must be a GatedValueMLP of widths {tuple(widths)}, got {values!r}")
        self.values = values
        self.n_hidden = len(linear) - 1
        for i, g in enumerate(linear[:-1]):
            self.register_buffer(f"gate_weight{i}", g.weight.detach().clone())
            self.register_buffer(f"gate_bias{i}", g.bias.detach().clone())

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen gates on ``x`` (N, d_in), as 0/1 in ``x``'s dtype: (N, sum_l m_l)."""
        h, gates = x, []
        for i in range(self.n_hidden):
            z = torch.nn.functional.linear(h, getattr(self, f"gate_weight{i}"), getattr(self, f"gate_bias{i}"))
            gates.append((z > 0).to(x.dtype))
            h = z * gates[-1]
        return torch.cat(gates, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, d_out) from ``x`` of shape (N, d_in)."""
        d_in = self.values.widths[0]
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != d_in:
            raise ValueError(f"x must have shape (N, {d_in}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        with torch.no_grad():
            gates = self.gates(x)
        return self.values(torch.cat([x, gates], 1))

r"""Excitation pullbacks: input gradients with soft ReLU gates and softmax-pool routing.

Source :cite:p:`satkiewicz2025tapping` keeps a ReLU network's forward pass and changes only its
backward pass: every ReLU passes the incoming gradient times :math:`\sigma(z/T)` instead of
:math:`\1(z > 0)`, and every max-pooling routes it as a softmax pooling at temperature :math:`T`
would. The input gradient of a class logit under these rules is the *excitation pullback*.

The package has five parts, one idea each: ``softpool`` (softmax pooling and its
vector-Jacobian product), ``surrogate`` (the excitation rules,
:func:`~nbsupport.pullbacks.surrogate.surrogate_gradients`,
:func:`~nbsupport.pullbacks.surrogate.excitation_pullback`), ``ascent`` (projected gradient
ascent), ``imagenet`` (local ImageNet checkpoints) and ``paths`` (a value network on gates
supplied from outside, :class:`~nbsupport.pullbacks.paths.GatedValueMLP`, or read from a frozen
network, :class:`~nbsupport.pullbacks.paths.FrozenGateMLP`); ``nbsupport.pullbacks`` itself exports
their public names (DESIGN.md's).

Two modules the pullback rests on stay outside, at the top level: :mod:`nbsupport.intercept`
(routing every ReLU and max-pool call of a forward pass, functional calls included, to rules of
one's own) and :mod:`nbsupport.saliency` (the vanilla input gradient, the attribution call
shape). The import graph decides: both are imported by modules that are not
about pullbacks (the gate reader :mod:`nbsupport.patterns`, :mod:`nbsupport.attribution`) and
import nothing of this package, so the parts depend on them and never the other way round.
Inside the package they would make chapter 1's gate reader load the pullback machinery, and
:mod:`~nbsupport.intercept` would sit in a cycle through ``__init__`` (importing it first would
meet a half-initialised package). The window arguments of a routed max-pool call
(:class:`~nbsupport.intercept.PoolGeometry`, :func:`~nbsupport.intercept.pool_geometry`) are
part of the routing's contract and live with it, which keeps :mod:`~nbsupport.intercept` free
of any import from here (tests/test_pullbacks.py checks the rule). Guided backpropagation and the
other attribution methods are in :mod:`nbsupport.attribution`, the metrics in
:mod:`nbsupport.faithfulness` and :mod:`nbsupport.randomisation`; none is re-exported here.
"""

from .ascent import projected_gradient_ascent
from .imagenet import load_imagenet_checkpoint, remap_legacy_densenet_keys
from .paths import FrozenGateMLP, GatedValueMLP
from .softpool import SoftMaxPool2d, pool_output_size, softmax_pool2d
from .surrogate import SurrogateReLU, excitation_pullback, surrogate_gradients

__all__ = [
    "surrogate_gradients",
    "SurrogateReLU",
    "excitation_pullback",
    "softmax_pool2d",
    "SoftMaxPool2d",
    "pool_output_size",
    "projected_gradient_ascent",
    "remap_legacy_densenet_keys",
    "load_imagenet_checkpoint",
    "GatedValueMLP",
    "FrozenGateMLP",
]

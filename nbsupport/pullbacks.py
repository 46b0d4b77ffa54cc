r"""Excitation pullbacks: input gradients with soft ReLU gates and softmax-pool routing.

Source :cite:p:`satkiewicz2025tapping` keeps a ReLU network's forward pass and changes only its
backward pass: every ReLU passes the incoming gradient times :math:`\sigma(z/T)` instead of
:math:`\1(z > 0)`, and every max-pooling routes it as a softmax pooling at temperature :math:`T`
would. The input gradient of a class logit under these rules is the *excitation pullback*.

The code lives in modules of one idea each: ``nbsupport.softpool`` (softmax pooling and its
vector-Jacobian product), ``nbsupport.intercept`` (routing every ReLU and max-pool call of a
forward pass, functional calls included), ``nbsupport.surrogate`` (the excitation rules,
:func:`~nbsupport.surrogate.surrogate_gradients`,
:func:`~nbsupport.surrogate.excitation_pullback`), ``nbsupport.saliency`` (the vanilla
input gradient and the attribution call shape), ``nbsupport.patterns`` (the gates of every ReLU
call, path correlations), ``nbsupport.attribution`` (guided backpropagation and the other
methods), ``nbsupport.faithfulness`` and ``nbsupport.randomisation`` (the metrics), ``nbsupport.ascent`` (projected gradient ascent) and
``nbsupport.imagenet`` (local ImageNet checkpoints); this module exports the pullback's own names
(DESIGN.md's) from them.
"""

from .ascent import projected_gradient_ascent
from .imagenet import load_imagenet_checkpoint, remap_legacy_densenet_keys
from .softpool import SoftMaxPool2d, pool_output_size, softmax_pool2d
from .surrogate import excitation_pullback, surrogate_gradients

__all__ = [
    "surrogate_gradients",
    "excitation_pullback",
    "softmax_pool2d",
    "SoftMaxPool2d",
    "pool_output_size",
    "projected_gradient_ascent",
    "remap_legacy_densenet_keys",
    "load_imagenet_checkpoint",
]

"""Activation patterns: which ReLUs are on, and grouping samples by their pattern.

A ReLU layer's gate matrix :math:`A = \\mathbf{1}(Z > 0)` (one row per sample) assigns every sample
to a linear region of the network :cite:p:`condcov_note`. The package has two parts, one idea each:
``gates`` reads the gates of a model (:func:`activation_patterns`, :func:`relu_inputs`, the
pre-activations behind them, :func:`path_correlation`, and :func:`local_affine_maps`, the affine map
:math:`f(x) = J_a x + c_a` that a full pattern fixes); ``grouping`` groups rows by their pattern
(:func:`group_by_pattern`, fast for any width, through the codes :math:`\\sum_i a_i 2^i` of
:func:`pack_patterns` and :func:`unpack_codes`). ``nbsupport.patterns`` exports their public names.
"""

from .gates import activation_patterns, local_affine_maps, path_correlation, relu_inputs
from .grouping import WORD_BITS, Groups, group_by_pattern, pack_patterns, unpack_codes

__all__ = ["activation_patterns", "relu_inputs", "path_correlation", "group_by_pattern",
           "pack_patterns", "unpack_codes", "Groups", "local_affine_maps"]

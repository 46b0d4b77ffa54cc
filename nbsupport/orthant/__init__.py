r"""A ReLU network with Gaussian input as a random affine function: pattern PMF, output law, support.

For :math:`x \sim \mathcal N(\mu, \Sigma)` the activation pattern of a ReLU network is a discrete
random variable :cite:p:`chaudhari2025relu`. Given a pattern, every layer is affine, so the set of
inputs with that pattern is a polyhedron (Lemma 1 of the source: open half-spaces for the units that
are on, closed ones for the units that are off) and
its probability is a Gaussian polytope probability. For the first layer alone and at most as many
units as input dimensions it is an orthant probability of a non-singular Gaussian, which
:func:`orthant_probability` computes with scipy's Genz quasi-Monte Carlo :cite:p:`genz1992numerical`
below 12 dimensions and with :func:`polytope_probability` (below) from 12 on.

Everything else rests on one routine, :func:`polytope_probability`: write :math:`x = \mu + C u`
with :math:`C C^\top = \Sigma` of rank :math:`r`, rotate the constraints :math:`G C u > -(G\mu + h)`
to lower-trapezoidal form (a greedy ordering of the rows in the spirit of Genz and Bretz
:cite:p:`genz2009computation` and an LQ decomposition), and
integrate the variables one after another, each over the intersection of the rows whose last
non-zero coefficient it is (Genz's separation of variables). With one effective variable the result
is a closed form; with two it is a one-dimensional integral done by Gauss-Legendre quadrature on
the pieces between the points where the constraints cross (accurate to ~1e-13); with more it is
randomised quasi-Monte Carlo (scrambled Sobol' replicates, error = standard error over replicates).
Empty regions come out as exactly 0 on every route, and any number of constraints is allowed, so a
layer wider than the input (singular pre-activation covariance) needs no special case.

Conventions: a unit is on when its pre-activation is > 0 (``1(z > 0)``) and off when it is ``<= 0``,
which decides the units whose pre-activation is constant on a region; a pattern's code is
:math:`\sum_i a_i 2^i` with unit ``i`` (layers concatenated, first layer first) as bit ``i``.
Networks are given as lists ``weights = [W_1, ..., W_L]``, ``biases = [b_1, ..., b_L]`` (numpy
arrays, ``W_l`` of shape ``(m_l, m_{l-1})``), ReLU after every layer but the last; see
:func:`mlp_layers`. Errors (``err``) are one standard error of the estimate. Randomness follows
the package's one rule (``nbsupport._validate.numpy_rng``): an int seed or a generator; the
global RNG is never used. Every function defaults to ``rng=0`` (the Monte Carlo references call
the same argument ``seed``, DESIGN.md's name, and require it), so results are reproducible.

Constancy of a row (a pre-activation that does not vary over a region) is judged relative to
that row's own scale, the magnitudes of the operands that produced it, never against an absolute
threshold: every result is the same at any scale of the input or the weights.

The package has four modules, one idea each: ``polytope`` (Gaussian polytope probabilities),
``regions`` (regions, affine maps, Jacobians), ``pattern_law`` (PMF, support search, CDFs,
mixtures) and ``mc`` (Monte Carlo references); ``nbsupport.orthant`` itself exports their public
names.
"""

from ._common import MassWarning
from .mc import mc_jacobian_singular_values, mc_network, mc_network_pmf, mc_pattern_pmf
from .pattern_law import (MAX_FULL_PMF_UNITS as _MAX_FULL_PMF_UNITS, PatternPMF, Support, class_probabilities,
                          mixture_output_cdf, mixture_pattern_pmf, mixture_pattern_pmf_with_err,
                          mixture_support_search, output_cdf, pattern_pmf, pattern_pmf_with_err, support_search)
from .polytope import ORTHANT_POLYTOPE_FROM as _FROM, ORTHANT_POLYTOPE_POINTS as _POINTS, orthant_probability, polytope_probability
from .polytope import equicorrelated_orthant, one_factor_orthant
from .regions import (AffineMaps, affine_maps, jacobian_singular_values, mlp_layers, network_patterns, output_range,
                      pattern_codes, region)

#: Largest first layer for which :func:`pattern_pmf` enumerates all ``2**m`` patterns (defined in
#: ``nbsupport.orthant.pattern_law``; restated here so the API page documents it).
MAX_FULL_PMF_UNITS = _MAX_FULL_PMF_UNITS

#: From this dimension on, :func:`orthant_probability` (``method="auto"``) takes the polytope route
#: (defined in ``nbsupport.orthant.polytope``).
ORTHANT_POLYTOPE_FROM = _FROM

#: Sobol' points per replicate of the polytope route of :func:`orthant_probability`.
ORTHANT_POLYTOPE_POINTS = _POINTS

__all__ = [
    "orthant_probability",
    "polytope_probability",
    "one_factor_orthant",
    "equicorrelated_orthant",
    "pattern_pmf",
    "pattern_pmf_with_err",
    "PatternPMF",
    "mc_pattern_pmf",
    "mixture_pattern_pmf",
    "mixture_pattern_pmf_with_err",
    "mixture_support_search",
    "mixture_output_cdf",
    "mlp_layers",
    "region",
    "network_patterns",
    "Support",
    "support_search",
    "output_cdf",
    "class_probabilities",
    "jacobian_singular_values",
    "mc_network",
    "mc_network_pmf",
    "mc_jacobian_singular_values",
    "MAX_FULL_PMF_UNITS",
    "ORTHANT_POLYTOPE_FROM",
    "ORTHANT_POLYTOPE_POINTS",
    "MassWarning",
    "pattern_codes",
    "AffineMaps",
    "affine_maps",
    "output_range",
]

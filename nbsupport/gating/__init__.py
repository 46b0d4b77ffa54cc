r"""Activation patterns as latent variables: Bernoulli gates of probability :math:`\sigma(z/\tau)`.

Source 001 :cite:p:`bayesgating_note` replaces each ReLU gate :math:`\mathbf{1}(z > 0)` by a random
gate :math:`a \sim \text{Bernoulli}(\sigma(z/\tau))`, turning a classifier into a mixture over
patterns,

.. math::

    P(y \mid x) = \sum_a P(y \mid x, a)\, P(a \mid x), \qquad
    P(a \mid x) = \prod_i \sigma(z_i/\tau)^{a_i} \, \sigma(-z_i/\tau)^{1 - a_i},

where a hidden unit outputs :math:`a_i z_i`. As :math:`\tau \to 0` the gates become the ReLU's.
This module computes the mixture exactly (all :math:`2^m` patterns of one hidden layer, m <= 16)
and by Monte Carlo; the variational lower bound of a factorised Bernoulli :math:`q(a)`, its sampled
gradient estimators and a fitting loop; the law of X within soft regions (:math:`\Sigma_X(a)`); the
information the gates carry about X and Y, exactly and by sampling; and per-sample gradients with
sampled gates for the split of gradient variance.

Randomness comes in one way: every sampling function takes ``rng`` (an int seed, default 0, or a
generator, advanced in place: the package's rule, ``nbsupport._validate.torch_rng``) and never
reads or advances the global random state. ``generator=`` is kept as an alias by ``sample_gates``,
``log_marginal_likelihood``, ``elbo_surrogate`` and ``sampled_gate_grads``; the training loops
(``train_latent_gates``, ``train_latent_gates_many``, ``fit_variational``) take ``rng`` alone and
return a :class:`nbsupport.models.TrainResult`, as :func:`nbsupport.models.train` does.

The package has three modules: ``core`` (gates, the exact, Monte Carlo and importance-sampling
likelihoods, posterior marginals, sampled-gate gradients, training on the marginal likelihood),
``variational`` (ELBO, gradient estimators, fitting) and ``information`` (information in the
gates, region moments, eigenvector angles); ``nbsupport.gating`` exports their public names.
"""

from .core import (MAX_EXACT_UNITS, MonteCarloEstimate, PatternLogProbs, all_patterns,
                          effective_sample_size, gated_forward,
                          importance_log_weights, importance_relative_variance, log_marginal_likelihood, mean_gate_log_likelihood,
                          pareto_khat, pattern_log_probs, posterior_marginals, sample_gates,
                          sampled_gate_grads, soft_gates, train_latent_gates,
                          train_latent_gates_many)
from .information import (GateInformation, PatternMoments, eigenvector_angles, gate_information,
                                 gate_information_sampled, pattern_moments, plugin_entropy)
from .variational import (ESTIMATORS, BiasTest, bias_test, GatePosterior, bernoulli_kl, elbo, elbo_surrogate,
                                 exact_logit_gradient, fit_variational, logit_gradient_estimates,
                                 optimal_factorised_posterior)

__all__ = ["soft_gates", "sample_gates", "gated_forward", "all_patterns", "pattern_log_probs", "PatternLogProbs",
           "log_marginal_likelihood", "MonteCarloEstimate", "posterior_marginals", "mean_gate_log_likelihood",
           "train_latent_gates", "train_latent_gates_many", "eigenvector_angles", "bernoulli_kl", "elbo", "GatePosterior",
           "elbo_surrogate", "fit_variational", "gate_information", "gate_information_sampled", "GateInformation", "plugin_entropy",
           "pattern_moments", "PatternMoments", "sampled_gate_grads", "MAX_EXACT_UNITS",
           "importance_log_weights", "importance_relative_variance", "effective_sample_size", "pareto_khat",
           "ESTIMATORS", "exact_logit_gradient", "logit_gradient_estimates",
           "optimal_factorised_posterior", "BiasTest", "bias_test"]

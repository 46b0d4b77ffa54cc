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
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["soft_gates", "sample_gates", "gated_forward", "all_patterns", "pattern_log_probs", "PatternLogProbs",
           "log_marginal_likelihood", "MonteCarloEstimate", "posterior_marginals", "mean_gate_log_likelihood",
           "train_latent_gates", "eigenvector_angles", "bernoulli_kl", "elbo", "GatePosterior",
           "elbo_surrogate", "fit_variational", "gate_information", "gate_information_sampled", "GateInformation", "plugin_entropy",
           "pattern_moments", "PatternMoments", "sampled_gate_grads", "MAX_EXACT_UNITS"]

#: Largest hidden width for exact enumeration (2**16 = 65 536 patterns).
MAX_EXACT_UNITS = 16


def _check_tau(tau) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def soft_gates(z: torch.Tensor, tau: float) -> torch.Tensor:
    r"""Gate probabilities :math:`\sigma(z / \tau)`, same shape as ``z``.

    Parameters
    ----------
    z : Tensor
        Preactivations.
    tau : float
        Temperature, > 0; :math:`\tau \to 0` gives the hard gate :math:`\mathbf{1}(z > 0)` (and 1/2 at 0).
    """
    _check_tau(tau)
    return torch.sigmoid(z / tau)


def sample_gates(probs: torch.Tensor, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent Bernoulli gates.

    Parameters
    ----------
    probs : Tensor, shape (...)
        Probabilities in [0, 1].
    n_samples : int
        Number of draws, >= 1.
    generator : torch.Generator, optional
        For reproducible draws.

    Returns
    -------
    Tensor, shape (n_samples, ...)
        0/1 values in the dtype of ``probs``.
    """
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError("probs must lie in [0, 1]")
    expanded = probs.expand(n_samples, *probs.shape)
    return torch.bernoulli(expanded, generator=generator).to(probs.dtype)


GateSpec = Sequence[torch.Tensor] | Callable[[int, torch.Tensor], torch.Tensor]


def gated_forward(model: nn.Sequential, x: torch.Tensor, gates: GateSpec) -> torch.Tensor:
    r"""Run an MLP with hidden layer ``l`` computing :math:`z_l \odot a_l` instead of :math:`\relu(z_l)`.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear, ReLU, Linear, ..., ReLU, Linear``.
    x : Tensor, shape (..., N, d)
        Leading dimensions (e.g. one per gate sample) pass through.
    gates : sequence of Tensor or callable
        Either one tensor per ReLU, broadcastable to that layer's ``(..., N, m_l)``, or a function
        ``gates(l, z) -> a`` called with each layer's preactivations (so later layers can depend on
        earlier gates): ``lambda l, z: (z > 0).to(z.dtype)`` is the ReLU network,
        ``lambda l, z: soft_gates(z, tau)`` the mean-gate network :math:`z\sigma(z/\tau)`.

    Returns
    -------
    Tensor, shape (..., N, k)
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential, got {type(model).__name__}")
    relus = [i for i, m in enumerate(model) if isinstance(m, nn.ReLU)]
    if not relus or not all(isinstance(m, (nn.Linear, nn.ReLU)) for m in model):
        raise ValueError("model must be an nn.Sequential of nn.Linear and nn.ReLU modules")
    if not callable(gates) and len(gates) != len(relus):
        raise ValueError(f"gates must hold one tensor per ReLU ({len(relus)}), got {len(gates)}")
    gate_of = gates if callable(gates) else (lambda l, z: gates[l])
    h, layer = x, 0
    for module in model:
        if isinstance(module, nn.ReLU):
            h = h * gate_of(layer, h)
            layer += 1
        else:
            h = module(h)
    return h


def _check_one_hidden(model, x, y) -> tuple[nn.Linear, nn.Linear]:
    if not (isinstance(model, nn.Sequential) and len(model) == 3 and isinstance(model[0], nn.Linear)
            and isinstance(model[1], nn.ReLU) and isinstance(model[2], nn.Linear)):
        raise ValueError("model must be nn.Sequential(Linear, ReLU, Linear)")
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x must have shape (N, d) and y shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    return model[0], model[2]


def all_patterns(m: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Every pattern of ``m`` units, shape (2**m, m), row ``c`` the pattern with code ``c`` (unit i = bit i)."""
    if not (isinstance(m, int) and 1 <= m <= MAX_EXACT_UNITS):
        raise ValueError(f"m must be an int in [1, {MAX_EXACT_UNITS}] for enumeration, got {m!r}")
    codes = torch.arange(2**m, device=device)
    return ((codes.unsqueeze(1) >> torch.arange(m, device=device)) & 1).to(dtype)


def _log_prior(z: torch.Tensor, patterns: torch.Tensor, tau: float) -> torch.Tensor:
    """log P(a | x) for every sample and pattern: (N, 2**m)."""
    return F.logsigmoid(z / tau) @ patterns.T + F.logsigmoid(-z / tau) @ (1 - patterns).T


def _log_lik_all(second: nn.Linear, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""log P(y | x, a) for every sample and every pattern, in code order: (N, 2**m).

    The logits are additive over units, :math:`W_2 (a \odot z) + b_2 = u_l + v_h` for the low bits
    ``l`` and the high bits ``h`` of the pattern's code, so the class normaliser
    :math:`\log \sum_k e^{u_{lk}} e^{v_{hk}}` of all :math:`2^m` patterns is one batched matrix
    product of two :math:`2^{m/2} \times k` factors per sample, never a :math:`(2^m, k)` logit array.
    Entries whose product underflows (logits spread over more than ~700 nats) are recomputed directly.
    """
    m, k = z.shape[1], second.out_features
    patterns = all_patterns(m, dtype=z.dtype, device=z.device)
    n_low = 2 ** (m // 2)
    contributions = z.unsqueeze(2) * second.weight.T                       # (N, m, k): z_i W2[:, i]
    u = patterns[:n_low] @ contributions                                   # (N, L, k): codes with high bits 0
    if second.bias is not None:
        u = u + second.bias
    v = patterns[::n_low] @ contributions                                  # (N, H, k): codes with low bits 0
    u_max, v_max = u.max(2, keepdim=True).values, v.max(2, keepdim=True).values
    products = torch.bmm((u - u_max).exp(), (v - v_max).exp().transpose(1, 2))   # (N, L, H)
    tiny = torch.finfo(z.dtype).tiny / torch.finfo(z.dtype).eps
    log_norm = products.clamp(min=tiny).log() + u_max + v_max.transpose(1, 2)
    underflow = (products < tiny).nonzero(as_tuple=True)
    if len(underflow[0]):
        n, l, h = underflow
        log_norm = log_norm.index_put(underflow, torch.logsumexp(u[n, l] + v[n, h], dim=1))
    u_y = u.gather(2, y.view(-1, 1, 1).expand(-1, u.shape[1], 1))          # (N, L, 1)
    v_y = v.gather(2, y.view(-1, 1, 1).expand(-1, v.shape[1], 1))          # (N, H, 1)
    log_lik = u_y + v_y.transpose(1, 2) - log_norm                         # (N, L, H)
    return log_lik.transpose(1, 2).reshape(len(z), -1)                     # code l + L h at index h L + l


def _log_lik_sampled(second: nn.Linear, z: torch.Tensor, y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """log P(y | x, a) for gates (S, N, m) of any values, hard or relaxed: (S, N)."""
    logits = second(z * gates)
    return F.log_softmax(logits, dim=2).gather(2, y.view(1, -1, 1).expand(len(gates), -1, 1)).squeeze(2)


class PatternLogProbs(NamedTuple):
    """Per sample and pattern (rows of :func:`all_patterns`): ``log_lik`` = log P(y | x, a) and
    ``log_prior`` = log P(a | x), both of shape (N, 2**m)."""

    log_lik: torch.Tensor
    log_prior: torch.Tensor


def pattern_log_probs(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float) -> PatternLogProbs:
    r"""Both factors of the joint :math:`P(y, a \mid x)` for every pattern of a one-hidden-layer net.

    Differentiable in the parameters, so expectations of gradients under any weights :math:`w(a)`
    are gradients of :math:`\sum_a w(a) f(a)` with ``w`` detached: e.g. Fisher's identity
    :math:`\nabla \log P(y \mid x) = \E_{P(a \mid x, y)}[\nabla \log P(y \mid x, a) + \nabla \log P(a \mid x)]`.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)`` with ``m <= 16``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float

    Returns
    -------
    PatternLogProbs
    """
    _check_tau(tau)
    first, second = _check_one_hidden(model, x, y)
    z = first(x)
    patterns = all_patterns(z.shape[1], dtype=z.dtype, device=z.device)
    return PatternLogProbs(_log_lik_all(second, z, y), _log_prior(z, patterns, tau))


class MonteCarloEstimate(NamedTuple):
    """``estimate`` of :math:`\\log P(y \\mid x)` per sample and its standard error (delta method)."""

    estimate: torch.Tensor
    stderr: torch.Tensor


def log_marginal_likelihood(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float,
                            method: str = "exact", n_samples: int = 1000,
                            generator: torch.Generator | None = None, chunk: int = 2**22,
                            proposal: torch.Tensor | None = None):
    r""":math:`\log \sum_a P(y \mid x, a) P(a \mid x)` for a one-hidden-layer classifier with random gates.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)``; the logits for gates ``a`` are :math:`W_2 (a \odot z) + b_2`.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,), class indices
    tau : float
        Gate temperature, > 0.
    method : {"exact", "mc", "is"}
        ``"exact"``: log-sum-exp over all :math:`2^m` patterns (``m <= 16``), batched over patterns
        and samples, in chunks of about ``chunk`` (sample, pattern) pairs. ``"mc"``: ``n_samples`` gate draws per
        sample from :math:`P(a \mid x)`. ``"is"``: importance sampling, ``n_samples`` draws from the
        factorised Bernoulli ``proposal`` :math:`q(a)`, each weighted by
        :math:`w(a) = P(y \mid x, a) P(a \mid x) / q(a)`.
    n_samples : int
        Draws for ``"mc"`` and ``"is"``, >= 2.
    generator : torch.Generator, optional
        For ``"mc"`` and ``"is"``.
    proposal : Tensor, shape (N, m), optional
        Gate probabilities of the proposal, for ``"is"`` (required there). The estimate is consistent
        only if :math:`q(a) > 0` wherever :math:`P(a \mid x) > 0`, i.e. every entry strictly inside
        (0, 1) unless the prior's gate is itself saturated; a proposal close to the posterior
        :math:`P(a \mid x, y)` (e.g. its marginals, :func:`posterior_marginals`, mixed with a little
        of the uniform law for bounded weights) gives weights of small variance.

    Returns
    -------
    Tensor, shape (N,)
        For ``"exact"``.
    MonteCarloEstimate
        For ``"mc"`` and ``"is"``: ``log`` of the mean likelihood (or weight) over draws (computed
        relative to the largest draw, so it does not underflow), and its standard error
        :math:`\hat s / (\sqrt{S}\,\hat P)` by the delta method (the estimate is biased low by
        :math:`O(1/S)`). The standard error is exactly 0 when all draws give the same value, e.g. when
        every draw is the same pattern: it then says nothing about patterns never drawn.
    """
    _check_tau(tau)
    first, second = _check_one_hidden(model, x, y)
    z = first(x)
    if method == "exact":
        patterns = all_patterns(z.shape[1], dtype=z.dtype, device=z.device)
        rows = max(1, chunk // len(patterns))
        out = []
        for start in range(0, len(x), rows):
            zc, yc = z[start:start + rows], y[start:start + rows]
            joint = _log_lik_all(second, zc, yc) + _log_prior(zc, patterns, tau)
            out.append(torch.logsumexp(joint, dim=1))
        return torch.cat(out)
    if method == "mc":
        if not (isinstance(n_samples, int) and n_samples >= 2):
            raise ValueError(f"n_samples must be an int >= 2 for method='mc', got {n_samples!r}")
        gates = sample_gates(soft_gates(z, tau).detach(), n_samples, generator)   # (S, N, m)
        log_lik = _log_lik_sampled(second, z, y, gates)
        return _log_mean_exp(log_lik)
    if method == "is":
        if not (isinstance(n_samples, int) and n_samples >= 2):
            raise ValueError(f"n_samples must be an int >= 2 for method='is', got {n_samples!r}")
        if not (isinstance(proposal, torch.Tensor) and proposal.shape == z.shape
                and bool(((proposal >= 0) & (proposal <= 1)).all())):
            raise ValueError(f"proposal must be a tensor of gate probabilities in [0, 1] of shape {tuple(z.shape)}, "
                             f"got {proposal if proposal is None else tuple(proposal.shape)}")
        q = proposal.detach().to(z.dtype)
        gates = sample_gates(q, n_samples, generator)                                  # (S, N, m)
        log_lik = _log_lik_sampled(second, z, y, gates)
        on, logit_q = gates.bool(), torch.logit(q)                                     # logit(0) = -inf: exact
        log_prior = torch.where(on, F.logsigmoid(z / tau), F.logsigmoid(-z / tau)).sum(2)
        log_q = torch.where(on, F.logsigmoid(logit_q), F.logsigmoid(-logit_q)).sum(2)
        log_ratio = log_prior - log_q
        return _log_mean_exp(log_lik + log_ratio)
    raise ValueError(f"method must be 'exact', 'mc' or 'is', got {method!r}")


def _log_mean_exp(log_values: torch.Tensor) -> MonteCarloEstimate:
    """log of the mean over axis 0 of exp(log_values) (S, N), and its delta-method standard error."""
    top = log_values.max(0).values                       # work relative to the largest draw: no underflow
    ratio = (log_values - top).exp()
    mean = ratio.mean(0)
    return MonteCarloEstimate(top + mean.log(), ratio.std(0) / (math.sqrt(len(log_values)) * mean))


def posterior_marginals(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    r"""Exact posterior gate probabilities :math:`P(a_i = 1 \mid x, y)` by enumeration of all patterns.

    The posterior :math:`P(a \mid x, y) \propto P(y \mid x, a) P(a \mid x)` is not factorised in
    general; these are its one-unit marginals, the label-aware factorised :math:`q` closest to it in
    :math:`\mathrm{KL}(P(\cdot \mid x, y) \,\Vert\, q)`.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)`` with ``m <= 16``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float

    Returns
    -------
    Tensor, shape (N, m)
        In the dtype and on the device of the model's output.
    """
    lp = pattern_log_probs(model, x, y, tau)
    patterns = all_patterns(lp.log_lik.shape[1].bit_length() - 1, dtype=lp.log_lik.dtype, device=lp.log_lik.device)
    return torch.softmax(lp.log_lik + lp.log_prior, dim=1) @ patterns


def mean_gate_log_likelihood(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    r""":math:`\log P(y \mid x, \bar a)` of the *mean-gate* network, every gate replaced by its mean.

    Each hidden unit outputs :math:`z\,\sigma(z/\tau)` (a SiLU-type unit; :func:`gated_forward` with
    ``gates = lambda l, z: soft_gates(z, tau)``), so deeper layers see the mean-gated outputs of earlier
    ones. This is another model than the mixture of :func:`log_marginal_likelihood`:
    :math:`\E_A[P(y \mid x, A)] \ne P(y \mid x, \E[A])` because the softmax is not linear.

    Parameters
    ----------
    model : nn.Sequential
        An MLP ``Linear, ReLU, ..., Linear``.
    x : Tensor, shape (N, d)
    y : Tensor, long, shape (N,)
    tau : float

    Returns
    -------
    Tensor, shape (N,)
    """
    _check_tau(tau)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must have shape (N, d) and y shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    logits = gated_forward(model, x, lambda layer, z: soft_gates(z, tau))
    return F.log_softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)


def bernoulli_kl(q: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\text{Bern}(q) \,\|\, \text{Bern}(\sigma(\ell)))` summed over the last axis.

    The prior is given by its logits :math:`\ell` (e.g. :math:`z/\tau`), so that saturated gates
    (:math:`\sigma(\ell)` rounding to 0 or 1) keep their exact log-probabilities
    :math:`\log\sigma(\pm\ell)`; :math:`0 \log 0 = 0` for ``q`` in {0, 1}.

    Parameters
    ----------
    q : Tensor, shape (..., m)
        Probabilities in [0, 1].
    p_logits : Tensor, shape (..., m)
    """
    return (torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q)
            - q * F.logsigmoid(p_logits) - (1 - q) * F.logsigmoid(-p_logits)).sum(-1)


def elbo(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float, q_probs: torch.Tensor) -> torch.Tensor:
    r"""Exact variational objective :math:`\E_q[\log P(y \mid x, A)] - \mathrm{KL}(q \,\|\, P(A \mid x))`.

    For a factorised Bernoulli :math:`q(a \mid x) = \prod_i q_i^{a_i}(1 - q_i)^{1 - a_i}`, by
    enumeration of all patterns (``m <= 16``). It is a lower bound of
    :func:`log_marginal_likelihood`, with equality iff q is the posterior :math:`P(a \mid x, y)`.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear, ReLU, Linear``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float
    q_probs : Tensor, shape (N, m)
        Gate probabilities of q, in [0, 1].

    Returns
    -------
    Tensor, shape (N,)
    """
    _check_tau(tau)
    first, second = _check_one_hidden(model, x, y)
    z = first(x)
    if q_probs.shape != z.shape or not bool(((q_probs >= 0) & (q_probs <= 1)).all()):
        raise ValueError(f"q_probs must have shape {tuple(z.shape)} with values in [0, 1]")
    patterns = all_patterns(z.shape[1], dtype=z.dtype, device=z.device)
    floor = torch.finfo(z.dtype).min / (4 * z.shape[1])  # log 0, finite so that 0 * log 0 = 0 in the sums
    log_q = q_probs.log().clamp(min=floor) @ patterns.T + (1 - q_probs).log().clamp(min=floor) @ (1 - patterns).T
    expected = (log_q.exp() * _log_lik_all(second, z, y)).sum(1)
    return expected - bernoulli_kl(q_probs, z / tau)


class GateInformation(NamedTuple):
    """Entropies (nats) of the gate pattern A of one layer over a data set, and mutual informations."""

    H_A: float
    H_A_given_X: float
    H_A_given_Y: float
    I_AX: float
    I_AY: float


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.xlogy(probs, probs).sum(-1)


def _conditional_entropy(on: torch.Tensor) -> torch.Tensor:
    """H(A | X) for independent gates with probabilities ``on`` (N, m), X uniform over the rows."""
    return _entropy(torch.stack([on, 1 - on], dim=-1)).sum(1).mean()


def _check_z_y(z, y) -> None:
    if not (isinstance(z, torch.Tensor) and z.ndim == 2 and isinstance(y, torch.Tensor) and y.shape == z.shape[:1]):
        raise ValueError(f"z must have shape (N, m) and y shape (N,), got {tuple(getattr(z, 'shape', ()))} "
                         f"and {tuple(getattr(y, 'shape', ()))}")


def gate_information(z: torch.Tensor, y: torch.Tensor, tau: float) -> GateInformation:
    r"""Exact :math:`I(A; X)` and :math:`I(A; Y)` for Bernoulli gates :math:`\sigma(z/\tau)` of one layer.

    X is uniform over the N rows of ``z`` (the empirical data distribution). Given X the gates are
    independent, so :math:`H(A \mid X)` is a sum of binary entropies; :math:`P(a) = \frac1N \sum_x
    P(a \mid x)` and :math:`P(a \mid y)` are enumerated over all :math:`2^m` patterns (``m <= 16``).

    Parameters
    ----------
    z : Tensor, shape (N, m)
        Preactivations of the layer.
    y : Tensor, long, shape (N,)
        Labels.
    tau : float

    Returns
    -------
    GateInformation
        ``I_AX = H_A - H_A_given_X`` and ``I_AY = H_A - H_A_given_Y``, in nats.
    """
    _check_tau(tau)
    _check_z_y(z, y)
    z = z.detach().to(torch.float64)
    patterns = all_patterns(z.shape[1], device=z.device)
    conditional = _log_prior(z, patterns, tau).exp()                        # P(a | x): (N, 2**m)
    h_a = _entropy(conditional.mean(0))
    on = soft_gates(z, tau)
    h_a_x = _conditional_entropy(on)
    classes, y_index = torch.unique(y, return_inverse=True)
    per_class = torch.zeros(len(classes), conditional.shape[1], dtype=torch.float64, device=z.device)
    per_class.index_add_(0, y_index, conditional)
    class_counts = torch.bincount(y_index).to(torch.float64)
    h_a_y = (class_counts / len(y) * _entropy(per_class / class_counts.unsqueeze(1))).sum()
    return GateInformation(h_a.item(), h_a_x.item(), h_a_y.item(), (h_a - h_a_x).item(), (h_a - h_a_y).item())


def plugin_entropy(codes: torch.Tensor, miller_madow: bool = True) -> float:
    r"""Entropy (nats) of a discrete variable from samples: plug-in, with the Miller–Madow correction.

    :math:`\hat H = -\sum_k \hat p_k \log \hat p_k + (K - 1) / (2n)` with K the number of distinct
    values seen and n the sample size; the correction removes the leading :math:`O(1/n)` bias of the
    plug-in estimate, which otherwise underestimates H when many values are rare.

    Parameters
    ----------
    codes : Tensor, shape (n,) or (n, m)
        Samples; rows of a 2-D tensor are values (e.g. gate patterns).
    miller_madow : bool
    """
    if not (isinstance(codes, torch.Tensor) and codes.ndim in (1, 2) and len(codes) >= 1):
        raise ValueError("codes must be a non-empty tensor of shape (n,) or (n, m)")
    _, counts = torch.unique(codes, dim=0 if codes.ndim == 2 else None, return_counts=True)
    p = counts.to(torch.float64) / len(codes)
    estimate = _entropy(p).item()
    return estimate + (len(counts) - 1) / (2 * len(codes)) if miller_madow else estimate


class PatternMoments(NamedTuple):
    r"""Law of X given the gate pattern, for patterns ``a``: ``prob`` :math:`P(A = a)` (P,), ``mean``
    :math:`\E[X \mid A = a]` (P, d) and ``cov`` :math:`\Sigma_X(a) = \Cov(X \mid A = a)` (P, d, d)."""

    prob: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor


def pattern_moments(x: torch.Tensor, z: torch.Tensor, tau: float, patterns: torch.Tensor | None = None) -> PatternMoments:
    r"""Mean and covariance of the inputs within each (soft) region: :math:`X \mid A = a`.

    X is uniform over the N rows of ``x`` and, given X, the gates are independent
    :math:`\text{Bernoulli}(\sigma(z/\tau))`. Bayes' rule gives the region of a pattern as a weighting of
    the data, :math:`P(x_i \mid a) \propto P(a \mid x_i)`, so :math:`\Sigma_X(a)` is a weighted covariance
    (population normalisation). With all :math:`2^m` patterns the law of total covariance
    :math:`\Cov(X) = \sum_a P(a) [\Sigma_X(a) + (\mu_a - \mu)(\mu_a - \mu)^\top]` holds exactly; as
    :math:`\tau \to 0` the weights become the hard regions of the ReLU layer.

    Parameters
    ----------
    x : Tensor, shape (N, d)
        Inputs (float64 is used).
    z : Tensor, shape (N, m)
        Preactivations of the gated layer for those inputs.
    tau : float
    patterns : Tensor, shape (P, m), optional
        0/1 patterns to evaluate (e.g. sampled ones); default all :math:`2^m` (``m <= 16``).
        Memory is :math:`P d^2` floats: project high-dimensional inputs first.

    Returns
    -------
    PatternMoments
    """
    _check_tau(tau)
    if not (isinstance(x, torch.Tensor) and isinstance(z, torch.Tensor) and x.ndim == 2 and z.ndim == 2
            and len(x) == len(z)):
        raise ValueError(f"x and z must have shapes (N, d) and (N, m), got {tuple(getattr(x, 'shape', ()))} "
                         f"and {tuple(getattr(z, 'shape', ()))}")
    x, z = x.detach().to(torch.float64), z.detach().to(torch.float64)
    if patterns is None:
        patterns = all_patterns(z.shape[1], device=z.device)
    elif not (patterns.ndim == 2 and patterns.shape[1] == z.shape[1] and bool(((patterns == 0) | (patterns == 1)).all())):
        raise ValueError(f"patterns must be 0/1 of shape (P, {z.shape[1]}), got {tuple(patterns.shape)}")
    log_conditional = _log_prior(z, patterns.to(torch.float64), tau).T     # log P(a | x_i): (P, N)
    prob = (torch.logsumexp(log_conditional, dim=1) - math.log(len(x))).exp()
    weights = torch.softmax(log_conditional, dim=1)                         # P(x_i | a), finite even if P(a) underflows
    centre = x.mean(0)
    xc = x - centre                                                         # centred: no cancellation for shifted data
    mean_c = weights @ xc
    second = torch.einsum("pn,ni,nj->pij", weights, xc, xc)
    return PatternMoments(prob, mean_c + centre, second - mean_c.unsqueeze(2) * mean_c.unsqueeze(1))


def eigenvector_angles(cov: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    r"""Angles (radians, in [0, pi/2]) between the leading eigenvectors of covariance matrices.

    The leading eigenvector is defined up to sign, so the angle is :math:`\arccos |u^\top v|`. It is
    ill-defined when the two largest eigenvalues (nearly) coincide; callers should weigh such matrices
    down or look at the eigenvalue gap.

    Parameters
    ----------
    cov : Tensor, shape (P, d, d)
        Symmetric matrices, e.g. :math:`\Sigma_X(a)` of :func:`pattern_moments`.
    reference : Tensor, shape (d, d), optional
        If given, the angle of every ``cov[p]`` to this matrix's leading eigenvector, shape (P,);
        otherwise all pairwise angles, shape (P, P).

    Returns
    -------
    Tensor, shape (P, P) or (P,)
        In the dtype and on the device of ``cov``.
    """
    if not (isinstance(cov, torch.Tensor) and cov.ndim == 3 and cov.shape[1] == cov.shape[2]):
        raise ValueError(f"cov must be a tensor of shape (P, d, d), got {tuple(getattr(cov, 'shape', ()))}")
    top = torch.linalg.eigh(cov)[1][:, :, -1]                                   # (P, d), unit vectors
    if reference is None:
        other = top
    elif isinstance(reference, torch.Tensor) and reference.shape == cov.shape[1:]:
        other = torch.linalg.eigh(reference)[1][:, -1].unsqueeze(0)
    else:
        raise ValueError(f"reference must be a tensor of shape {tuple(cov.shape[1:])}, "
                         f"got {tuple(getattr(reference, 'shape', ()))}")
    cosine = (top @ other.T).abs().clamp(max=1)
    return torch.arccos(cosine) if reference is None else torch.arccos(cosine[:, 0])


def gate_information_sampled(z: torch.Tensor, y: torch.Tensor, tau: float, n_samples: int,
                             estimator: str = "density", generator: torch.Generator | None = None) -> GateInformation:
    r"""Sampling estimates of :func:`gate_information` for layers too wide to enumerate.

    Draws ``n_samples`` pairs (x, a): x uniform over the rows, a from its gates. :math:`H(A \mid X)`
    stays exact (a sum of binary entropies). :math:`H(A)` and :math:`H(A \mid Y)` are estimated by

    * ``"density"``: :math:`-\frac1n \sum_s \log P(a_s)` with :math:`P(a_s) = \frac1N \sum_i
      P(a_s \mid x_i)` evaluated exactly (and :math:`P(a_s \mid y_s)` over the rows of class
      :math:`y_s`): unbiased, whatever the entropy; costs :math:`O(n N m)`;
    * ``"plugin"``: Miller–Madow plug-in entropies (:func:`plugin_entropy`) of the sampled patterns.
      It cannot exceed :math:`\log n` by more than 1/2 and is biased low once :math:`e^{H(A)}` approaches ``n_samples``.

    Parameters
    ----------
    z : Tensor, shape (N, m)
    y : Tensor, long, shape (N,)
    tau : float
    n_samples : int
        >= 2.
    estimator : {"density", "plugin"}
    generator : torch.Generator, optional

    Returns
    -------
    GateInformation
    """
    _check_tau(tau)
    _check_z_y(z, y)
    if not (isinstance(n_samples, int) and n_samples >= 2):
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    if estimator not in ("density", "plugin"):
        raise ValueError(f"estimator must be 'density' or 'plugin', got {estimator!r}")
    z = z.detach().to(torch.float64)
    on = soft_gates(z, tau)
    rows = torch.randint(len(z), (n_samples,), generator=generator, device=z.device)
    gates = sample_gates(on[rows], 1, generator)[0]                         # (n, m)
    labels = y[rows]
    h_a_x = _conditional_entropy(on).item()
    if estimator == "plugin":
        codes = gates.bool()
        h_a = plugin_entropy(codes)
        h_a_y = sum((labels == c).double().mean().item() * plugin_entropy(codes[labels == c])
                    for c in torch.unique(labels))
    else:
        log_cond = _log_prior(z, gates, tau).T                              # log P(a_s | x_i): (n, N)
        h_a = -(torch.logsumexp(log_cond, dim=1) - math.log(len(z))).mean().item()
        same_class = labels.unsqueeze(1) == y.unsqueeze(0)                  # (n, N)
        log_class = torch.logsumexp(log_cond.masked_fill(~same_class, -torch.inf), dim=1) - same_class.sum(1).log()
        h_a_y = -log_class.mean().item()
    return GateInformation(h_a, h_a_x, h_a_y, h_a - h_a_x, h_a - h_a_y)


class GatePosterior(nn.Module):
    r"""Amortised factorised Bernoulli posterior :math:`q(a \mid x[, y])`: an MLP returning m gate logits.

    Parameters
    ----------
    d : int
        Input size.
    m : int
        Number of gated units.
    n_classes : int, optional
        If given, q also sees the one-hot label, so it can reach the true posterior
        :math:`P(a \mid x, y)`; without it q is the :math:`q(a \mid x)` of the source, which cannot
        depend on the label it explains.
    hidden : int
    """

    def __init__(self, d: int, m: int, n_classes: int | None = None, hidden: int = 32):
        super().__init__()
        self.n_classes = n_classes
        self.net = nn.Sequential(nn.Linear(d + (n_classes or 0), hidden), nn.Tanh(), nn.Linear(hidden, m))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits of q, shape (N, m), for inputs (N, d) and labels (N,)."""
        if self.n_classes:
            x = torch.cat([x, F.one_hot(y, self.n_classes).to(x.dtype)], dim=1)
        return self.net(x)


def elbo_surrogate(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float, q_logits: torch.Tensor,
                   n_samples: int = 8, estimator: str = "reinforce", relaxation: float = 0.5,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A sampled objective whose gradient estimates that of the :func:`elbo`.

    The KL term is exact; only :math:`\E_q[\log P(y \mid x, A)]` is sampled, with ``n_samples`` draws.

    * ``"reinforce"`` (score function): :math:`\nabla_\phi \E_q[f] = \E_q[(f - b)\nabla_\phi \log q(a)]`
      with the leave-one-out baseline b (mean of the other draws) :cite:p:`williams1992simple`.
      Unbiased; the value returned is an unbiased estimate of the ELBO.
    * ``"concrete"``: relaxed Bernoulli gates
      :math:`\sigma((\ell + \log u - \log(1 - u))/\lambda)` with temperature ``relaxation``
      :cite:p:`maddison2017concrete,jang2017categorical`, plugged into the network as soft gates
      :math:`a \odot z`. Low variance but biased: the network never sees such gates at test time.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear, ReLU, Linear``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float
        Temperature of the prior gates :math:`\sigma(z/\tau)`.
    q_logits : Tensor, shape (N, m)
        Logits of the factorised Bernoulli q (differentiable, e.g. from :class:`GatePosterior`).
    n_samples : int
        Draws per sample, >= 2.
    estimator : {"reinforce", "concrete"}
    relaxation : float
        Temperature of the concrete relaxation, > 0.
    generator : torch.Generator, optional

    Returns
    -------
    Tensor, shape (N,)
        Differentiable in the model's and q's parameters.
    """
    _check_tau(tau)
    first, second = _check_one_hidden(model, x, y)
    z = first(x)
    if q_logits.shape != z.shape:
        raise ValueError(f"q_logits must have shape {tuple(z.shape)}, got {tuple(q_logits.shape)}")
    if not (isinstance(n_samples, int) and n_samples >= 2):
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    kl = bernoulli_kl(torch.sigmoid(q_logits), z / tau)
    if estimator == "reinforce":
        gates = sample_gates(torch.sigmoid(q_logits).detach(), n_samples, generator)      # (S, N, m)
        f = _log_lik_sampled(second, z, y, gates)                                        # (S, N)
        log_q = (gates * F.logsigmoid(q_logits) + (1 - gates) * F.logsigmoid(-q_logits)).sum(2)
        baseline = (f.sum(0, keepdim=True) - f) / (n_samples - 1)
        score = (f - baseline).detach() * (log_q - log_q.detach())                        # value 0, gradient REINFORCE
        return (f + score).mean(0) - kl
    if estimator == "concrete":
        if not (isinstance(relaxation, (int, float)) and relaxation > 0):
            raise ValueError(f"relaxation must be > 0, got {relaxation!r}")
        u = torch.rand((n_samples, *z.shape), generator=generator, dtype=z.dtype, device=z.device)
        gates = torch.sigmoid((q_logits + torch.logit(u, eps=1e-12)) / relaxation)
        f = _log_lik_sampled(second, z, y, gates)
        return f.mean(0) - kl
    raise ValueError(f"estimator must be 'reinforce' or 'concrete', got {estimator!r}")


class _GatedNet(nn.Module):
    """``model`` run by :func:`gated_forward`, so that ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Sequential):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, gates: GateSpec) -> torch.Tensor:
        return gated_forward(self.model, x, gates)


def sampled_gate_grads(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float, n_draws: int,
                       seed: int = 0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sample gradients :math:`\nabla_\theta \log P(y \mid x, a)` with freshly sampled gates.

    Every (draw, sample) pair draws its own gates :math:`a_l \sim \text{Bernoulli}(\sigma(z_l/\tau))`
    layer by layer (later layers see the earlier sampled gates), as :math:`a_l = \mathbf{1}(u_l <
    \sigma(z_l/\tau))` with uniform noise :math:`u_l` drawn *before* the vectorised map from an explicit
    generator and passed into ``torch.func.vmap`` as an input (vmap's own ``randomness="different"``
    can only use the global generator). The global random state is never read or changed. The gates
    are held fixed when differentiating, so the gradient is that of the gated network (the source's
    :math:`G`).

    Parameters
    ----------
    model : nn.Sequential
        An MLP ``Linear, ReLU, ..., Linear``.
    x : Tensor, shape (N, d)
    y : Tensor, long, shape (N,)
    tau : float
    n_draws : int
        Gate draws per sample.
    seed : int
        Seeds a fresh ``torch.Generator`` when ``generator`` is not given.
    generator : torch.Generator, optional
        Source of the uniform noise (advanced by the call); on any device, the noise is moved to ``x``'s.

    Returns
    -------
    grads : Tensor, shape (n_draws, N, P)
        Flattened parameter gradients, in ``model.parameters()`` order.
    gates : Tensor, bool, shape (n_draws, N, m_total)
        The sampled gates of all hidden layers, concatenated (``m_total`` the sum of the hidden widths).
    """
    _check_tau(tau)
    if not (isinstance(n_draws, int) and n_draws >= 1):
        raise ValueError(f"n_draws must be an int >= 1, got {n_draws!r}")
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must have shape (N, d) and y shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if generator is None:
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        generator = torch.Generator(device=x.device).manual_seed(seed)
    gated_net = _GatedNet(model)
    widths = [module.out_features for i, module in enumerate(model[:-1])
              if isinstance(module, nn.Linear) and isinstance(model[i + 1], nn.ReLU)]
    if len(widths) != sum(isinstance(module, nn.ReLU) for module in model):
        raise ValueError("model must be an nn.Sequential of Linear layers each followed by a ReLU, then a Linear")
    params = {k: v.detach() for k, v in gated_net.named_parameters()}
    xs, ys = x.repeat(n_draws, 1), y.repeat(n_draws)
    noise = torch.rand(len(xs), sum(widths), generator=generator, dtype=x.dtype,
                       device=generator.device).to(x.device)                       # (n_draws N, m_total)
    offsets = [0, *itertools.accumulate(widths)]

    def log_lik(p, xi, yi, ui):
        sampled = []

        def draw(layer, z):
            sampled.append((ui[offsets[layer]:offsets[layer + 1]] < soft_gates(z.detach(), tau)).to(z.dtype))
            return sampled[-1]

        out = functional_call(gated_net, p, (xi.unsqueeze(0), draw))
        return F.log_softmax(out, 1)[0].gather(0, yi.view(1))[0], torch.cat(sampled, dim=1)[0]

    grads, gates = vmap(grad(log_lik, has_aux=True), in_dims=(None, 0, 0, 0))(params, xs, ys, noise)
    flat = torch.cat([g.reshape(len(xs), -1) for g in grads.values()], dim=1)
    return flat.view(n_draws, len(x), -1), gates.view(n_draws, len(x), -1).bool()


def fit_variational(model: nn.Sequential, posterior: GatePosterior, x: torch.Tensor, y: torch.Tensor, tau: float,
                    steps: int, lr: float = 1e-2, batch_size: int = 100, estimator: str = "reinforce",
                    n_samples: int = 8, relaxation: float = 0.5, train_model: bool = True,
                    seed: int = 0, schedule: str = "constant") -> dict[str, list[float]]:
    r"""Maximise the ELBO with Adam over q's parameters (and the model's, if ``train_model``).

    Each step draws a minibatch, records its **exact** ELBO and exact :math:`\log P(y \mid x)` (by
    enumeration, so ``m <= 16``) before updating, then follows the gradient of
    :func:`elbo_surrogate`. The recorded pairs let one check the bound on every batch seen.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear, ReLU, Linear``, updated in place when ``train_model``.
    posterior : GatePosterior
        Updated in place.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float
    steps, batch_size : int
    lr : float
    estimator : {"reinforce", "concrete", "exact"}
        A gradient estimator of :func:`elbo_surrogate`, or ``"exact"``: the gradient of the enumerated
        :func:`elbo` (no sampling noise; separates optimisation from estimator noise).
    n_samples : int
        Gate draws per sample and step.
    relaxation : float
        Temperature of the concrete relaxation (``estimator="concrete"`` only).
    train_model : bool
    seed : int
        Seeds minibatches and gate draws (a local ``torch.Generator``; the global state is untouched).
    schedule : {"constant", "cosine"}
        Learning rate held at ``lr``, or decayed from ``lr`` to 0 along a half cosine over the steps
        (so the final iterates average out the estimator's noise).

    Returns
    -------
    dict
        ``"elbo"``, ``"log_marginal"`` (batch means, exact) and ``"surrogate"`` per step.
    """
    if not (isinstance(steps, int) and steps >= 1 and isinstance(batch_size, int) and 1 <= batch_size <= len(x)):
        raise ValueError(f"steps must be >= 1 and batch_size in [1, {len(x)}], got {steps!r} and {batch_size!r}")
    if estimator not in ("reinforce", "concrete", "exact"):
        raise ValueError(f"estimator must be 'reinforce', 'concrete' or 'exact', got {estimator!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    params = list(posterior.parameters()) + (list(model.parameters()) if train_model else [])
    optimiser = torch.optim.Adam(params, lr=lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps) if schedule == "cosine"
                 else None)
    history: dict[str, list[float]] = {"elbo": [], "log_marginal": [], "surrogate": []}
    for _ in range(steps):
        batch = torch.randperm(len(x), generator=generator, device=x.device)[:batch_size]
        xb, yb = x[batch], y[batch]
        logits = posterior(xb, yb)
        with torch.no_grad():
            history["elbo"].append(elbo(model, xb, yb, tau, torch.sigmoid(logits)).mean().item())
            history["log_marginal"].append(log_marginal_likelihood(model, xb, yb, tau).mean().item())
        if estimator == "exact":
            objective = elbo(model, xb, yb, tau, torch.sigmoid(logits)).mean()
        else:
            objective = elbo_surrogate(model, xb, yb, tau, logits, n_samples, estimator, relaxation,
                                       generator=generator).mean()
        optimiser.zero_grad()
        (-objective).backward()
        optimiser.step()
        if scheduler is not None:
            scheduler.step()
        history["surrogate"].append(objective.item())
    return history


def train_latent_gates(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float, epochs: int,
                       lr: float = 1e-2, batch_size: int = 100,
                       generator: torch.Generator | None = None) -> list[float]:
    r"""Train the latent-gate classifier on its own objective, the exact marginal likelihood.

    Minimises :math:`-\frac1B \sum_{i \in \text{batch}} \log \sum_a P(y_i \mid x_i, a) P(a \mid x_i)`
    (:func:`log_marginal_likelihood`, exact, so ``m <= 16``) with Adam over shuffled minibatches, in
    place. This is the model the gates define; a ReLU network trained on cross-entropy and then read
    with random gates is not trained for it.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)``; updated in place.
    x : Tensor, shape (N, d)
    y : Tensor, long, shape (N,)
    tau : float
    epochs : int
        Passes over the data, >= 1.
    lr : float
        Adam learning rate, > 0.
    batch_size : int
        In [1, N].
    generator : torch.Generator, optional
        Shuffles the minibatches (default: a generator seeded with 0), so the global random state is untouched.

    Returns
    -------
    list of float
        The mean training objective (negative log marginal likelihood, nats) of every epoch.
    """
    _check_tau(tau)
    _check_one_hidden(model, x, y)
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(batch_size, int) and 1 <= batch_size <= len(x)):
        raise ValueError(f"batch_size must be an int in [1, {len(x)}], got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
        total = 0.0
        for batch in order.split(batch_size):
            loss = -log_marginal_likelihood(model, x[batch], y[batch], tau).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        history.append(total / len(x))
    return history

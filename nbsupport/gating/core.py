r"""Gating likelihood core: Bernoulli gates of probability :math:`\sigma(z/\tau)` and the mixture they define.

A hidden unit outputs :math:`a_i z_i` with :math:`a_i \sim \text{Bernoulli}(\sigma(z_i/\tau))`; the
classifier becomes the mixture :math:`P(y \mid x) = \sum_a P(y \mid x, a) P(a \mid x)`, computed here
exactly (all :math:`2^m` patterns of one hidden layer, m <= 16), by Monte Carlo from the prior and by
importance sampling; with posterior marginals, the mean-gate network, per-sample gradients under
sampled gates and training on the marginal likelihood. Re-exported by :mod:`nbsupport.gating`.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import numpy as np

from .._validate import integer, real, torch_rng, training_schedule
from ..models import TrainResult
from ..patterns import unpack_codes

__all__ = [
    "MAX_EXACT_UNITS", "soft_gates", "sample_gates", "gated_forward", "all_patterns",
    "PatternLogProbs", "pattern_log_probs", "MonteCarloEstimate", "log_marginal_likelihood",
    "importance_log_weights", "importance_relative_variance", "effective_sample_size", "pareto_khat",
    "posterior_marginals", "mean_gate_log_likelihood", "sampled_gate_grads", "train_latent_gates",
    "train_latent_gates_many",
]


#: Largest hidden width for exact enumeration (2**16 = 65 536 patterns).
MAX_EXACT_UNITS = 16


def soft_gates(z: torch.Tensor, tau: float) -> torch.Tensor:
    r"""Gate probabilities :math:`\sigma(z / \tau)`, same shape as ``z``.

    Parameters
    ----------
    z : Tensor
        Preactivations.
    tau : float
        Temperature, > 0; :math:`\tau \to 0` gives the hard gate :math:`\mathbf{1}(z > 0)` (and 1/2 at 0).
    """
    real(tau, "tau", low=0)
    return torch.sigmoid(z / tau)


def sample_gates(probs: torch.Tensor, n_samples: int, generator: torch.Generator | None = None,
                 rng=0) -> torch.Tensor:
    r"""Independent Bernoulli gates.

    Parameters
    ----------
    probs : Tensor, shape (...)
        Probabilities in [0, 1].
    n_samples : int
        Number of draws, >= 1.
    generator : torch.Generator, optional
        Alias of a generator passed as ``rng`` (DESIGN.md's name).
    rng : int, torch.Generator or numpy.random.Generator
        Source of the uniform noise :math:`u`, gate = :math:`\mathbf{1}(u < p)`
        (``nbsupport._validate.torch_rng``; default seed 0). The global random state is never used; the
        noise is drawn on the generator's device and moved to ``probs``'.

    Returns
    -------
    Tensor, shape (n_samples, ...)
        0/1 values in the dtype of ``probs``.
    """
    n_samples = integer(n_samples, "n_samples", minimum=1)
    if not (isinstance(probs, torch.Tensor) and bool(((probs >= 0) & (probs <= 1)).all())):
        raise ValueError("probs must be a tensor of probabilities in [0, 1]")
    gen = torch_rng(rng, probs.device, generator=generator)
    u = torch.rand((n_samples, *probs.shape), generator=gen, dtype=probs.dtype, device=gen.device)
    return (u.to(probs.device) < probs).to(probs.dtype)      # the source's rand < p, any device


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


def check_one_hidden(model, x, y) -> tuple[nn.Linear, nn.Linear]:
    if not (isinstance(model, nn.Sequential) and len(model) == 3 and isinstance(model[0], nn.Linear)
            and isinstance(model[1], nn.ReLU) and isinstance(model[2], nn.Linear)):
        raise ValueError("model must be nn.Sequential(Linear, ReLU, Linear)")
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x must have shape (N, d) and y shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    return model[0], model[2]


def all_patterns(m: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Every pattern of ``m`` units, shape (2**m, m), row ``c`` the pattern with code ``c`` (unit i = bit i)."""
    m = integer(m, "m", minimum=1)
    if m > MAX_EXACT_UNITS:
        raise ValueError(f"m must be in [1, {MAX_EXACT_UNITS}] for enumeration, got {m!r}")
    return unpack_codes(torch.arange(2**m, device=device), m).to(dtype)


def log_prior(z: torch.Tensor, patterns: torch.Tensor, tau: float) -> torch.Tensor:
    """log P(a | x) for every sample and pattern: (N, 2**m)."""
    return F.logsigmoid(z / tau) @ patterns.T + F.logsigmoid(-z / tau) @ (1 - patterns).T


def _half_patterns(m: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of :func:`all_patterns` whose high or low half of the code is 0: (L, m) and (H, m), L = 2**(m // 2).

    Code ``l + L h`` is the pattern ``low[l] + high[h]`` (the low units are bits 0 .. m // 2 - 1)."""
    n_low = 2 ** (m // 2)
    codes = (torch.arange(n_low, device=device), torch.arange(2**m // n_low, device=device) * n_low)
    low, high = (unpack_codes(c, m).to(dtype) for c in codes)
    return low, high


def log_prior_halves(z: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(a | x) on the (low code, high code) grid, as its two terms: (N, L, 1) + (N, 1, H).

    The prior factorises over units, so no (N, 2**m) matrix product is needed."""
    low, high = _half_patterns(z.shape[1], z.dtype, z.device)
    on, off = F.logsigmoid(z / tau), F.logsigmoid(-z / tau)
    # each half's term sums over its own units only (the other half's units are 0 in its rows)
    half = torch.arange(z.shape[1], device=z.device) < z.shape[1] // 2

    def term(rows, units):
        a = rows[:, units]
        return on[:, units] @ a.T + off[:, units] @ (1 - a).T

    return term(low, half).unsqueeze(2), term(high, ~half).unsqueeze(1)


def _log_lik_parts(second: nn.Linear, z: torch.Tensor, y: torch.Tensor):
    """:func:`_log_lik_parts_of` with the readout layer ``second``."""
    return _log_lik_parts_of(second.weight.T, second.bias, z, y)


def _log_lik_parts_of(weight_t: torch.Tensor, bias: torch.Tensor | None, z: torch.Tensor, y: torch.Tensor):
    r"""log P(y | x, a) for every sample and pattern on a (low code, high code) grid, in three terms.

    ``weight_t`` is the readout's transposed weight, (m, k) or one per sample (N, m, k); ``bias`` is
    (k,), one per sample (N, 1, k), or None.

    Returns ``low`` (N, L, 1), ``high`` (N, 1, H) and ``log_products`` (N, L, H) with
    :math:`\log P(y \mid x, a) = \text{low} + \text{high} - \text{log\_products}` for the pattern of code
    ``l + L h``. The logits are additive over units, :math:`W_2 (a \odot z) + b_2 = u_l + v_h` for the
    low bits ``l`` and the high bits ``h`` of the code, so the class normaliser
    :math:`\log \sum_k e^{u_{lk}} e^{v_{hk}}` of all :math:`2^m` patterns is one batched matrix
    product of two :math:`2^{m/2} \times k` factors per sample, never a :math:`(2^m, k)` logit array;
    the row maxima of ``u`` and ``v`` are taken out (into ``low`` and ``high``) so that it does not
    overflow. Entries whose product underflows (logits spread over more than ~700 nats) are
    recomputed directly.
    """
    low_patterns, high_patterns = _half_patterns(z.shape[1], z.dtype, z.device)
    contributions = z.unsqueeze(2) * weight_t                              # (N, m, k): z_i W2[:, i]
    u = low_patterns @ contributions                                       # (N, L, k): codes with high bits 0
    if bias is not None:
        u = u + bias
    v = high_patterns @ contributions                                      # (N, H, k): codes with low bits 0
    u_max, v_max = u.max(2, keepdim=True).values, v.max(2, keepdim=True).values
    products = torch.bmm((u - u_max).exp(), (v - v_max).exp().transpose(1, 2))   # (N, L, H)
    tiny = torch.finfo(z.dtype).tiny / torch.finfo(z.dtype).eps
    log_products = products.clamp(min=tiny).log()
    underflow = (products < tiny).nonzero(as_tuple=True)
    if len(underflow[0]):
        n, l, h = underflow
        exact = torch.logsumexp(u[n, l] + v[n, h], dim=1) - u_max[n, l, 0] - v_max[n, h, 0]
        log_products = log_products.index_put(underflow, exact)
    low = u.gather(2, y.view(-1, 1, 1).expand(-1, u.shape[1], 1)) - u_max                  # (N, L, 1)
    high = (v.gather(2, y.view(-1, 1, 1).expand(-1, v.shape[1], 1)) - v_max).transpose(1, 2)  # (N, 1, H)
    return low, high, log_products


def log_lik_all(second: nn.Linear, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log P(y | x, a) for every sample and every pattern, in code order: (N, 2**m)."""
    low, high, log_products = _log_lik_parts(second, z, y)
    return (low + high - log_products).transpose(1, 2).reshape(len(z), -1)   # code l + L h at index h L + l


def log_lik_sampled(second: nn.Linear, z: torch.Tensor, y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
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
    real(tau, "tau", low=0)
    first, second = check_one_hidden(model, x, y)
    z = first(x)
    patterns = all_patterns(z.shape[1], dtype=z.dtype, device=z.device)
    return PatternLogProbs(log_lik_all(second, z, y), log_prior(z, patterns, tau))


class MonteCarloEstimate(NamedTuple):
    """``estimate`` of :math:`\\log P(y \\mid x)` per sample and its standard error (delta method)."""

    estimate: torch.Tensor
    stderr: torch.Tensor


def log_marginal_likelihood(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float,
                            method: str = "exact", n_samples: int = 1000,
                            generator: torch.Generator | None = None, chunk: int = 2**18,
                            proposal: torch.Tensor | None = None, rng=0):
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
        and samples, in chunks of about ``chunk`` (sample, pattern) pairs (the default keeps a chunk's
        float64 arrays within a core's cache).
        ``"mc"``: ``n_samples`` gate draws per sample from :math:`P(a \mid x)`. ``"is"``: importance
        sampling, ``n_samples`` draws from the factorised Bernoulli ``proposal`` :math:`q(a)`, each
        weighted by
        :math:`w(a) = P(y \mid x, a) P(a \mid x) / q(a)`.
    n_samples : int
        Draws for ``"mc"`` and ``"is"``, >= 2.
    rng : int, torch.Generator or numpy.random.Generator
        Source of the draws for ``"mc"`` and ``"is"`` (``nbsupport._validate.torch_rng``, default seed 0;
        the global random state is never used).
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
    real(tau, "tau", low=0)
    first, second = check_one_hidden(model, x, y)
    z = first(x)
    if method == "exact":
        rows = max(1, chunk // 2 ** z.shape[1])
        out = []
        for start in range(0, len(x), rows):
            zc, yc = z[start:start + rows], y[start:start + rows]
            low, high, log_products = _log_lik_parts(second, zc, yc)
            prior_low, prior_high = log_prior_halves(zc, tau)
            joint = ((low + prior_low) + (high + prior_high)).sub_(log_products)      # (rows, L, H)
            out.append(torch.logsumexp(joint.flatten(1), dim=1))
        return torch.cat(out)
    if method not in ("mc", "is"):
        raise ValueError(f"method must be 'exact', 'mc' or 'is', got {method!r}")
    n_samples = integer(n_samples, "n_samples", minimum=2)
    gen = torch_rng(rng, z.device, generator=generator)
    if method == "mc":
        gates = sample_gates(soft_gates(z, tau).detach(), n_samples, rng=gen)       # (S, N, m)
        return _log_mean_exp(log_lik_sampled(second, z, y, gates))
    return _log_mean_exp(_importance_log_weights(second, z, y, tau, proposal, n_samples, gen))


def _importance_log_weights(second, z, y, tau, proposal, n_samples, gen) -> torch.Tensor:
    """log P(y | x, a) + log P(a | x) - log q(a) for ``n_samples`` draws a ~ q: (S, N)."""
    if not (isinstance(proposal, torch.Tensor) and proposal.shape == z.shape
            and bool(((proposal >= 0) & (proposal <= 1)).all())):
        raise ValueError(f"proposal must be a tensor of gate probabilities in [0, 1] of shape "
                         f"{tuple(z.shape)}, got {proposal if proposal is None else tuple(proposal.shape)}")
    q = proposal.detach().to(z.dtype)
    gates = sample_gates(q, n_samples, rng=gen)                                      # (S, N, m)
    log_lik = log_lik_sampled(second, z, y, gates)
    on, logit_q = gates.bool(), torch.logit(q)                                       # logit(0) = -inf: exact
    log_prior = torch.where(on, F.logsigmoid(z / tau), F.logsigmoid(-z / tau)).sum(2)
    log_q = torch.where(on, F.logsigmoid(logit_q), F.logsigmoid(-logit_q)).sum(2)
    return log_lik + log_prior - log_q


def importance_log_weights(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float,
                           proposal: torch.Tensor, n_samples: int = 1000, rng=0) -> torch.Tensor:
    r"""Log importance weights :math:`\log w(a) = \log P(y \mid x, a) + \log P(a \mid x) - \log q(a)`.

    The draws behind ``log_marginal_likelihood(..., method="is")`` (the same ``rng`` gives the same
    draws), for diagnostics: :func:`effective_sample_size`, :func:`pareto_khat`.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float
    proposal : Tensor, shape (N, m)
        Gate probabilities of the factorised Bernoulli proposal :math:`q(a)`.
    n_samples : int
        Draws per sample, >= 2.
    rng : int, torch.Generator or numpy.random.Generator

    Returns
    -------
    Tensor, shape (n_samples, N)
    """
    real(tau, "tau", low=0)
    first, second = check_one_hidden(model, x, y)
    z = first(x)
    n_samples = integer(n_samples, "n_samples", minimum=2)
    return _importance_log_weights(second, z, y, tau, proposal, n_samples,
                                   torch_rng(rng, z.device))


def importance_relative_variance(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float,
                                 proposal: torch.Tensor) -> torch.Tensor:
    r"""Exact relative variance of the importance weights, :math:`\Var_q(w) / \E_q[w]^2`, by enumeration.

    With :math:`p(a) = P(y \mid x, a) P(a \mid x)` and :math:`P = \sum_a p(a) = \E_q[w]`,

    .. math::

        \frac{\Var_q(w)}{P^2} = \frac{1}{P^2} \sum_a \frac{p(a)^2}{q(a)} - 1
        = \chi^2\big(P(\cdot \mid x, y) \,\Vert\, q\big),

    the chi-square divergence of the proposal from the posterior. It fixes everything a sampled
    diagnostic estimates: with S draws the relative standard error of the estimate of P is about
    :math:`\sqrt{\chi^2 / S}` and Kish's effective sample size about :math:`S / (1 + \chi^2)`
    (:func:`effective_sample_size`). Exact where :func:`pareto_khat` is undefined (discrete weights).

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)`` with ``m <= 16``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float
    proposal : Tensor, shape (N, m)
        Gate probabilities of the factorised Bernoulli proposal, strictly inside (0, 1) (a gate of
        probability 0 or 1 leaves patterns undrawn and the variance can be infinite).

    Returns
    -------
    Tensor, shape (N,)
        :math:`\chi^2 \ge 0` per sample.
    """
    lp = pattern_log_probs(model, x, y, tau)
    m = lp.log_lik.shape[1].bit_length() - 1
    if not (isinstance(proposal, torch.Tensor) and proposal.shape == (len(x), m)
            and bool(((proposal > 0) & (proposal < 1)).all())):
        raise ValueError(f"proposal must be a tensor of gate probabilities strictly inside (0, 1) of "
                         f"shape {(len(x), m)}, got {proposal if proposal is None else tuple(proposal.shape)}")
    q = proposal.detach().to(lp.log_lik.dtype)
    patterns = all_patterns(m, dtype=q.dtype, device=q.device)
    log_q = q.log() @ patterns.T + (-q).log1p() @ (1 - patterns).T                   # (N, 2**m)
    log_p = lp.log_lik + lp.log_prior
    log_second = torch.logsumexp(2 * log_p - log_q, dim=1) - 2 * torch.logsumexp(log_p, dim=1)
    return torch.expm1(log_second).clamp(min=0)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Kish's effective sample size :math:`(\sum_s w_s)^2 / \sum_s w_s^2` per column.

    Parameters
    ----------
    log_weights : Tensor, shape (S, N)
        Log importance weights, draws along axis 0.

    Returns
    -------
    Tensor, shape (N,)
        In [1, S].
    """
    if not (isinstance(log_weights, torch.Tensor) and log_weights.ndim == 2 and len(log_weights) >= 1):
        raise ValueError("log_weights must be a tensor of shape (S, N)")
    w = (log_weights - log_weights.max(0).values).exp()
    return w.sum(0).pow(2) / w.pow(2).sum(0)


def _gpd_fit(exceedances: np.ndarray) -> float:
    """Shape k of a generalised Pareto law fitted to sorted positive exceedances.

    Zhang & Stephens (2009)'s empirical-Bayes estimate with the weakly informative prior of
    Vehtari et al. (2024), shrinking k towards 1/2 with the weight of 10 observations."""
    n = len(exceedances)
    m_est = 30 + int(n**0.5)
    b = 1 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=float) - 0.5))
    b = b / (3 * exceedances[int(n / 4 + 0.5) - 1]) + 1 / exceedances[-1]
    k = np.log1p(-b[:, None] * exceedances).mean(axis=1)
    profile = n * (np.log(-b / k) - k - 1)
    weights = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(float).eps
    b, weights = b[keep], weights[keep] / weights[keep].sum()
    k_post = np.log1p(-(b * weights).sum() * exceedances).mean()
    return (n * k_post + 10 * 0.5) / (n + 10)


def pareto_khat(log_weights: torch.Tensor) -> np.ndarray:
    r"""Pareto :math:`\hat k` of importance weights (PSIS diagnostic), per column.

    The largest :math:`M = \lceil\min(S/5, 3\sqrt S)\rceil` weights are fitted by a generalised
    Pareto law above the next one; its shape :math:`\hat k` says how heavy the weights' tail is
    :cite:p:`yao2018yes`: below 0.5 the plain importance-sampling estimate has finite variance and
    is reliable, 0.5-0.7 usable with care, above 0.7 unreliable whatever the number of draws.

    Parameters
    ----------
    log_weights : Tensor or array, shape (S,) or (S, N)
        Log importance weights, draws along axis 0, S >= 10.

    Returns
    -------
    numpy.ndarray of float64, shape (N,) (or a 0-d array for 1-D input)
        ``nan`` (undefined) where the tail cannot be fitted: the :math:`M + 1` largest weights hold
        a tie, or all weights are 0. The fit assumes a continuous law of the weights, under which
        ties have probability 0; weights of a discrete latent variable (e.g. a gate pattern, one
        weight value per pattern) repeat exactly whenever a pattern is drawn twice, and a
        generalised-Pareto shape fitted to such a tail says nothing about its variance (there,
        compute the weights' moments exactly, :func:`importance_relative_variance`).
    """
    values = (log_weights.detach().cpu().double().numpy() if isinstance(log_weights, torch.Tensor)
              else np.asarray(log_weights, dtype=np.float64))
    if values.ndim not in (1, 2) or len(values) < 10 or not np.all(np.isfinite(values) | (values == -np.inf)):
        raise ValueError("log_weights must have shape (S,) or (S, N) with S >= 10, finite or -inf")
    single = values.ndim == 1
    values = values.reshape(len(values), -1)
    n = len(values)
    tail = int(np.ceil(min(0.2 * n, 3 * np.sqrt(n))))
    out = np.empty(values.shape[1])
    for j, column in enumerate(values.T):
        if not np.isfinite(column.max()):
            out[j] = np.nan
            continue
        column = np.sort(column - column.max())
        top = column[-tail - 1:]
        if np.any(np.diff(top) == 0) or top[0] < np.log(np.finfo(float).tiny):
            out[j] = np.nan                                # tied (discrete) or underflowing tail
            continue
        out[j] = _gpd_fit(np.exp(column[-tail:]) - np.exp(top[0]))
    return out[0] if single else out


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
    real(tau, "tau", low=0)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must have shape (N, d) and y shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    logits = gated_forward(model, x, lambda layer, z: soft_gates(z, tau))
    return F.log_softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)


class _GatedNet(nn.Module):
    """``model`` run by :func:`gated_forward`, so that ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Sequential):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, gates: GateSpec) -> torch.Tensor:
        return gated_forward(self.model, x, gates)


def sampled_gate_grads(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float, n_draws: int,
                       rng=0) -> tuple[torch.Tensor, torch.Tensor]:
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
    rng : int, torch.Generator or numpy.random.Generator
        Source of the uniform noise (``nbsupport._validate.torch_rng``, default seed 0; a generator is
        advanced by the call); on any device, the noise is moved to ``x``'s.

    Returns
    -------
    grads : Tensor, shape (n_draws, N, P)
        Flattened parameter gradients, in ``model.parameters()`` order.
    gates : Tensor, bool, shape (n_draws, N, m_total)
        The sampled gates of all hidden layers, concatenated (``m_total`` the sum of the hidden widths).
    """
    real(tau, "tau", low=0)
    n_draws = integer(n_draws, "n_draws", minimum=1)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must have shape (N, d) and y shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    generator = torch_rng(rng, x.device)
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


def train_latent_gates(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float, *, epochs: int,
                       lr: float = 1e-2, batch_size: int = 100, rng=0) -> TrainResult:
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
        Passes over the shuffled data, >= 1 (as :func:`nbsupport.models.train` counts them).
    lr : float
        Adam learning rate, > 0.
    batch_size : int
        In [1, N].
    rng : int, torch.Generator or numpy.random.Generator
        Shuffles the minibatches (``nbsupport._validate.torch_rng``, default seed 0; a CPU torch
        generator is used and advanced); the global random state is untouched.

    Returns
    -------
    nbsupport.models.TrainResult
        ``history``: one record per epoch, ``{"epoch": e, "loss": ...}``, the mean training
        objective (negative log marginal likelihood, nats per sample) over the epoch's minibatches.
        Not cached (``key`` is ``""``).
    """
    real(tau, "tau", low=0)
    check_one_hidden(model, x, y)
    epochs, batch_size = training_schedule(len(x), epochs, "epochs", lr, batch_size)
    generator = torch_rng(rng, None)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    result = TrainResult()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
        total = 0.0
        for batch in order.split(batch_size):
            loss = -log_marginal_likelihood(model, x[batch], y[batch], tau).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        result.history.append({"epoch": epoch, "loss": total / len(x)})
    return result


def train_latent_gates_many(models: Sequence[nn.Sequential], x: torch.Tensor, y: torch.Tensor,
                            taus: float | Sequence[float], *, epochs: int, lr: float = 1e-2,
                            batch_size: int = 100, rngs: Sequence | None = None) -> list[TrainResult]:
    r""":func:`train_latent_gates` for several models at once, one vectorised step for all of them.

    Model ``k`` is trained exactly as ``train_latent_gates(models[k], x, y, taus[k], epochs=epochs,
    lr=lr, batch_size=batch_size, rng=rngs[k])`` would train it (its own minibatch order from its own ``rng``, its own
    Adam state), up to floating-point rounding: the parameters are stacked along a leading model
    axis, the loss is the sum over models of each model's minibatch mean, whose gradient in model
    ``k``'s parameters is that model's own gradient, and Adam updates every coordinate on its own.
    The (model, sample, pattern) arrays are built in one batch, so Python and autograd overhead is
    paid once per step instead of once per model.

    Parameters
    ----------
    models : sequence of nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)`` of one shape (``m <= 16``), float64 or float32, each
        with biases; updated in place.
    x, y, epochs, lr, batch_size
        As in :func:`train_latent_gates`.
    taus : float or sequence of float
        One temperature for all models, or one per model (> 0).
    rngs : sequence, optional
        One ``rng`` per model (int seed or generator, as :func:`train_latent_gates`); default seeds
        ``0, 1, ...``.

    Returns
    -------
    list of nbsupport.models.TrainResult
        One per model, in order, each as :func:`train_latent_gates` returns it.
    """
    models = list(models)
    if not models:
        raise ValueError("models must be a non-empty sequence of networks")
    firsts, seconds = zip(*(check_one_hidden(model, x, y) for model in models))
    if len({(f.weight.shape, s.weight.shape) for f, s in zip(firsts, seconds)}) != 1 or any(
            f.bias is None or s.bias is None for f, s in zip(firsts, seconds)):
        raise ValueError("models must all have the same layer shapes, with biases")
    n_models = len(models)
    taus = [taus] * n_models if isinstance(taus, (int, float)) else list(taus)
    if len(taus) != n_models:
        raise ValueError(f"taus must be a float or one per model ({n_models}), got {len(taus)}")
    for tau in taus:
        real(tau, "taus", low=0)
    epochs, batch_size = training_schedule(len(x), epochs, "epochs", lr, batch_size)
    rngs = list(range(n_models)) if rngs is None else list(rngs)
    if len(rngs) != n_models:
        raise ValueError(f"rngs must have one entry per model ({n_models}), got {len(rngs)}")
    generators = [torch_rng(r, None) for r in rngs]
    with torch.no_grad():
        stacked = [torch.stack([layer.weight.detach() for layer in firsts]).clone(),
                   torch.stack([layer.bias.detach() for layer in firsts]).clone(),
                   torch.stack([layer.weight.detach().T for layer in seconds]).clone(),
                   torch.stack([layer.bias.detach() for layer in seconds]).clone()]
    for tensor in stacked:
        tensor.requires_grad_(True)
    w1, b1, w2t, b2 = stacked                       # (K, m, d), (K, m), (K, m, k), (K, k)
    n_classes = b2.shape[1]
    tau_t = torch.tensor(taus, dtype=w1.dtype, device=w1.device)
    optimiser = torch.optim.Adam(stacked, lr=lr)
    results = [TrainResult() for _ in models]
    for epoch in range(1, epochs + 1):
        orders = [torch.randperm(len(x), generator=g, device=g.device).to(x.device) for g in generators]
        totals = torch.zeros(n_models, dtype=torch.float64)
        for start in range(0, len(x), batch_size):
            batch = torch.stack([order[start:start + batch_size] for order in orders])   # (K, B)
            n_batch = batch.shape[1]
            xb, yb = x[batch], y[batch]                                                   # (K, B, d), (K, B)
            z = torch.baddbmm(b1.unsqueeze(1), xb.to(w1.dtype), w1.transpose(1, 2))      # (K, B, m)
            rows = z.reshape(n_models * n_batch, -1)
            weight_t = w2t.unsqueeze(1).expand(-1, n_batch, -1, -1).reshape(len(rows), -1, n_classes)
            bias = b2.unsqueeze(1).expand(-1, n_batch, -1).reshape(len(rows), 1, n_classes)
            low, high, log_products = _log_lik_parts_of(weight_t, bias, rows, yb.reshape(-1))
            prior_low, prior_high = log_prior_halves(rows, tau_t.repeat_interleave(n_batch).unsqueeze(1))
            joint = (low + prior_low) + (high + prior_high) - log_products
            per_model = torch.logsumexp(joint.flatten(1), dim=1).view(n_models, n_batch).mean(1)
            optimiser.zero_grad()
            (-per_model.sum()).backward()
            optimiser.step()
            totals -= per_model.detach().to(torch.float64).cpu() * n_batch
        for result, total in zip(results, totals.tolist()):
            result.history.append({"epoch": epoch, "loss": total / len(x)})
    with torch.no_grad():
        for k, (first, second) in enumerate(zip(firsts, seconds)):
            first.weight.copy_(w1[k])
            first.bias.copy_(b1[k])
            second.weight.copy_(w2t[k].T)
            second.bias.copy_(b2[k])
    return results

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

from ._validate import real

__all__ = [
    "MAX_EXACT_UNITS", "soft_gates", "sample_gates", "gated_forward", "all_patterns",
    "PatternLogProbs", "pattern_log_probs", "MonteCarloEstimate", "log_marginal_likelihood",
    "posterior_marginals", "mean_gate_log_likelihood", "sampled_gate_grads", "train_latent_gates",
]


#: Largest hidden width for exact enumeration (2**16 = 65 536 patterns).
MAX_EXACT_UNITS = 16



def _check_tau(tau) -> None:
    real(tau, "tau", low=0)


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


def _half_patterns(m: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of :func:`all_patterns` whose high or low half of the code is 0: (L, m) and (H, m), L = 2**(m // 2).

    Code ``l + L h`` is the pattern ``low[l] + high[h]`` (the low units are bits 0 .. m // 2 - 1)."""
    n_low = 2 ** (m // 2)
    bits = torch.arange(m, device=device)
    codes = (torch.arange(n_low, device=device), torch.arange(2**m // n_low, device=device) * n_low)
    low, high = (((c.unsqueeze(1) >> bits) & 1).to(dtype) for c in codes)
    return low, high


def _log_prior_halves(z: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
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
    r"""log P(y | x, a) for every sample and pattern on a (low code, high code) grid, in three terms.

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
    contributions = z.unsqueeze(2) * second.weight.T                       # (N, m, k): z_i W2[:, i]
    u = low_patterns @ contributions                                       # (N, L, k): codes with high bits 0
    if second.bias is not None:
        u = u + second.bias
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


def _log_lik_all(second: nn.Linear, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log P(y | x, a) for every sample and every pattern, in code order: (N, 2**m)."""
    low, high, log_products = _log_lik_parts(second, z, y)
    return (low + high - log_products).transpose(1, 2).reshape(len(z), -1)   # code l + L h at index h L + l


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
                            generator: torch.Generator | None = None, chunk: int = 2**18,
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
        and samples, in chunks of about ``chunk`` (sample, pattern) pairs (the default keeps a chunk's
        float64 arrays within a core's cache: 2**18 pairs ran 2-3x faster than 2**22 at m = 16).
        ``"mc"``: ``n_samples`` gate draws per sample from :math:`P(a \mid x)`. ``"is"``: importance
        sampling, ``n_samples`` draws from the factorised Bernoulli ``proposal`` :math:`q(a)`, each
        weighted by
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
        rows = max(1, chunk // 2 ** z.shape[1])
        out = []
        for start in range(0, len(x), rows):
            zc, yc = z[start:start + rows], y[start:start + rows]
            low, high, log_products = _log_lik_parts(second, zc, yc)
            prior_low, prior_high = _log_prior_halves(zc, tau)
            joint = ((low + prior_low) + (high + prior_high)).sub_(log_products)      # (rows, L, H)
            out.append(torch.logsumexp(joint.flatten(1), dim=1))
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
    real(lr, "lr", low=0)
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

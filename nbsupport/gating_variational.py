r"""Variational posteriors over gate patterns: the ELBO, its sampled gradient estimators and a fitting loop.

Re-exported by :mod:`nbsupport.gating`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import real
from .gating_core import (_check_one_hidden, _check_tau, _log_lik_all, _log_lik_sampled,
                          all_patterns, log_marginal_likelihood, sample_gates)

__all__ = ["bernoulli_kl", "elbo", "GatePosterior", "elbo_surrogate", "fit_variational"]


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
        real(relaxation, "relaxation", low=0)
        u = torch.rand((n_samples, *z.shape), generator=generator, dtype=z.dtype, device=z.device)
        gates = torch.sigmoid((q_logits + torch.logit(u, eps=1e-12)) / relaxation)
        f = _log_lik_sampled(second, z, y, gates)
        return f.mean(0) - kl
    raise ValueError(f"estimator must be 'reinforce' or 'concrete', got {estimator!r}")


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

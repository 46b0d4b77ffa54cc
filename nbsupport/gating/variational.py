r"""Variational posteriors over gate patterns: the ELBO, its sampled gradient estimators and a fitting loop.

Re-exported by :mod:`nbsupport.gating`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import integer, numpy_rng, real, torch_rng, training_schedule
from ..models import TrainResult
from .core import (all_patterns, check_one_hidden, log_lik_all, log_marginal_likelihood,
                   pattern_log_probs, posterior_marginals)

__all__ = ["bernoulli_kl", "elbo", "GatePosterior", "elbo_surrogate", "fit_variational",
           "ESTIMATORS", "logit_gradient_estimates", "exact_logit_gradient",
           "optimal_factorised_posterior", "BiasTest", "bias_test"]

#: Sampled gradient estimators of :math:`\E_q[\log P(y \mid x, A)]` known to :func:`elbo_surrogate`.
ESTIMATORS = ("reinforce", "disarm", "concrete")


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
    real(tau, "tau", low=0)
    first, second = check_one_hidden(model, x, y)
    z = first(x)
    if q_probs.shape != z.shape or not bool(((q_probs >= 0) & (q_probs <= 1)).all()):
        raise ValueError(f"q_probs must have shape {tuple(z.shape)} with values in [0, 1]")
    patterns = all_patterns(z.shape[1], dtype=z.dtype, device=z.device)
    floor = torch.finfo(z.dtype).min / (4 * z.shape[1])  # log 0, finite so that 0 * log 0 = 0 in the sums
    log_q = q_probs.log().clamp(min=floor) @ patterns.T + (1 - q_probs).log().clamp(min=floor) @ (1 - patterns).T
    expected = (log_q.exp() * log_lik_all(second, z, y)).sum(1)
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


def _log_lik_gates(second: nn.Linear, z: torch.Tensor, y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """log P(y | x, a) for gates (..., N, m) of any values, hard or relaxed: (..., N)."""
    logp = F.log_softmax(second(z * gates), dim=-1)
    return logp.gather(-1, y.view(-1, 1).expand(*logp.shape[:-1], 1)).squeeze(-1)


def _sampled_term(second, z, y, q_logits, n_samples, estimator, relaxation, gen) -> torch.Tensor:
    r"""Surrogate of :math:`\E_q[\log P(y \mid x, A)]` for logits (..., N, m): value and gradient, (..., N)."""
    shape = (n_samples, *q_logits.shape)
    u = torch.rand(shape, generator=gen, dtype=z.dtype, device=gen.device).to(z.device)
    probs = torch.sigmoid(q_logits)
    if estimator == "reinforce":
        gates = (u < probs.detach()).to(z.dtype)                                      # (S, ..., N, m)
        f = _log_lik_gates(second, z, y, gates)                                       # (S, ..., N)
        log_q = (gates * F.logsigmoid(q_logits) + (1 - gates) * F.logsigmoid(-q_logits)).sum(-1)
        baseline = (f.sum(0, keepdim=True) - f) / (n_samples - 1)                     # leave-one-out
        return (f + (f - baseline).detach() * (log_q - log_q.detach())).mean(0)
    if estimator == "disarm":
        half = u[: n_samples // 2]
        gates = (half < probs.detach()).to(z.dtype)
        twins = (1 - half < probs.detach()).to(z.dtype)                               # antithetic draws
        f, f_twin = _log_lik_gates(second, z, y, gates), _log_lik_gates(second, z, y, twins)
        sign = 1 - 2 * twins                                                           # (-1)^{b~}
        g = 0.5 * (f - f_twin).unsqueeze(-1) * sign * (gates != twins) * torch.sigmoid(q_logits.abs())
        value = 0.5 * (f + f_twin)
        return (value + (g.detach() * (q_logits - q_logits.detach())).sum(-1)).mean(0)
    gates = torch.sigmoid((q_logits + torch.logit(u, eps=1e-12)) / relaxation)       # concrete
    return _log_lik_gates(second, z, y, gates).mean(0)


def _check_estimator(estimator, n_samples, relaxation) -> int:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    n_samples = integer(n_samples, "n_samples", minimum=2)
    if estimator == "disarm" and n_samples % 2:
        raise ValueError(f"n_samples must be even for estimator='disarm' (antithetic pairs), got {n_samples}")
    real(relaxation, "relaxation", low=0)
    return n_samples


def elbo_surrogate(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float, q_logits: torch.Tensor,
                   n_samples: int = 8, estimator: str = "reinforce", relaxation: float = 0.5,
                   rng=0) -> torch.Tensor:
    r"""A sampled objective whose gradient estimates that of the :func:`elbo`.

    The KL term is exact; only :math:`\E_q[\log P(y \mid x, A)]` is sampled, with ``n_samples`` draws.

    * ``"reinforce"`` (score function): :math:`\nabla_\phi \E_q[f] = \E_q[(f - b)\nabla_\phi \log q(a)]`
      with the leave-one-out baseline b (mean of the other draws)
      :cite:p:`williams1992simple,kool2019buy`. Unbiased; the value returned is an unbiased
      estimate of the ELBO.
    * ``"disarm"``: ``n_samples / 2`` antithetic pairs :math:`b = \mathbf{1}(u < q)`,
      :math:`\tilde b = \mathbf{1}(1 - u < q)` and, for the logits :math:`\phi`,
      :math:`\tfrac12 (f(b) - f(\tilde b)) (-1)^{\tilde b_i} \mathbf{1}(b_i \ne \tilde b_i)
      \sigma(|\phi_i|)` :cite:p:`yin2019arm,dong2020disarm`. Unbiased.
    * ``"concrete"``: relaxed Bernoulli gates
      :math:`\sigma((\phi + \log u - \log(1 - u))/\lambda)` with temperature ``relaxation``
      :cite:p:`maddison2017concrete,jang2017categorical`, plugged into the network as soft gates
      :math:`a \odot z`. Low variance but biased: the network never sees such gates at test time.

    The model's parameters get the pathwise gradient of :math:`f` at the drawn gates (for
    ``"concrete"`` at the relaxed ones).

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
        Draws per sample, >= 2 (even for ``"disarm"``).
    estimator : {"reinforce", "disarm", "concrete"}
    relaxation : float
        Temperature of the concrete relaxation, > 0.
    rng : int, torch.Generator or numpy.random.Generator
        Source of the uniform noise (``nbsupport._validate.torch_rng``, default seed
        0); the global random state is never used.

    Returns
    -------
    Tensor, shape (N,)
        Differentiable in the model's and q's parameters.
    """
    real(tau, "tau", low=0)
    first, second = check_one_hidden(model, x, y)
    z = first(x)
    if q_logits.shape != z.shape:
        raise ValueError(f"q_logits must have shape {tuple(z.shape)}, got {tuple(q_logits.shape)}")
    n_samples = _check_estimator(estimator, n_samples, relaxation)
    gen = torch_rng(rng, z.device)
    kl = bernoulli_kl(torch.sigmoid(q_logits), z / tau)
    return _sampled_term(second, z, y, q_logits, n_samples, estimator, relaxation, gen) - kl


def exact_logit_gradient(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                         q_logits: torch.Tensor) -> torch.Tensor:
    r"""Exact :math:`\nabla_\phi \E_{q_\phi}[\log P(y \mid x, A)]` per sample, by enumeration.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)`` with ``m <= 16``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    q_logits : Tensor, shape (N, m)
        Logits of the factorised Bernoulli q.

    Returns
    -------
    Tensor, shape (N, m)
    """
    first, second = check_one_hidden(model, x, y)
    with torch.no_grad():
        log_lik = log_lik_all(second, first(x), y)                                   # (N, 2**m)
    if q_logits.shape != (len(x), log_lik.shape[1].bit_length() - 1):
        raise ValueError(f"q_logits must have shape {(len(x), log_lik.shape[1].bit_length() - 1)}, "
                         f"got {tuple(q_logits.shape)}")
    phi = q_logits.detach().clone().requires_grad_(True)
    patterns = all_patterns(phi.shape[1], dtype=phi.dtype, device=phi.device)
    log_q = F.logsigmoid(phi) @ patterns.T + F.logsigmoid(-phi) @ (1 - patterns).T
    return torch.autograd.grad((log_q.exp() * log_lik).sum(), phi)[0]


def logit_gradient_estimates(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                             q_logits: torch.Tensor, estimator: str = "reinforce", n_samples: int = 8,
                             n_repeats: int = 100, relaxation: float = 0.5, rng=0) -> torch.Tensor:
    r"""``n_repeats`` independent estimates of :math:`\nabla_\phi \E_{q_\phi}[\log P(y \mid x, A)]`.

    Each estimate is the gradient of :func:`elbo_surrogate`'s sampled term with ``n_samples`` draws
    per sample, as a training step would see it; compare with :func:`exact_logit_gradient` for the
    bias and variance of an estimator.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear, ReLU, Linear``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    q_logits : Tensor, shape (N, m)
    estimator : {"reinforce", "disarm", "concrete"}
    n_samples : int
        Draws per estimate (function evaluations: DisARM uses ``n_samples / 2`` pairs).
    n_repeats : int
        Independent estimates, >= 1.
    relaxation : float
        Concrete temperature.
    rng : int, torch.Generator or numpy.random.Generator

    Returns
    -------
    Tensor, shape (n_repeats, N, m)
    """
    first, second = check_one_hidden(model, x, y)
    n_samples = _check_estimator(estimator, n_samples, relaxation)
    n_repeats = integer(n_repeats, "n_repeats", minimum=1)
    with torch.no_grad():
        z = first(x)
    if q_logits.shape != z.shape:
        raise ValueError(f"q_logits must have shape {tuple(z.shape)}, got {tuple(q_logits.shape)}")
    gen = torch_rng(rng, z.device)
    phi = q_logits.detach().expand(n_repeats, *z.shape).clone().requires_grad_(True)
    term = _sampled_term(second, z, y, phi, n_samples, estimator, relaxation, gen)  # (R, N)
    return torch.autograd.grad(term.sum(), phi)[0]


class BiasTest(NamedTuple):
    """Outcome of :func:`bias_test`: the unbiased estimate of the squared norm of the mean error,
    its sign-flip p-value and the number of sign flips it was drawn from."""

    squared_bias: float
    p: float
    n_flips: int


def bias_test(errors, n_flips: int = 1000, rng=0) -> BiasTest:
    r"""Test whether estimates are unbiased in many dimensions at once.

    ``errors`` are n independent estimates minus the exact value, each a vector of d coordinates.
    The statistic is the U-statistic

    .. math::

        U = \frac{\lVert \sum_i e_i \rVert^2 - \sum_i \lVert e_i \rVert^2}{n (n - 1)}
          = \frac{1}{n(n-1)} \sum_{i \ne j} e_i^\top e_j,

    an unbiased estimate of :math:`\lVert \E e \rVert^2` (the squared norm of the bias), whatever
    d. Its null distribution is drawn by flipping the sign of each estimate's error at random (exact
    when the errors are symmetric about zero under the null; a sample-size-calibrated approximation
    otherwise). Unlike a rule "the norm of the mean error exceeds k noise floors", whose null ratio
    concentrates near 1 as d grows, the test keeps its size in any dimension.

    Parameters
    ----------
    errors : array or Tensor, shape (n, d)
        n >= 2 estimates minus the exact value (extra trailing axes are flattened).
    n_flips : int
        Random sign-flip draws for the null, >= 200.
    rng : int or generator

    Returns
    -------
    BiasTest
        ``squared_bias`` = U (can be negative when the bias is small), ``p`` = (1 + b) / (1 +
        n_flips) with b the flips whose U is at least the observed one.
    """
    e = torch.as_tensor(errors).detach().to("cpu", torch.float64)
    if e.ndim < 2 or e.shape[0] < 2:
        raise ValueError(f"errors must have shape (n >= 2, d), got {tuple(e.shape)}")
    e = e.reshape(e.shape[0], -1)
    if not bool(torch.isfinite(e).all()):
        raise ValueError("errors must be finite")
    n_flips = integer(n_flips, "n_flips", minimum=200)
    n = e.shape[0]
    sq = e.pow(2).sum()
    total = e.sum(0)
    observed = ((total @ total - sq) / (n * (n - 1))).item()
    signs = numpy_rng(rng).choice([-1.0, 1.0], size=(n_flips, n))
    flipped = torch.from_numpy(signs) @ e  # (n_flips, d)
    null = (flipped.pow(2).sum(1) - sq) / (n * (n - 1))
    exceed = int((null >= observed - 1e-15 * abs(observed)).sum())
    return BiasTest(observed, (1 + exceed) / (1 + n_flips), n_flips)


def optimal_factorised_posterior(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, tau: float,
                                 init: torch.Tensor | None = None, max_sweeps: int = 500,
                                 tol: float = 1e-10) -> torch.Tensor:
    r"""Per-point ELBO optimum over factorised Bernoulli :math:`q(a)`, by coordinate ascent (CAVI).

    The ELBO of a factorised q is :math:`\E_q[\log P(y, A \mid x)] + H(q)`; holding all units but
    one fixed, its maximiser is :math:`\operatorname{logit} q_i = \E_{q_{-i}}[\log P(y, A \mid x)
    \mid a_i = 1] - \E_{q_{-i}}[\,\cdot \mid a_i = 0]`, computed exactly over all :math:`2^m`
    patterns. Sweeps over the units never lower the ELBO; they stop when no probability moves by
    more than ``tol``. The result, per point, is the best q of the family reachable from ``init``
    (a local optimum in general): against it, the gap of an amortised q splits into the
    approximation gap (of the family) and the amortisation gap (of the shared encoder)
    :cite:p:`cremer2018inference`.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear(d, m), ReLU, Linear(m, k)`` with ``m <= 16``.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float
    init : Tensor, shape (N, m), optional
        Starting probabilities; default the exact posterior marginals (:func:`posterior_marginals`).
    max_sweeps : int
    tol : float

    Returns
    -------
    Tensor, shape (N, m)
        Probabilities of q.
    """
    real(tau, "tau", low=0)
    max_sweeps = integer(max_sweeps, "max_sweeps", minimum=1)
    real(tol, "tol", low=0)
    with torch.no_grad():
        lp = pattern_log_probs(model, x, y, tau)
        joint = lp.log_lik + lp.log_prior                                              # (N, 2**m)
        m = joint.shape[1].bit_length() - 1
        q = posterior_marginals(model, x, y, tau) if init is None else init.detach().to(joint.dtype)
        if q.shape != (len(x), m) or not bool(((q >= 0) & (q <= 1)).all()):
            raise ValueError(f"init must hold probabilities of shape {(len(x), m)}")
        q = q.clone()
        patterns = all_patterns(m, dtype=joint.dtype, device=joint.device)
        on = patterns.bool()
        floor = torch.finfo(joint.dtype).min / (4 * m)
        for _ in range(max_sweeps):
            moved = 0.0
            for i in range(m):
                others = torch.arange(m, device=q.device) != i
                log_q = (q[:, others].log().clamp(min=floor) @ patterns[:, others].T
                         + (1 - q[:, others]).log().clamp(min=floor) @ (1 - patterns[:, others]).T)
                w = log_q.exp()                                                        # (N, 2**m)
                expect_on = (w * joint)[:, on[:, i]].sum(1)
                expect_off = (w * joint)[:, ~on[:, i]].sum(1)
                new = torch.sigmoid(expect_on - expect_off)
                moved = max(moved, (new - q[:, i]).abs().max().item())
                q[:, i] = new
            if moved <= tol:
                break
    return q


def fit_variational(model: nn.Sequential, posterior: GatePosterior, x: torch.Tensor, y: torch.Tensor, tau: float,
                    *, steps: int, lr: float = 1e-2, batch_size: int = 100, estimator: str = "reinforce",
                    n_samples: int = 8, relaxation: float = 0.5, train_model: bool = True,
                    rng=0, schedule: str = "constant", record: bool = True) -> TrainResult:
    r"""Maximise the ELBO with Adam over q's parameters (and the model's, if ``train_model``).

    Each step draws a minibatch, records its **exact** ELBO and exact :math:`\log P(y \mid x)` (by
    enumeration, so ``m <= 16``) before updating, then follows the gradient of
    :func:`elbo_surrogate`. The recorded pairs let one check the bound on every batch seen.

    The loop counts ``steps``, not epochs: every step draws its minibatch afresh (``batch_size``
    distinct samples, independently of the other steps), so there are no passes over the data to
    count, unlike :func:`~nbsupport.gating.train_latent_gates` and :func:`nbsupport.models.train`.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear, ReLU, Linear``, updated in place when ``train_model``.
    posterior : GatePosterior
        Updated in place.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N,)
    tau : float
    steps : int
        Gradient steps, >= 1, one freshly drawn minibatch each.
    batch_size : int
        In [1, N].
    lr : float
    estimator : {"reinforce", "disarm", "concrete", "exact"}
        A gradient estimator of :func:`elbo_surrogate`, or ``"exact"``: the gradient of the enumerated
        :func:`elbo` (no sampling noise; separates optimisation from estimator noise).
    n_samples : int
        Gate draws per sample and step.
    relaxation : float
        Temperature of the concrete relaxation (``estimator="concrete"`` only).
    train_model : bool
    rng : int, torch.Generator or numpy.random.Generator
        Source of the minibatches and gate draws (default seed 0); the global state is untouched.
    schedule : {"constant", "cosine"}
        Learning rate held at ``lr``, or decayed from ``lr`` to 0 along a half cosine over the steps
        (so the final iterates average out the estimator's noise).
    record : bool
        Record the exact ELBO and log marginal of every minibatch (two enumerations per step);
        ``False`` skips them when only the fitted q is wanted.

    Returns
    -------
    nbsupport.models.TrainResult
        ``history``: one record per step, ``{"step": s, "loss": ...}`` with the minimised objective
        (minus the step's surrogate ELBO, or minus the exact ELBO for ``estimator="exact"``; batch
        mean), and with ``record`` the batch means of the exact ``"elbo"`` and ``"log_marginal"``
        before the update. Not cached (``key`` is ``""``).
    """
    steps, batch_size = training_schedule(len(x), steps, "steps", lr, batch_size)
    if estimator not in (*ESTIMATORS, "exact"):
        raise ValueError(f"estimator must be one of {(*ESTIMATORS, 'exact')}, got {estimator!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    generator = torch_rng(rng, x.device)
    params = list(posterior.parameters()) + (list(model.parameters()) if train_model else [])
    optimiser = torch.optim.Adam(params, lr=lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps) if schedule == "cosine"
                 else None)
    result = TrainResult()
    for step in range(1, steps + 1):
        batch = torch.randperm(len(x), generator=generator, device=generator.device)[:batch_size].to(x.device)
        xb, yb = x[batch], y[batch]
        logits = posterior(xb, yb)
        measured = {}
        if record:
            with torch.no_grad():
                measured = {"elbo": elbo(model, xb, yb, tau, torch.sigmoid(logits)).mean().item(),
                            "log_marginal": log_marginal_likelihood(model, xb, yb, tau).mean().item()}
        if estimator == "exact":
            objective = elbo(model, xb, yb, tau, torch.sigmoid(logits)).mean()
        else:
            objective = elbo_surrogate(model, xb, yb, tau, logits, n_samples, estimator, relaxation,
                                       rng=generator).mean()
        optimiser.zero_grad()
        (-objective).backward()
        optimiser.step()
        if scheduler is not None:
            scheduler.step()
        result.history.append({"step": step, "loss": -objective.item(), **measured})
    return result

r"""What the gates carry: information :math:`I(A; X)`, :math:`I(A; Y)` and the law of X within soft regions.

Re-exported by :mod:`nbsupport.gating`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validate import integer, real, torch_rng
from .core import all_patterns, log_prior, sample_gates, soft_gates

__all__ = [
    "GateInformation", "gate_information", "plugin_entropy", "PatternMoments", "pattern_moments",
    "eigenvector_angles", "gate_information_sampled",
]


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
    real(tau, "tau", low=0)
    _check_z_y(z, y)
    z = z.detach().to(torch.float64)
    patterns = all_patterns(z.shape[1], device=z.device)
    conditional = log_prior(z, patterns, tau).exp()                        # P(a | x): (N, 2**m)
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
    real(tau, "tau", low=0)
    if not (isinstance(x, torch.Tensor) and isinstance(z, torch.Tensor) and x.ndim == 2 and z.ndim == 2
            and len(x) == len(z)):
        raise ValueError(f"x and z must have shapes (N, d) and (N, m), got {tuple(getattr(x, 'shape', ()))} "
                         f"and {tuple(getattr(z, 'shape', ()))}")
    x, z = x.detach().to(torch.float64), z.detach().to(torch.float64)
    if patterns is None:
        patterns = all_patterns(z.shape[1], device=z.device)
    elif not (patterns.ndim == 2 and patterns.shape[1] == z.shape[1] and bool(((patterns == 0) | (patterns == 1)).all())):
        raise ValueError(f"patterns must be 0/1 of shape (P, {z.shape[1]}), got {tuple(patterns.shape)}")
    log_conditional = log_prior(z, patterns.to(torch.float64), tau).T     # log P(a | x_i): (P, N)
    prob = (torch.logsumexp(log_conditional, dim=1) - math.log(len(x))).exp()
    weights = torch.softmax(log_conditional, dim=1)                         # P(x_i | a), finite even if P(a) underflows
    centre = x.mean(0)
    xc = x - centre                                                         # centred: no cancellation for shifted data
    mean_c = weights @ xc
    second = torch.einsum("pn,ni,nj->pij", weights, xc, xc)
    return PatternMoments(prob, mean_c + centre, second - mean_c.unsqueeze(2) * mean_c.unsqueeze(1))


def eigenvector_angles(cov: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    r"""Angles (radians, in [0, pi/2]) between the leading eigenvectors of covariance matrices.

    The leading eigenvector is defined up to sign, so the angle is :math:`\arccos |u^\top v|`,
    computed as :math:`2 \operatorname{atan2}(\lVert u - s v \rVert, \lVert u + s v \rVert)` with
    :math:`s = \operatorname{sign}(u^\top v)` (Kahan's form: precise also near 0 and near
    :math:`\pi/2`, where the arccosine of a rounded cosine is not; the same value as
    :func:`nbsupport.subspaces.basis_angles` of the two vectors, without one SVD per pair). It is
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
    sign = torch.where(top @ other.T >= 0, 1.0, -1.0).to(top.dtype)           # (P, Q)
    rows = max(1, 2**22 // max(1, other.numel()))                              # (rows, Q, d) at a time
    angles = torch.cat([
        2 * torch.atan2((u[:, None] - s[..., None] * other).norm(dim=2),
                        (u[:, None] + s[..., None] * other).norm(dim=2))
        for u, s in zip(top.split(rows), sign.split(rows))])                     # (P, Q)
    return angles if reference is None else angles[:, 0]


def gate_information_sampled(z: torch.Tensor, y: torch.Tensor, tau: float, n_samples: int,
                             estimator: str = "density", generator: torch.Generator | None = None,
                             rng=0) -> GateInformation:
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
        Alias of a generator passed as ``rng``.
    rng : int, torch.Generator or numpy.random.Generator
        Source of the draws (default seed 0); the global random state is never used.

    Returns
    -------
    GateInformation
    """
    real(tau, "tau", low=0)
    _check_z_y(z, y)
    n_samples = integer(n_samples, "n_samples", minimum=2)
    if estimator not in ("density", "plugin"):
        raise ValueError(f"estimator must be 'density' or 'plugin', got {estimator!r}")
    z = z.detach().to(torch.float64)
    on = soft_gates(z, tau)
    gen = torch_rng(rng, z.device, generator=generator)
    rows = torch.randint(len(z), (n_samples,), generator=gen, device=gen.device).to(z.device)
    gates = sample_gates(on[rows], 1, rng=gen)[0]                           # (n, m)
    labels = y[rows]
    h_a_x = _conditional_entropy(on).item()
    if estimator == "plugin":
        codes = gates.bool()
        h_a = plugin_entropy(codes)
        h_a_y = sum((labels == c).double().mean().item() * plugin_entropy(codes[labels == c])
                    for c in torch.unique(labels))
    else:
        log_cond = log_prior(z, gates, tau).T                              # log P(a_s | x_i): (n, N)
        h_a = -(torch.logsumexp(log_cond, dim=1) - math.log(len(z))).mean().item()
        same_class = labels.unsqueeze(1) == y.unsqueeze(0)                  # (n, N)
        log_class = torch.logsumexp(log_cond.masked_fill(~same_class, -torch.inf), dim=1) - same_class.sum(1).log()
        h_a_y = -log_class.mean().item()
    return GateInformation(h_a, h_a_x, h_a_y, h_a - h_a_x, h_a - h_a_y)

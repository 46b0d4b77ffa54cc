"""The law of total covariance over a partition of the data, exactly and without loops.

Given a grouping of the rows of ``values`` (``inverse[i]`` is the group of row ``i``, for instance
from :func:`nbsupport.patterns.group_by_pattern`), the total scatter matrix splits exactly into a
within-group and a between-group part :cite:p:`condcov_note`:

.. math::

    \\sum_i (v_i - \\mu)(v_i - \\mu)^\\top
    = \\sum_k \\sum_{i \\in k} (v_i - \\mu_k)(v_i - \\mu_k)^\\top
    + \\sum_k n_k (\\mu_k - \\mu)(\\mu_k - \\mu)^\\top .

Dividing by :math:`N` gives the population form :math:`\\hat\\Sigma = \\sum_k \\frac{n_k}{N} \\hat\\Sigma_k
+ \\sum_k \\frac{n_k}{N} (\\mu_k - \\mu)(\\mu_k - \\mu)^\\top`; dividing by :math:`N - 1` gives the
sample form :math:`(N-1) S = \\sum_k (n_k - 1) S_k + \\sum_k n_k (\\mu_k - \\mu)(\\mu_k - \\mu)^\\top`.
All computations run in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["group_moments", "decompose_covariance", "decompose_variance", "principal_angles", "GroupMoments",
           "CovarianceSplit"]

#: Elements of the (rows, d, d) outer-product buffer in :func:`group_moments` (256 MB in float64).
_CHUNK_ELEMENTS = 2**25


def _check(values: torch.Tensor, inverse: torch.Tensor, ddof: int) -> tuple[torch.Tensor, int]:
    """Validate; return ``values`` as float64 (N, d) and the number of groups."""
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or not values.dtype.is_floating_point:
        raise ValueError(f"values must be a floating tensor of shape (N, d), got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape {tuple(getattr(values, 'shape', ()))}")
    if not isinstance(inverse, torch.Tensor) or inverse.ndim != 1 or inverse.dtype != torch.long:
        raise ValueError(f"inverse must be a long tensor of shape (N,), got "
                         f"{getattr(inverse, 'dtype', type(inverse).__name__)} of shape {tuple(getattr(inverse, 'shape', ()))}")
    if len(inverse) != len(values):
        raise ValueError(f"inverse has {len(inverse)} entries but values has {len(values)} rows")
    if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    if len(values) <= ddof:
        raise ValueError(f"values needs more than ddof={ddof} rows, got {len(values)}")
    if bool((inverse < 0).any()):
        raise ValueError("inverse must hold group indices >= 0")
    values = values.to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values must be finite (found NaN or inf)")
    return values, int(inverse.max()) + 1


def _group_means(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(inverse, minlength=n_groups)
    sums = torch.zeros(n_groups, values.shape[1], dtype=values.dtype, device=values.device)
    sums.index_add_(0, inverse, values)
    return counts, sums / counts.clamp(min=1).unsqueeze(1).to(values.dtype)


class GroupMoments(NamedTuple):
    """Per-group moments, as :func:`group_moments` returns them.

    Attributes
    ----------
    groups : Tensor, long, shape (K,)
        Indices (into the grouping) of the K groups with at least ``min_count`` rows.
    counts : Tensor, long, shape (K,)
        Rows per kept group, :math:`n_k`.
    weights : Tensor, float64, shape (K,)
        :math:`p(a) = n_k / N`, with N counting all rows.
    means : Tensor, float64, shape (K, d)
    covariances : Tensor, float64, shape (K, d, d)
        Divided by :math:`n_k - \\text{ddof}`.
    n_small : int
        Number of non-empty groups with fewer than ``min_count`` rows (not in the tensors above).
    small_mass : float
        The probability mass those groups hold: their rows divided by N.
    """

    groups: torch.Tensor
    counts: torch.Tensor
    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    n_small: int
    small_mass: float


def group_moments(values: torch.Tensor, inverse: torch.Tensor, min_count: int = 1, ddof: int = 1) -> GroupMoments:
    """Counts, weights, means and covariances of every group with at least ``min_count`` rows.

    Sums are accumulated with ``index_add_`` over chunks of rows (no loop over groups), so memory
    stays at ``K * d * d`` for the result plus a fixed-size buffer.

    Parameters
    ----------
    values : Tensor, shape (N, d)
        Converted to float64.
    inverse : Tensor, long, shape (N,)
        Group of every row.
    min_count : int
        Groups with fewer rows are reported in ``n_small`` / ``small_mass`` instead of estimated.
    ddof : {0, 1}
        Covariances are divided by ``n_k - ddof``; every kept group needs more than ``ddof`` rows.

    Returns
    -------
    GroupMoments
    """
    values, n_groups = _check(values, inverse, ddof)
    if not (isinstance(min_count, int) and not isinstance(min_count, bool) and min_count >= 1):
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    counts, means = _group_means(values, inverse, n_groups)
    kept = counts >= min_count
    too_small = kept & (counts <= ddof)
    if bool(too_small.any()):
        raise ValueError(f"{int(too_small.sum())} group(s) have {ddof} row(s) or fewer, too few for ddof={ddof}; "
                         f"raise min_count to at least {ddof + 1}")
    groups = torch.nonzero(kept).squeeze(1)
    # position of every kept group in the output, -1 for the others
    slot = torch.full((n_groups,), -1, dtype=torch.long, device=values.device)
    slot[groups] = torch.arange(len(groups), device=values.device)
    rows = torch.nonzero(slot[inverse] >= 0).squeeze(1)
    d = values.shape[1]
    scatter = torch.zeros(len(groups), d, d, dtype=torch.float64, device=values.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, d * d))
    for chunk in rows.split(step):
        centred = values[chunk] - means[inverse[chunk]]
        scatter.index_add_(0, slot[inverse[chunk]], centred.unsqueeze(2) * centred.unsqueeze(1))
    n_kept = counts[groups]
    small = (~kept) & (counts > 0)
    return GroupMoments(
        groups=groups,
        counts=n_kept,
        weights=n_kept.to(torch.float64) / len(values),
        means=means[groups],
        covariances=scatter / (n_kept - ddof).to(torch.float64).view(-1, 1, 1),
        n_small=int(small.sum()),
        small_mass=float(counts[small].sum()) / len(values),
    )


class CovarianceSplit(NamedTuple):
    """``total == within + between`` up to rounding; see :func:`decompose_covariance`."""

    total: torch.Tensor
    within: torch.Tensor
    between: torch.Tensor


def decompose_covariance(values: torch.Tensor, inverse: torch.Tensor, ddof: int = 0) -> CovarianceSplit:
    """Split the covariance of ``values`` into within-group and between-group parts.

    With ``ddof=0``: ``total`` is :math:`\\hat\\Sigma` (divided by N), ``within`` is
    :math:`\\sum_k \\frac{n_k}{N} \\hat\\Sigma_k` and ``between`` is
    :math:`\\sum_k \\frac{n_k}{N}(\\mu_k-\\mu)(\\mu_k-\\mu)^\\top`. With ``ddof=1`` the three scatter
    matrices are divided by :math:`N - 1` instead, which is the identity
    :math:`(N-1)S = \\sum_k (n_k-1) S_k + \\sum_k n_k (\\mu_k-\\mu)(\\mu_k-\\mu)^\\top`. Every group,
    however small, takes part, so the identity is exact.

    Parameters
    ----------
    values : Tensor, shape (N, d)
        Converted to float64.
    inverse : Tensor, long, shape (N,)
        Group of every row.
    ddof : {0, 1}

    Returns
    -------
    CovarianceSplit
        ``(total, within, between)``, each float64 of shape (d, d).
    """
    values, n_groups = _check(values, inverse, ddof)
    counts, means = _group_means(values, inverse, n_groups)
    norm = len(values) - ddof
    centred_within = values - means[inverse]
    offsets = (means - values.mean(dim=0)) * counts.to(torch.float64).sqrt().unsqueeze(1)
    within = centred_within.T @ centred_within / norm
    between = offsets.T @ offsets / norm
    centred = values - values.mean(dim=0)
    return CovarianceSplit(centred.T @ centred / norm, within, between)


def decompose_variance(values: torch.Tensor, inverse: torch.Tensor, ddof: int = 0) -> CovarianceSplit:
    r"""The traces of :func:`decompose_covariance`, without forming any (d, d) matrix.

    For values too wide for a covariance matrix (per-sample gradients of a real network): total
    variance :math:`\tr \hat\Sigma` = expected within-group variance + variance of the group means.

    Parameters
    ----------
    values : Tensor, shape (N, d)
    inverse : Tensor, long, shape (N,)
    ddof : {0, 1}

    Returns
    -------
    CovarianceSplit
        ``(total, within, between)`` as float64 scalars (0-d tensors).
    """
    values, n_groups = _check(values, inverse, ddof)
    counts, means = _group_means(values, inverse, n_groups)
    norm = len(values) - ddof
    within = (values - means[inverse]).pow(2).sum() / norm
    between = (counts.to(torch.float64) * (means - values.mean(dim=0)).pow(2).sum(1)).sum() / norm
    return CovarianceSplit((values - values.mean(dim=0)).pow(2).sum() / norm, within, between)


def principal_angles(cov_a: torch.Tensor, cov_b: torch.Tensor, k: int) -> torch.Tensor:
    r"""Principal angles between the top-``k`` eigenspaces of two covariance matrices.

    Parameters
    ----------
    cov_a, cov_b : Tensor, shape (d, d)
        Symmetric matrices (converted to float64).
    k : int
        Dimension of the compared eigenspaces, ``1 <= k <= d``.

    Returns
    -------
    Tensor, float64, shape (k,)
        Angles in radians, ascending: 0 where the subspaces share a direction, :math:`\pi/2`
        where a direction of one is orthogonal to the other (``scipy.linalg.subspace_angles``).
    """
    from scipy.linalg import subspace_angles

    if not (isinstance(cov_a, torch.Tensor) and isinstance(cov_b, torch.Tensor) and cov_a.ndim == 2
            and cov_a.shape[0] == cov_a.shape[1] and cov_a.shape == cov_b.shape):
        raise ValueError(f"cov_a and cov_b must be square tensors of the same shape, got "
                         f"{tuple(getattr(cov_a, 'shape', ()))} and {tuple(getattr(cov_b, 'shape', ()))}")
    if not all(torch.allclose(c, c.T, rtol=1e-10, atol=1e-12) for c in (cov_a, cov_b)):
        raise ValueError("cov_a and cov_b must be symmetric")
    if not (isinstance(k, int) and 1 <= k <= cov_a.shape[0]):
        raise ValueError(f"k must be an int in [1, {cov_a.shape[0]}], got {k!r}")
    tops = [torch.linalg.eigh(c.to(torch.float64))[1][:, -k:].cpu().numpy() for c in (cov_a, cov_b)]
    return torch.from_numpy(subspace_angles(*tops)[::-1].copy())

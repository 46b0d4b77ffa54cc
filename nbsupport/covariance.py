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
All computations run in float64; results come back on the input's device, in its floating dtype.

A between-region share only means something beside its chance level and other nulls: those live
in :mod:`nbsupport.nulls`; the spectra and top eigenspaces of the parts, in :mod:`nbsupport.subspaces`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._validate import integer
from ._validate import labels as check_labels, rows as check_rows

__all__ = ["group_moments", "decompose_covariance", "decompose_variance", "decompose_gram_variance", "centred_gram",
           "GroupMoments", "CovarianceSplit"]

#: Elements of the (rows, d, d) outer-product buffer in :func:`group_moments` (256 MB in float64).
_CHUNK_ELEMENTS = 2**25


def _check(values: torch.Tensor, inverse: torch.Tensor, ddof: int) -> tuple[torch.Tensor, int, torch.dtype, int]:
    """Validate; return ``values`` as float64 (N, d), the number of groups, the dtype of the results and
    ``ddof`` as a Python int (NumPy and 0-d tensor integers accepted, booleans refused)."""
    dtype = getattr(values, "dtype", None)
    values = check_rows(values)
    check_labels(inverse, len(values), "inverse", device=values.device)
    if inverse.dtype != torch.long:  # group_by_pattern's (and torch.unique's) contract
        raise ValueError(f"inverse must be a long tensor, got {inverse.dtype}")
    ddof = integer(ddof, "ddof")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    if len(values) <= ddof:
        raise ValueError(f"values needs more than ddof={ddof} rows, got {len(values)}")
    return values, int(inverse.max()) + 1, dtype, ddof


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
    weights : Tensor, shape (K,)
        :math:`p(a) = n_k / N`, with N counting all rows.
    means : Tensor, shape (K, d)
    covariances : Tensor, shape (K, d, d)
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
    stays at ``K * d * d`` for the result plus a fixed-size buffer. Computed in float64; the floating
    results are returned in the dtype of ``values``, on its device.

    Parameters
    ----------
    values : Tensor, shape (N, d)
        Any floating dtype (computed in float64).
    inverse : Tensor, long, shape (N,)
        Group of every row, on the device of ``values``.
    min_count : int
        Groups with fewer rows are reported in ``n_small`` / ``small_mass`` instead of estimated.
    ddof : {0, 1}
        Covariances are divided by ``n_k - ddof``; every kept group needs more than ``ddof`` rows.

    Returns
    -------
    GroupMoments
    """
    values, n_groups, dtype, ddof = _check(values, inverse, ddof)
    min_count = integer(min_count, "min_count", minimum=1)
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
        weights=(n_kept.to(torch.float64) / len(values)).to(dtype),
        means=means[groups].to(dtype),
        covariances=(scatter / (n_kept - ddof).to(torch.float64).view(-1, 1, 1)).to(dtype),
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
        Any floating dtype (computed in float64).
    inverse : Tensor, long, shape (N,)
        Group of every row, on the device of ``values``.
    ddof : {0, 1}

    Returns
    -------
    CovarianceSplit
        ``(total, within, between)``, each of shape (d, d), in the dtype and on the device of ``values``.
    """
    values, n_groups, dtype, ddof = _check(values, inverse, ddof)
    counts, means = _group_means(values, inverse, n_groups)
    norm = len(values) - ddof
    centred_within = values - means[inverse]
    offsets = (means - values.mean(dim=0)) * counts.to(torch.float64).sqrt().unsqueeze(1)
    within = centred_within.T @ centred_within / norm
    between = offsets.T @ offsets / norm
    centred = values - values.mean(dim=0)
    return CovarianceSplit((centred.T @ centred / norm).to(dtype), within.to(dtype), between.to(dtype))


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
        ``(total, within, between)`` as 0-d tensors (computed in float64), in the dtype and on the
        device of ``values``.
    """
    values, n_groups, dtype, ddof = _check(values, inverse, ddof)
    counts, means = _group_means(values, inverse, n_groups)
    norm = len(values) - ddof
    within = (values - means[inverse]).pow(2).sum() / norm
    between = (counts.to(torch.float64) * (means - values.mean(dim=0)).pow(2).sum(1)).sum() / norm
    total = (values - values.mean(dim=0)).pow(2).sum() / norm
    return CovarianceSplit(total.to(dtype), within.to(dtype), between.to(dtype))


def centred_gram(gram: torch.Tensor) -> torch.Tensor:
    r"""The centred Gram matrix :math:`K_c = H K H`, :math:`H = I - \mathbf{1}\mathbf{1}^\top / N`.

    If :math:`K = V V^\top` then :math:`K_c = V_c V_c^\top` with :math:`V_c` the column-centred rows;
    formed from row, column and grand means in :math:`O(N^2)` (no matrix product). The one
    implementation behind the Gram-matrix variance splits and nulls of the package.

    Parameters
    ----------
    gram : Tensor, shape (..., N, N)
        Square in the last two axes; leading axes are a batch.

    Returns
    -------
    Tensor, shape (..., N, N)
        In the dtype and on the device of ``gram``.
    """
    if not (isinstance(gram, torch.Tensor) and gram.ndim >= 2 and gram.shape[-1] == gram.shape[-2]
            and gram.dtype.is_floating_point):
        raise ValueError(f"gram must be a floating tensor of shape (..., N, N), got "
                         f"{getattr(gram, 'dtype', type(gram).__name__)} of shape {tuple(getattr(gram, 'shape', ()))}")
    row = gram.mean(-1, keepdim=True)
    column = gram.mean(-2, keepdim=True)
    return gram - row - column + gram.mean((-2, -1), keepdim=True)


def decompose_gram_variance(gram: torch.Tensor, inverse: torch.Tensor, ddof: int = 0) -> CovarianceSplit:
    r""":func:`decompose_variance` for rows known only through their Gram matrix :math:`K = V V^\top`.

    With :math:`K_c = H K H` the centred Gram matrix, the total trace is :math:`\tr K_c`, the
    between trace :math:`\sum_k \frac{1}{n_k} \sum_{i, j \in k} (K_c)_{ij}` and the within trace
    their difference: :math:`O(N^2)` work and no eigenvalues (for spectra see
    :func:`nbsupport.pergrad.gram_decomposition`). Per-sample gradients of a wide network
    (:func:`nbsupport.pergrad.gradient_gram`) are the use case.

    Parameters
    ----------
    gram : Tensor, shape (N, N)
        Symmetric (computed in float64).
    inverse : Tensor, long, shape (N,)
        Group of every row, on the device of ``gram``.
    ddof : {0, 1}

    Returns
    -------
    CovarianceSplit
        ``(total, within, between)`` as 0-d tensors, divided by ``N - ddof``, in the dtype and on the
        device of ``gram``.
    """
    if not (isinstance(gram, torch.Tensor) and gram.ndim == 2 and gram.shape[0] == gram.shape[1]
            and gram.dtype.is_floating_point):
        raise ValueError(f"gram must be a square floating (N, N) tensor, got shape {tuple(getattr(gram, 'shape', ()))}")
    k, n_groups, dtype, ddof = _check(gram, inverse, ddof)
    counts = torch.bincount(inverse, minlength=n_groups).to(torch.float64)
    centred = centred_gram(k)
    rows = torch.zeros(n_groups, len(k), dtype=torch.float64, device=k.device).index_add_(0, inverse, centred)
    columns = torch.arange(len(k), device=k.device)
    norm = len(k) - ddof
    total = torch.trace(centred) / norm
    between = (rows[inverse, columns] / counts[inverse]).sum() / norm
    return CovarianceSplit(total.to(dtype), (total - between).to(dtype), between.to(dtype))

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
in :mod:`nbsupport.nulls`. Principal angles between a group's top eigenspace and the global one have a sampling-noise floor of
their own: that of a random subset of the same size (:func:`random_subset_angles`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._validate import integer, torch_rng

__all__ = ["group_moments", "decompose_covariance", "decompose_variance", "principal_angles", "GroupMoments",
           "CovarianceSplit", "random_subset_angles", "group_angles", "decompose_gram_variance",
           "spectral_gaps", "trace_carriers", "random_subset_largest_angles"]

#: Elements of the (rows, d, d) outer-product buffer in :func:`group_moments` (256 MB in float64).
_CHUNK_ELEMENTS = 2**25


def _check(values: torch.Tensor, inverse: torch.Tensor, ddof: int) -> tuple[torch.Tensor, int, torch.dtype, int]:
    """Validate; return ``values`` as float64 (N, d), the number of groups, the dtype of the results and
    ``ddof`` as a Python int (NumPy and 0-d tensor integers accepted, booleans refused)."""
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or not values.dtype.is_floating_point:
        raise ValueError(f"values must be a floating tensor of shape (N, d), got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape {tuple(getattr(values, 'shape', ()))}")
    if not isinstance(inverse, torch.Tensor) or inverse.ndim != 1 or inverse.dtype != torch.long:
        raise ValueError(f"inverse must be a long tensor of shape (N,), got "
                         f"{getattr(inverse, 'dtype', type(inverse).__name__)} of shape {tuple(getattr(inverse, 'shape', ()))}")
    if len(inverse) != len(values):
        raise ValueError(f"inverse has {len(inverse)} entries but values has {len(values)} rows")
    if inverse.device != values.device:
        raise ValueError(f"inverse is on {inverse.device} but values on {values.device}")
    ddof = integer(ddof, "ddof")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    if len(values) <= ddof:
        raise ValueError(f"values needs more than ddof={ddof} rows, got {len(values)}")
    if bool((inverse < 0).any()):
        raise ValueError("inverse must hold group indices >= 0")
    dtype = values.dtype
    values = values.to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values must be finite (found NaN or inf)")
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
    row_mean = k.mean(1)
    centred = k - row_mean[:, None] - row_mean[None, :] + k.mean()
    rows = torch.zeros(n_groups, len(k), dtype=torch.float64, device=k.device).index_add_(0, inverse, centred)
    columns = torch.arange(len(k), device=k.device)
    norm = len(k) - ddof
    total = torch.trace(centred) / norm
    between = (rows[inverse, columns] / counts[inverse]).sum() / norm
    return CovarianceSplit(total.to(dtype), (total - between).to(dtype), between.to(dtype))


#: Up to this size the top eigenspace comes from a dense ``eigh``; above it from subspace iteration.
DENSE_SUBSPACE_MAX = 256

#: :func:`random_subset_largest_angles` forms the (N, N) Gram matrix of all rows up to this N.
_GRAM_ROWS_MAX = 8192


def _top_of_psd(matrix: torch.Tensor, k: int, tol: float = 1e-11, max_iter: int = 2000) -> torch.Tensor:
    """Orthonormal (s, k) basis of the top-``k`` eigenspace of a symmetric PSD (s, s) float64 matrix.

    Dense ``eigh`` up to :data:`DENSE_SUBSPACE_MAX`; above it block subspace iteration (block
    ``2k + 10``, seeded start, Rayleigh-Ritz every 5 steps) until the top-``k`` Ritz subspace moves by
    less than ``tol`` radians, with the dense ``eigh`` as fallback if it does not converge.
    """
    s = matrix.shape[0]
    block = 2 * k + 10
    if s <= DENSE_SUBSPACE_MAX or block >= s:
        return torch.linalg.eigh(matrix)[1][:, -k:]
    start = torch.randn(s, block, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = torch.linalg.qr(start.to(matrix.device))[0]
    previous = None
    for step in range(max_iter):
        q = torch.linalg.qr(matrix @ q)[0]
        if step % 5 == 4:
            ritz = torch.linalg.eigh(q.T @ matrix @ q)[1]
            top = q @ ritz[:, -k:]
            if previous is not None and float(_angles(top, previous).max()) < tol:
                return top
            previous = top
    return torch.linalg.eigh(matrix)[1][:, -k:]


def _top_subspace(centred: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal (d, k) basis of the top-``k`` eigenspace of ``centred.T @ centred`` (float64).

    Works on the smaller of the (d, d) scatter and the (n, n) Gram matrix of the rows.
    """
    n, d = centred.shape
    if n >= d:
        return _top_of_psd(centred.T @ centred, k)
    basis = centred.T @ _top_of_psd(centred @ centred.T, k)     # X^T u = sqrt(lambda) v
    return basis / torch.linalg.vector_norm(basis, dim=0, keepdim=True)


def _angles(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Principal angles between the spans of two orthonormal (d, k) bases, ascending (as scipy's
    ``subspace_angles``: arccos of the singular values of ``A^T B``, arcsin of those of
    ``B - A A^T B`` for angles below 45 degrees, where the cosine loses precision)."""
    cross = basis_a.transpose(-2, -1) @ basis_b
    cosines = torch.linalg.svdvals(cross)                                   # descending: angles ascending
    sines = torch.linalg.svdvals(basis_b - basis_a @ cross).flip(-1)        # ascending, same order
    return torch.where(cosines.pow(2) >= 0.5, torch.arcsin(sines.clamp(-1, 1)), torch.arccos(cosines.clamp(-1, 1)))


def _check_k(k, d: int) -> int:
    number = integer(k, "k", minimum=1)
    if number > d:
        raise ValueError(f"k must be an integer in [1, {d}], got {k!r}")
    return number


def principal_angles(cov_a: torch.Tensor, cov_b: torch.Tensor, k: int) -> torch.Tensor:
    r"""Principal angles between the top-``k`` eigenspaces of two covariance matrices.

    Parameters
    ----------
    cov_a, cov_b : Tensor, shape (d, d)
        Symmetric matrices, on one device (computed in float64).
    k : int
        Dimension of the compared eigenspaces, ``1 <= k <= d``.

    Returns
    -------
    Tensor, shape (k,)
        Angles in radians, ascending: 0 where the subspaces share a direction, :math:`\pi/2`
        where a direction of one is orthogonal to the other (as ``scipy.linalg.subspace_angles``,
        computed in torch); in the dtype and on the device of ``cov_a``.
    """
    if not (isinstance(cov_a, torch.Tensor) and isinstance(cov_b, torch.Tensor) and cov_a.ndim == 2
            and cov_a.shape[0] == cov_a.shape[1] and cov_a.shape == cov_b.shape):
        raise ValueError(f"cov_a and cov_b must be square tensors of the same shape, got "
                         f"{tuple(getattr(cov_a, 'shape', ()))} and {tuple(getattr(cov_b, 'shape', ()))}")
    if cov_a.device != cov_b.device or not (cov_a.dtype.is_floating_point and cov_b.dtype.is_floating_point):
        raise ValueError(f"cov_a and cov_b must be floating tensors on one device, got {cov_a.dtype} on "
                         f"{cov_a.device} and {cov_b.dtype} on {cov_b.device}")
    if not all(torch.allclose(c, c.T, rtol=1e-10, atol=1e-12) for c in (cov_a, cov_b)):
        raise ValueError("cov_a and cov_b must be symmetric")
    k = _check_k(k, cov_a.shape[0])
    tops = [torch.linalg.eigh(c.to(torch.float64))[1][:, -k:] for c in (cov_a, cov_b)]
    return _angles(*tops).to(cov_a.dtype)


def _reference_subspace(x: torch.Tensor, k: int, reference: torch.Tensor | None) -> torch.Tensor:
    d = x.shape[1]
    if reference is None:
        return _top_subspace(x - x.mean(0), k)
    if not (isinstance(reference, torch.Tensor) and reference.shape == (d, d) and reference.dtype.is_floating_point):
        raise ValueError(f"reference must be a floating ({d}, {d}) tensor, got shape {tuple(getattr(reference, 'shape', ()))}")
    if reference.device != x.device:
        raise ValueError(f"reference is on {reference.device} but values on {x.device}")
    if not torch.allclose(reference, reference.T, rtol=1e-10, atol=1e-12):
        raise ValueError("reference must be symmetric")
    return torch.linalg.eigh(reference.to(torch.float64))[1][:, -k:]


def random_subset_angles(values: torch.Tensor, size: int, k: int, n_draws: int = 100, rng=0,
                         reference: torch.Tensor | None = None) -> torch.Tensor:
    r"""Sampling-noise floor of principal angles: random subsets against the whole.

    ``n_draws`` times, draw ``size`` rows of ``values`` uniformly without replacement and compute the
    principal angles between the top-``k`` eigenspace of their sample covariance and that of
    ``reference`` (by default the covariance of all rows). A group of ``size`` rows whose angles
    are no larger than these is indistinguishable, on this measure, from a random subset.

    Parameters
    ----------
    values : Tensor, shape (N, d)
        Any floating dtype (computed in float64).
    size : int
        Rows per subset, ``k < size <= N``.
    k : int
        Dimension of the compared eigenspaces, ``1 <= k <= d``.
    n_draws : int
    rng : int or Generator
        An int seeds a fresh ``torch.Generator``; a generator is used (and advanced) as given.
    reference : Tensor, shape (d, d), optional
        Symmetric matrix whose top-``k`` eigenspace is the reference.

    Returns
    -------
    Tensor, shape (n_draws, k)
        Angles in radians, ascending in each row, in the dtype and on the device of ``values``.
    """
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or not values.dtype.is_floating_point:
        raise ValueError(f"values must be a floating tensor of shape (N, d), got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape {tuple(getattr(values, 'shape', ()))}")
    n, d = values.shape
    k = _check_k(k, d)
    size, n_draws = integer(size, "size"), integer(n_draws, "n_draws", minimum=1)
    if not k < size <= n:
        raise ValueError(f"size must be an integer in ({k}, {n}], got {size!r}")
    x = values.to(torch.float64)
    top_ref = _reference_subspace(x, k, reference)
    generator = torch_rng(rng)
    out = []
    for _ in range(n_draws):
        rows = torch.randperm(n, generator=generator, device=generator.device)[:size].to(x.device)
        subset = x[rows]
        out.append(_angles(_top_subspace(subset - subset.mean(0), k), top_ref))
    return torch.stack(out).to(values.dtype)


def random_subset_largest_angles(values: torch.Tensor, size: int, ks, n_draws: int = 100, rng=0
                                 ) -> torch.Tensor:
    r"""The largest principal angle of random subsets, at several subspace dimensions at once.

    As :func:`random_subset_angles` (the same subsets for the same ``rng``), but each subset's
    top eigenspace is computed once, at ``max(ks)``, and its leading ``k`` directions compared
    with the global top-``k`` subspace for every ``k`` in ``ks``: the noise floor of a group's
    largest angle at each ``k`` for the price of one.

    Parameters
    ----------
    values : Tensor, shape (N, d)
    size : int
        Rows per subset, ``max(ks) < size <= N``.
    ks : sequence of int
        Subspace dimensions, each in ``[1, d]``.
    n_draws : int
    rng : int or Generator

    Returns
    -------
    Tensor, shape (n_draws, len(ks))
        Largest angles in radians, in the dtype and on the device of ``values``.
    """
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or not values.dtype.is_floating_point:
        raise ValueError(f"values must be a floating tensor of shape (N, d), got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape {tuple(getattr(values, 'shape', ()))}")
    n, d = values.shape
    try:
        ks = [_check_k(k, d) for k in ks]
    except TypeError:
        raise ValueError(f"ks must be a sequence of integers in [1, {d}], got {ks!r}") from None
    if not ks:
        raise ValueError("ks must name at least one dimension")
    size, n_draws = integer(size, "size"), integer(n_draws, "n_draws", minimum=1)
    k_max = max(ks)
    if not k_max < size <= n:
        raise ValueError(f"size must be an integer in ({k_max}, {n}], got {size!r}")
    x = values.to(torch.float64)
    reference = _reference_subspace(x, k_max, None)       # ascending: the top k are the last k
    generator = torch_rng(rng)
    out = torch.empty(n_draws, len(ks), dtype=torch.float64, device=x.device)
    # subsets narrower than d are decomposed through their Gram matrix, a block of one
    # (N, N) Gram matrix of all rows formed once (when that is small enough)
    centred_all = x - x.mean(0)
    gram = centred_all @ centred_all.T if size < d and n <= _GRAM_ROWS_MAX else None
    for t in range(n_draws):
        rows = torch.randperm(n, generator=generator, device=generator.device)[:size].to(x.device)
        if gram is None:
            subset = x[rows]
            top = _top_subspace(subset - subset.mean(0), k_max)
        else:
            block = gram[rows[:, None], rows[None, :]]
            row_mean = block.mean(1)
            centred = block - row_mean[:, None] - row_mean[None, :] + block.mean()
            # eigenvectors of the doubly centred Gram matrix are orthogonal to the ones
            # vector, so X_c^T u needs no subset mean
            top = centred_all[rows].T @ _top_of_psd(centred, k_max)
            top = top / torch.linalg.vector_norm(top, dim=0, keepdim=True)
        for j, k in enumerate(ks):
            out[t, j] = _angles(top[:, -k:], reference[:, -k:]).max()
    return out.to(values.dtype)


def spectral_gaps(values: torch.Tensor, k_max: int = 10) -> torch.Tensor:
    r"""Ratios :math:`\lambda_{k+1} / \lambda_k` of the covariance eigenvalues, for k = 1..k_max.

    A top-``k`` eigenspace is well defined by a sample only where this ratio is small: where it
    is close to 1, a subsample swaps directions in and out of the top ``k`` and principal angles
    against it are large for any subset. Choose ``k`` at the smallest ratio.

    Parameters
    ----------
    values : Tensor, shape (N, d)
    k_max : int
        ``1 <= k_max < d``.

    Returns
    -------
    Tensor, float64, shape (k_max,)
        Entry ``k - 1`` is :math:`\lambda_{k+1} / \lambda_k` (descending eigenvalues of the
        covariance of the rows), on the device of ``values``.
    """
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or not values.dtype.is_floating_point:
        raise ValueError(f"values must be a floating tensor of shape (N, d), got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape {tuple(getattr(values, 'shape', ()))}")
    k_max = integer(k_max, "k_max", minimum=1)
    if k_max >= min(values.shape):
        raise ValueError(f"k_max must be an integer in [1, {min(values.shape) - 1}], got {k_max!r}")
    x = values.to(torch.float64)
    x = x - x.mean(0)
    small = x @ x.T if len(x) < x.shape[1] else x.T @ x
    eig = torch.linalg.eigvalsh(small).flip(0)[:k_max + 1]
    if bool((eig[:k_max] <= 0).any()):
        raise ValueError(f"the covariance has fewer than k_max={k_max} positive eigenvalues")
    return eig[1:] / eig[:-1]


def trace_carriers(gram: torch.Tensor) -> torch.Tensor:
    r"""Each row's share of :math:`\tr \Cov`: :math:`\|v_i - \bar v\|^2 / \sum_j \|v_j - \bar v\|^2`.

    From the Gram matrix :math:`K = V V^\top` (the diagonal of the centred Gram matrix). The
    effective number of rows carrying the trace is :math:`1 / \sum_i w_i^2` for these shares
    :math:`w_i` (Kish's effective sample size): a between share, and any permutation null of it,
    rests on about that many rows.

    Parameters
    ----------
    gram : Tensor, shape (N, N)

    Returns
    -------
    Tensor, float64, shape (N,)
        Non-negative, adding up to 1, on the device of ``gram``.
    """
    if not (isinstance(gram, torch.Tensor) and gram.ndim == 2 and gram.shape[0] == gram.shape[1]
            and gram.dtype.is_floating_point):
        raise ValueError(f"gram must be a square floating (N, N) tensor, got shape {tuple(getattr(gram, 'shape', ()))}")
    k = gram.to(torch.float64)
    row_mean = k.mean(1)
    diag = torch.diagonal(k) - 2 * row_mean + k.mean()
    total = diag.sum()
    if not bool(torch.isfinite(total)) or float(total) <= 0:
        raise ValueError("gram must be finite with a positive centred trace")
    return diag.clamp(min=0) / diag.clamp(min=0).sum()


def group_angles(values: torch.Tensor, inverse: torch.Tensor, groups: torch.Tensor, k: int,
                 reference: torch.Tensor | None = None) -> torch.Tensor:
    r"""Principal angles between each chosen group's top eigenspace and the global one.

    For group ``g``, the top-``k`` eigenspace of the sample covariance of its rows is compared with
    that of ``reference`` (by default the covariance of all rows), exactly as
    :func:`random_subset_angles` does for random subsets, so the two are directly comparable.

    Parameters
    ----------
    values : Tensor, shape (N, d)
        Any floating dtype (computed in float64).
    inverse : Tensor, long, shape (N,)
        Group of every row.
    groups : Tensor, long, shape (K,)
        Group indices to evaluate, each with more than ``k`` rows.
    k : int
        Dimension of the compared eigenspaces.
    reference : Tensor, shape (d, d), optional

    Returns
    -------
    Tensor, shape (K, k)
        Angles in radians, ascending in each row, in the dtype and on the device of ``values``.
    """
    x, _, dtype, _ = _check(values, inverse, 0)
    k = _check_k(k, x.shape[1])
    if not (isinstance(groups, torch.Tensor) and groups.dtype == torch.long and groups.ndim == 1 and len(groups) > 0):
        raise ValueError(f"groups must be a non-empty 1-D long tensor, got {getattr(groups, 'dtype', type(groups).__name__)}")
    sizes = torch.bincount(inverse, minlength=int(max(int(inverse.max()), int(groups.max()))) + 1)[groups]
    if bool((sizes <= k).any()):
        raise ValueError(f"every group needs more than k={k} rows, sizes {sizes.tolist()}")
    top_ref = _reference_subspace(x, k, reference)
    out = []
    for g in groups.tolist():
        rows = x[inverse == g]
        out.append(_angles(_top_subspace(rows - rows.mean(0), k), top_ref))
    return torch.stack(out).to(dtype)

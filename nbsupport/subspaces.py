"""Spectra and top eigenspaces of covariance matrices, and their sampling-noise floors.

Does a group of rows (the inputs or gradients sharing an activation pattern) spread in other
directions than the data as a whole? :func:`principal_angles` compares the top-``k`` eigenspaces of
two covariances, :func:`group_angles` each group's with the global one, and
:func:`random_subset_angles` gives the floor: the same angles for random subsets of the same size,
which differ from the whole only by sampling noise. The angles are only meaningful where the
spectrum has a gap after ``k`` (:func:`spectral_gaps`); :func:`trace_carriers` says how many rows
carry a covariance's trace. Everything is computed in float64 and returned in the input's dtype.
"""

from __future__ import annotations

import torch

from ._validate import integer, torch_rng
from ._validate import labels as check_labels, rows as check_rows
from .covariance import centred_gram

__all__ = ["basis_angles", "principal_angles", "random_subset_angles", "random_subset_largest_angles",
           "group_angles", "spectral_gaps", "trace_carriers", "top_eigh", "top_eigenvalues", "DENSE_SUBSPACE_MAX"]

#: Up to this size the top eigenspace comes from a dense ``eigh``; above it from subspace iteration.
DENSE_SUBSPACE_MAX = 256

#: :func:`random_subset_largest_angles` forms the (N, N) Gram matrix of all rows up to this N.
_GRAM_ROWS_MAX = 8192


def _top_pairs(matrix: torch.Tensor, k: int, values_only: bool, tol: float = 1e-11,
               max_iter: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of a symmetric PSD (s, s) float64 matrix, *ascending*: values (k,) and
    orthonormal vectors (s, k), the package's one top-eigenpair routine.

    Dense ``eigh`` up to :data:`DENSE_SUBSPACE_MAX` (or when the block ``2k + 10`` reaches s); above
    it block subspace iteration from a seeded start, Rayleigh-Ritz every 5 steps, until the top-k
    Ritz vectors move by less than ``tol`` radians (only those whose value exceeds 1e-12 of the
    largest: directions of a null space are arbitrary and never settle), or, with
    ``values_only``, until the top-k Ritz values move by less than 1e-14 of the largest; the dense
    ``eigh`` is the fallback if that does not happen within ``max_iter`` steps.
    """
    s = matrix.shape[0]
    block = 2 * k + 10
    if s <= DENSE_SUBSPACE_MAX or block >= s:
        values, vectors = torch.linalg.eigh(matrix)
        return values[-k:], vectors[:, -k:]
    start = torch.randn(s, block, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = torch.linalg.qr(start.to(matrix.device))[0]
    previous = None
    for step in range(max_iter):
        q = torch.linalg.qr(matrix @ q)[0]
        if step % 5 == 4:
            values, ritz = torch.linalg.eigh(q.T @ matrix @ q)
            values, top = values[-k:], q @ ritz[:, -k:]
            if previous is not None:
                scale = float(values[-1].clamp(min=torch.finfo(torch.float64).tiny))
                if values_only:
                    done = float((values - previous[0]).abs().max()) <= 1e-14 * scale
                else:
                    live = values > 1e-12 * scale
                    done = not bool(live.any()) or float(basis_angles(top[:, live], previous[1][:, live]).max()) < tol
                if done:
                    return values, top
            previous = (values, top)
    values, vectors = torch.linalg.eigh(matrix)
    return values[-k:], vectors[:, -k:]


def _check_psd_k(matrix, k) -> tuple[torch.Tensor, int]:
    if not (isinstance(matrix, torch.Tensor) and matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]
            and matrix.dtype.is_floating_point):
        raise ValueError(f"matrix must be a square floating tensor, got shape {tuple(getattr(matrix, 'shape', ()))}")
    return matrix.to(torch.float64), integer(k, "k", minimum=1)


def top_eigh(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``min(k, n)`` largest eigenvalues of a symmetric positive semi-definite (n, n) matrix and
    their eigenvectors, descending.

    Dense ``eigh`` up to :data:`DENSE_SUBSPACE_MAX`; above it block subspace iteration (seeded, so
    deterministic) until the top eigenvectors settle to 1e-11 radians.

    Returns
    -------
    values : Tensor, float64, shape (k,)
    vectors : Tensor, float64, shape (n, k)
        Orthonormal columns, column ``j`` for ``values[j]``.
    """
    matrix, k = _check_psd_k(matrix, k)
    values, vectors = _top_pairs(matrix, min(k, matrix.shape[0]), values_only=False)
    return values.flip(0), vectors.flip(1)


def top_eigenvalues(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """The ``min(k, n)`` largest eigenvalues of a symmetric positive semi-definite (n, n) matrix,
    descending, float64: :func:`top_eigh` without the vectors (the iteration stops when the values
    settle to 1e-14 of the largest, before the vectors do)."""
    matrix, k = _check_psd_k(matrix, k)
    return _top_pairs(matrix, min(k, matrix.shape[0]), values_only=True)[0].flip(0)


def _top_of_psd(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal (s, k) basis of the top-``k`` eigenspace, columns ascending (the top k are the last)."""
    return _top_pairs(matrix, k, values_only=False)[1]


def _top_subspace(centred: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal (d, k) basis of the top-``k`` eigenspace of ``centred.T @ centred`` (float64).

    Works on the smaller of the (d, d) scatter and the (n, n) Gram matrix of the rows.
    """
    n, d = centred.shape
    if n >= d:
        return _top_of_psd(centred.T @ centred, k)
    basis = centred.T @ _top_of_psd(centred @ centred.T, k)     # X^T u = sqrt(lambda) v
    return basis / torch.linalg.vector_norm(basis, dim=0, keepdim=True)


def basis_angles(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Principal angles between the spans of orthonormal bases, ascending (as scipy's
    ``subspace_angles``: arccos of the singular values of ``A^T B``, arcsin of those of
    ``B - A A^T B`` for angles below 45 degrees, where the cosine loses precision).

    Parameters
    ----------
    basis_a, basis_b : Tensor, shape (..., d, k)
        Orthonormal columns; leading dimensions broadcast.

    Returns
    -------
    Tensor, shape (..., k)
        Angles in radians.
    """
    if not (isinstance(basis_a, torch.Tensor) and isinstance(basis_b, torch.Tensor) and basis_a.ndim >= 2
            and basis_b.ndim >= 2 and basis_a.shape[-2] == basis_b.shape[-2]
            and basis_a.dtype.is_floating_point and basis_b.dtype.is_floating_point):
        raise ValueError(f"basis_a and basis_b must be floating tensors of shape (..., d, k) with the same d, got "
                         f"{tuple(getattr(basis_a, 'shape', ()))} and {tuple(getattr(basis_b, 'shape', ()))}")
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
    return basis_angles(*tops).to(cov_a.dtype)


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
        out.append(basis_angles(_top_subspace(subset - subset.mean(0), k), top_ref))
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
            centred = centred_gram(gram[rows[:, None], rows[None, :]])
            # eigenvectors of the doubly centred Gram matrix are orthogonal to the ones
            # vector, so X_c^T u needs no subset mean
            top = centred_all[rows].T @ _top_of_psd(centred, k_max)
            top = top / torch.linalg.vector_norm(top, dim=0, keepdim=True)
        for j, k in enumerate(ks):
            out[t, j] = basis_angles(top[:, -k:], reference[:, -k:]).max()
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
                 reference: torch.Tensor | None = None,
                 reference_basis: torch.Tensor | None = None) -> torch.Tensor:
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
    reference_basis : Tensor, shape (d, k), optional
        Orthonormal basis of the reference eigenspace, computed once (e.g. ``top_eigh(...)[1]``)
        when many partitions of the same rows are compared; not together with ``reference``.

    Returns
    -------
    Tensor, shape (K, k)
        Angles in radians, ascending in each row, in the dtype and on the device of ``values``.
    """
    dtype = getattr(values, "dtype", None)
    x = check_rows(values)
    inverse = check_labels(inverse, len(x), "inverse", device=x.device)
    k = _check_k(k, x.shape[1])
    if not (isinstance(groups, torch.Tensor) and groups.dtype == torch.long and groups.ndim == 1 and len(groups) > 0):
        raise ValueError(f"groups must be a non-empty 1-D long tensor, got {getattr(groups, 'dtype', type(groups).__name__)}")
    sizes = torch.bincount(inverse, minlength=int(max(int(inverse.max()), int(groups.max()))) + 1)[groups]
    if bool((sizes <= k).any()):
        raise ValueError(f"every group needs more than k={k} rows, sizes {sizes.tolist()}")
    if reference_basis is None:
        top_ref = _reference_subspace(x, k, reference)
    elif reference is not None:
        raise ValueError("give reference or reference_basis, not both")
    elif not (isinstance(reference_basis, torch.Tensor) and reference_basis.shape == (x.shape[1], k)
              and reference_basis.dtype.is_floating_point and reference_basis.device == x.device):
        raise ValueError(f"reference_basis must be a floating ({x.shape[1]}, {k}) tensor on {x.device}, "
                         f"got shape {tuple(getattr(reference_basis, 'shape', ()))}")
    else:
        top_ref = reference_basis.to(torch.float64)
    out = []
    for g in groups.tolist():
        rows = x[inverse == g]
        out.append(basis_angles(_top_subspace(rows - rows.mean(0), k), top_ref))
    return torch.stack(out).to(dtype)

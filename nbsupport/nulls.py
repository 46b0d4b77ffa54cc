"""Chance levels and null partitions for between-group shares of variance.

A between-group share :math:`\\tr(\\text{between}) / \\tr(\\text{total})`
(:func:`nbsupport.covariance.decompose_variance`) means something only beside what a grouping
that knows nothing, or knows only something simpler, would give. This module provides those
references, for rows given as values or only through their Gram matrix (per-sample gradients of a
wide network, :func:`nbsupport.pergrad.gradient_gram`):

* the closed-form mean of a random grouping with the same group sizes,
  :math:`(G-1)/(N-1)` (:func:`random_grouping_share`);
* permutation nulls: the groups' labels shuffled among all rows, or only among rows of the same
  stratum, e.g. the same class, so that each group keeps its class composition
  (:func:`random_grouping_null`, :func:`random_grouping_null_gram`);
* restriction to groups of a minimum size, so that singletons (whose share is 1 by
  construction) do not dominate (:func:`large_groups`);
* unit-norm rows, so that a few large rows do not dominate (:func:`cosine_gram`);
* reference partitions with exactly the same number of groups: random hyperplanes through data
  points (:func:`hyperplane_partition`) and k-means (:func:`kmeans_partition`);
* the fraction of a group's trace in its top-k eigenvalues for random subsets of the same size
  (:func:`random_subset_top_fraction`).

Randomness comes in through an ``rng`` argument: an int seed or a ``torch.Generator`` (a
NumPy ``Generator`` is accepted and seeds a torch one); the global RNG is never used.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._validate import integer, torch_rng
from ._validate import labels as check_labels, rows as check_rows
from .covariance import centred_gram

__all__ = ["random_grouping_share", "random_grouping_null", "random_grouping_null_gram",
           "between_share", "between_share_gram", "large_groups", "LargeGroups", "cosine_gram", "hyperplane_partition",
           "kmeans_partition", "random_subset_top_fraction", "top_fraction_gram"]


def _check_gram(gram) -> torch.Tensor:
    if not (isinstance(gram, torch.Tensor) and gram.ndim == 2 and gram.shape[0] == gram.shape[1]
            and gram.dtype.is_floating_point):
        raise ValueError(f"gram must be a square floating (N, N) tensor, got shape "
                         f"{tuple(getattr(gram, 'shape', ()))}")
    k = gram.to(torch.float64)
    if not bool(torch.isfinite(k).all()) or not _symmetric(k):
        raise ValueError("gram must be finite and symmetric")
    return k


def _symmetric(k: torch.Tensor) -> bool:
    """Whether ``(K - K^T) v`` vanishes, to rounding, for a fixed random vector ``v``.

    A non-symmetric ``K`` fails this with probability 1 over ``v`` (a Freivalds-type test), at the
    price of three matrix-vector products instead of reading ``K`` in transposed order."""
    v = torch.rand(len(k), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(k.device)
    difference = k @ v - v @ k
    return bool((difference.abs() <= 1e-10 * (k.abs() @ v) + 1e-12).all())


def _dense(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels renumbered 0..G-1 without gaps, and the counts."""
    _, dense, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return dense, counts


def random_grouping_share(counts) -> float:
    r"""Expected between-group share of the total trace when N rows are grouped at random.

    For any data, a grouping drawn uniformly among those with group sizes :math:`n_1, \dots, n_G`
    (:math:`G` non-empty groups, :math:`\sum_k n_k = N`) has

    .. math::

        \E\left[\frac{\tr(\text{between})}{\tr(\text{total})}\right] = \frac{G - 1}{N - 1}.

    Proof: the mean of a uniform random subset of size :math:`n_k` has
    :math:`\E\|\mu_k - \mu\|^2 = \frac{s^2}{n_k} \frac{N - n_k}{N - 1}` with
    :math:`s^2 = \frac1N \sum_i \|v_i - \mu\|^2` (sampling without replacement), so
    :math:`\E \sum_k n_k \|\mu_k - \mu\|^2 = s^2 \sum_k \frac{N - n_k}{N - 1} = N s^2 \frac{G - 1}{N - 1}`,
    and the total trace :math:`N s^2` does not depend on the grouping.

    Parameters
    ----------
    counts : sequence of int or Tensor, integer, shape (G,)
        Group sizes; zeros (empty groups) are ignored.

    Returns
    -------
    float
        :math:`(G - 1) / (N - 1)`.
    """
    if isinstance(counts, torch.Tensor):
        if counts.ndim != 1 or counts.dtype.is_floating_point or counts.dtype == torch.bool:
            raise ValueError(f"counts must be a 1-D integer tensor, got {counts.dtype} of shape "
                             f"{tuple(counts.shape)}")
        counts = counts.long().cpu()
    else:
        try:
            counts = torch.as_tensor(list(counts), dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"counts must be a sequence of group sizes, got {counts!r}") from None
    if len(counts) == 0 or bool((counts < 0).any()):
        raise ValueError(f"counts must be non-empty and >= 0, got {counts.tolist()}")
    counts = counts[counts > 0]
    total = int(counts.sum())
    if total < 2:
        raise ValueError(f"counts must add up to at least 2 rows, got {total}")
    return (len(counts) - 1) / (total - 1)


def _stratum_shuffles(strata: torch.Tensor, n_perm: int, generator: torch.Generator):
    """``n_perm`` uniform random permutations ``s`` of the rows with ``strata[s] == strata``."""
    stable = torch.sort(strata, stable=True).indices
    for _ in range(n_perm):
        key = strata.double() + torch.rand(len(strata), generator=generator, dtype=torch.float64)
        shuffled = torch.sort(key).indices
        sigma = torch.empty_like(stable)
        sigma[stable] = shuffled
        yield sigma


def _prepare(inverse, strata, n: int, n_perm, rng):
    inverse = check_labels(inverse, n, "inverse")
    labels, counts = _dense(inverse)
    if strata is None:
        strata = torch.zeros(n, dtype=torch.long)
    else:
        strata = _dense(check_labels(strata, n, "strata").cpu())[0]
    n_perm = integer(n_perm, "n_perm", minimum=1)
    return labels.cpu(), counts.cpu(), strata.cpu(), n_perm, torch_rng(rng)


def between_share(values: torch.Tensor, inverse: torch.Tensor) -> float:
    """:math:`\\tr(\\text{between}) / \\tr(\\text{total})` of the rows of ``values`` grouped by ``inverse``.

    Parameters
    ----------
    values : Tensor, shape (N, d)
    inverse : Tensor, integer, shape (N,)

    Returns
    -------
    float
    """
    x = check_rows(values).cpu()
    labels, counts = _dense(check_labels(inverse, len(x), "inverse").cpu())
    centred = x - x.mean(0)
    total = float(centred.pow(2).sum())
    if total <= 0:
        raise ValueError("values must not all be equal (zero total variance)")
    sums = torch.zeros(len(counts), x.shape[1], dtype=torch.float64).index_add_(0, labels, centred)
    return float((sums.pow(2).sum(1) / counts).sum()) / total


def between_share_gram(gram: torch.Tensor, inverse: torch.Tensor) -> float:
    """:func:`between_share` for rows known through their Gram matrix :math:`K = V V^\\top`.

    Parameters
    ----------
    gram : Tensor, shape (N, N)
    inverse : Tensor, integer, shape (N,)

    Returns
    -------
    float
    """
    kc = centred_gram(_check_gram(gram).cpu())
    labels, counts = _dense(check_labels(inverse, len(kc), "inverse").cpu())
    total = float(torch.trace(kc))
    if total <= 0:
        raise ValueError("gram must have a positive centred trace")
    rows = torch.zeros(len(counts), len(kc), dtype=torch.float64).index_add_(0, labels, kc)
    blocks = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, labels, rows[labels, torch.arange(len(kc))])
    return float((blocks / counts).sum()) / total


def random_grouping_null(values: torch.Tensor, inverse: torch.Tensor, n_perm: int = 200, *,
                         strata: torch.Tensor | None = None, rng=0) -> torch.Tensor:
    r"""Between shares of :math:`\tr \Cov` when the group labels are shuffled among the rows.

    Without ``strata`` every draw is a uniform random grouping with the group sizes of ``inverse``
    (mean :func:`random_grouping_share`). With ``strata`` (for instance the class labels) the
    labels are shuffled only among rows of the same stratum, so each group keeps how many rows of
    each stratum it has: the null of "the grouping carries nothing beyond the strata".

    Parameters
    ----------
    values : Tensor, shape (N, d)
        Any floating dtype (computed in float64, on the CPU).
    inverse : Tensor, integer, shape (N,)
        Observed group of every row.
    n_perm : int
        Number of draws.
    strata : Tensor, integer, shape (N,), optional
    rng : int or Generator

    Returns
    -------
    Tensor, float64, shape (n_perm,)
    """
    x = check_rows(values).cpu()
    labels, counts, strata, n_perm, generator = _prepare(inverse, strata, len(x), n_perm, rng)
    centred = x - x.mean(0)
    total = centred.pow(2).sum()
    if float(total) <= 0:
        raise ValueError("values must not all be equal (zero total variance)")
    out = torch.empty(n_perm, dtype=torch.float64)
    for t, sigma in enumerate(_stratum_shuffles(strata, n_perm, generator)):
        sums = torch.zeros(len(counts), x.shape[1], dtype=torch.float64).index_add_(0, labels[sigma], centred)
        out[t] = (sums.pow(2).sum(1) / counts).sum() / total
    return out


def random_grouping_null_gram(gram: torch.Tensor, inverse: torch.Tensor, n_perm: int = 200, *,
                              strata: torch.Tensor | None = None, rng=0) -> torch.Tensor:
    r""":func:`random_grouping_null` for rows known only through their Gram matrix.

    With :math:`K_c = H K H` the centred Gram matrix, the between trace of a grouping is
    :math:`\sum_k \frac{1}{n_k} \sum_{i, j \in k} (K_c)_{ij}`. Only the pairs inside groups enter,
    :math:`\sum_k n_k^2` entries, gathered per draw; for groupings with many small groups this is
    far less than :math:`N^2`. With the same ``rng`` it draws the same groupings as
    :func:`random_grouping_null`.

    Parameters
    ----------
    gram : Tensor, shape (N, N)
        Symmetric (computed in float64, on the CPU).
    inverse, n_perm, strata, rng
        As in :func:`random_grouping_null`.

    Returns
    -------
    Tensor, float64, shape (n_perm,)
    """
    kc = centred_gram(_check_gram(gram).cpu())
    labels, counts, strata, n_perm, generator = _prepare(inverse, strata, len(kc), n_perm, rng)
    total = torch.trace(kc)
    if float(total) <= 0:
        raise ValueError("gram must have a positive centred trace")
    # positions 0..N-1 hold the rows sorted by group; pairs of positions inside one group
    order = torch.sort(labels, stable=True).indices
    start = torch.cumsum(counts, 0) - counts
    pos_group = labels[order]
    pair_counts = counts[pos_group]                                  # partners of each position
    a = torch.repeat_interleave(torch.arange(len(kc)), pair_counts)
    offset = torch.arange(len(a)) - torch.repeat_interleave(torch.cumsum(pair_counts, 0) - pair_counts,
                                                            pair_counts)
    b = start[pos_group[a]] + offset
    weight = 1.0 / counts[pos_group[a]].to(torch.float64)
    flat = kc.reshape(-1)
    n = len(kc)
    out = torch.empty(n_perm, dtype=torch.float64)
    step = max(1, _PAIR_ELEMENTS // len(a))                         # draws gathered at once
    shuffles = _stratum_shuffles(strata, n_perm, generator)
    for first in range(0, n_perm, step):
        sigma = torch.stack([next(shuffles) for _ in range(min(step, n_perm - first))])
        # row i takes the label of row sigma[i]: group k holds the rows i with sigma[i] in k,
        # i.e. the rows sigma^{-1}[order[k's positions]]
        inv_sigma = torch.empty_like(sigma)
        inv_sigma.scatter_(1, sigma, torch.arange(n).expand_as(sigma))
        rows = inv_sigma[:, order]
        pairs = flat[rows[:, a] * n + rows[:, b]]                   # (draws, pairs in groups)
        out[first:first + len(sigma)] = (pairs @ weight) / total
    return out


#: Entries gathered per batch of draws in :func:`random_grouping_null_gram` (32 MB in float64).
_PAIR_ELEMENTS = 2**22


class LargeGroups(NamedTuple):
    """Rows of the groups with at least ``min_count`` members, as :func:`large_groups` returns them.

    Attributes
    ----------
    rows : Tensor, long, shape (M,)
        Indices of the kept rows (M of the N), ascending.
    inverse : Tensor, long, shape (M,)
        Their groups, renumbered 0..K-1 (K kept groups).
    counts : Tensor, long, shape (K,)
    """

    rows: torch.Tensor
    inverse: torch.Tensor
    counts: torch.Tensor


def large_groups(inverse: torch.Tensor, min_count: int) -> LargeGroups:
    """Restrict a grouping to its groups of at least ``min_count`` rows.

    A size-stratified share is the between share computed on these rows only (their own total,
    their own chance level): singletons, whose share is 1 by construction, drop out.

    Parameters
    ----------
    inverse : Tensor, integer, shape (N,)
    min_count : int
        At least 1.

    Returns
    -------
    LargeGroups
    """
    if not isinstance(inverse, torch.Tensor):
        raise ValueError(f"inverse must be a 1-D integer tensor, got {type(inverse).__name__}")
    inverse = check_labels(inverse, len(inverse), "inverse")
    min_count = integer(min_count, "min_count", minimum=1)
    counts = torch.bincount(inverse)
    rows = torch.nonzero(counts[inverse] >= min_count).squeeze(1)
    kept, new_counts = _dense(inverse[rows])
    return LargeGroups(rows, kept, new_counts)


def cosine_gram(gram: torch.Tensor) -> torch.Tensor:
    r"""The Gram matrix of the unit-norm rows: :math:`K_{ij} / \sqrt{K_{ii} K_{jj}}`.

    Parameters
    ----------
    gram : Tensor, shape (N, N)
        Symmetric with a positive diagonal.

    Returns
    -------
    Tensor, shape (N, N)
        In the dtype and on the device of ``gram`` (computed in float64).
    """
    k = _check_gram(gram)
    diag = torch.diagonal(k)
    if bool((diag <= 0).any()):
        raise ValueError(f"gram must have a positive diagonal (rows of norm > 0); "
                         f"{int((diag <= 0).sum())} rows have norm 0")
    scale = diag.rsqrt()
    return (k * scale[:, None] * scale[None, :]).to(gram.dtype)


def _check_n_groups(n_groups, n: int) -> int:
    n_groups = integer(n_groups, "n_groups", minimum=1)
    if n_groups > n:
        raise ValueError(f"n_groups must be an integer in [1, {n}], got {n_groups!r}")
    return n_groups


def hyperplane_partition(values: torch.Tensor, n_groups: int, rng=0, max_planes: int = 10_000) -> torch.Tensor:
    """Cells of random hyperplanes through data points, refined until exactly ``n_groups`` groups.

    Planes are added one at a time, each with a standard Gaussian normal :math:`w` and passing
    through a data point :math:`x_p` drawn uniformly (side :math:`\\1(w^\\top(x - x_p) > 0)`), as a
    random first-layer unit would cut the data. The last plane would usually overshoot; it is then
    applied only to a uniformly chosen subset of the cells it cuts, just enough of them to reach
    ``n_groups`` groups. This is the null "any partition of the data by hyperplanes with the same
    number of groups".

    Parameters
    ----------
    values : Tensor, shape (N, d)
    n_groups : int
        In [1, N]; the number of distinct rows of ``values`` must be at least this.
    rng : int or Generator
    max_planes : int
        Give up (ValueError) after this many planes.

    Returns
    -------
    Tensor, long, shape (N,)
        Group of every row, groups numbered 0..n_groups-1, on the device of ``values``.
    """
    x = check_rows(values).cpu()
    n_groups = _check_n_groups(n_groups, len(x))
    max_planes = integer(max_planes, "max_planes", minimum=1)
    generator = torch_rng(rng)
    labels = torch.zeros(len(x), dtype=torch.long)
    count = 1
    for _ in range(max_planes):
        if count == n_groups:
            return labels.to(values.device)
        normal = torch.randn(x.shape[1], generator=generator, dtype=torch.float64)
        point = x[int(torch.randint(len(x), (1,), generator=generator))]
        side = ((x - point) @ normal > 0).long()
        split = torch.zeros(count, 2, dtype=torch.long).index_put_((labels, side), torch.ones(len(x), dtype=torch.long),
                                                                   accumulate=True)
        cut = torch.nonzero((split > 0).all(1)).squeeze(1)           # cells with rows on both sides
        if len(cut) == 0:
            continue
        if count + len(cut) > n_groups:                             # split only some of the cut cells
            chosen = cut[torch.randperm(len(cut), generator=generator)[:n_groups - count]]
            allowed = torch.zeros(count, dtype=torch.bool)
            allowed[chosen] = True
            side = side * allowed[labels]
        labels, counts = _dense(labels * 2 + side)
        count = len(counts)
    if count == n_groups:
        return labels.to(values.device)
    raise ValueError(f"max_planes={max_planes} planes gave {count} groups, fewer than n_groups={n_groups}")


def kmeans_partition(values: torch.Tensor, n_groups: int, rng=0, n_iter: int = 100) -> torch.Tensor:
    """k-means clusters (k-means++ seeding, then Lloyd's iterations) with exactly ``n_groups`` groups.

    The partition that maximises the between share of the squared distances among partitions into
    ``n_groups`` cells, approximately: the strongest simple competitor of a pattern grouping for the
    between share of the inputs. Empty clusters are re-seeded with the row farthest from its centre.

    Parameters
    ----------
    values : Tensor, shape (N, d)
    n_groups : int
        In [1, N]; the number of distinct rows must be at least this.
    rng : int or Generator
        Seeds the k-means++ draws.
    n_iter : int
        Maximum number of Lloyd iterations (it stops earlier when no assignment changes).

    Returns
    -------
    Tensor, long, shape (N,)
        Cluster of every row, numbered 0..n_groups-1, on the device of ``values``.
    """
    x = check_rows(values).cpu()
    n_groups = _check_n_groups(n_groups, len(x))
    n_iter = integer(n_iter, "n_iter", minimum=1)
    generator = torch_rng(rng)
    sq = x.pow(2).sum(1)

    def distances(centres):
        return (sq[:, None] - 2 * x @ centres.T + centres.pow(2).sum(1)[None, :]).clamp(min=0)

    centres = x[int(torch.randint(len(x), (1,), generator=generator))][None]
    nearest = distances(centres)[:, 0]
    for _ in range(1, n_groups):
        if float(nearest.sum()) <= 0:
            raise ValueError(f"values has fewer than n_groups={n_groups} distinct rows")
        pick = int(torch.multinomial(nearest, 1, generator=generator))
        centres = torch.cat([centres, x[pick][None]])
        nearest = torch.minimum(nearest, distances(x[pick][None])[:, 0])
    labels = distances(centres).argmin(1)
    for _ in range(n_iter):
        counts = torch.bincount(labels, minlength=n_groups)
        sums = torch.zeros(n_groups, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
        centres = sums / counts.clamp(min=1)[:, None]
        for empty in torch.nonzero(counts == 0).squeeze(1).tolist():
            far = int(distances(centres)[torch.arange(len(x)), labels].argmax())
            centres[empty] = x[far]
            labels[far] = empty
        new = distances(centres).argmin(1)
        if torch.equal(new, labels) and bool((torch.bincount(new, minlength=n_groups) > 0).all()):
            break
        labels = new
    return _dense(labels)[0].to(values.device)


def top_fraction_gram(gram: torch.Tensor, k: int) -> float:
    """Fraction of :math:`\\tr \\Cov` in the top-``k`` eigenvalues, for rows given by their Gram matrix.

    Parameters
    ----------
    gram : Tensor, shape (n, n)
    k : int

    Returns
    -------
    float
    """
    k = integer(k, "k", minimum=1)
    eig = torch.linalg.eigvalsh(centred_gram(_check_gram(gram))).flip(0)
    return float(eig[:k].sum() / eig.sum())


def random_subset_top_fraction(gram: torch.Tensor, size: int, k: int, n_draws: int = 200, rng=0) -> torch.Tensor:
    """Null of :func:`top_fraction_gram` for a group: random subsets of the same size.

    Parameters
    ----------
    gram : Tensor, shape (N, N)
        Gram matrix of all rows.
    size : int
        Rows per subset, ``k < size <= N``.
    k : int
    n_draws : int
    rng : int or Generator

    Returns
    -------
    Tensor, float64, shape (n_draws,)
        The top-``k`` fraction of each random subset's covariance trace.
    """
    kk = _check_gram(gram).cpu()
    k = integer(k, "k", minimum=1)
    size, n_draws = integer(size, "size"), integer(n_draws, "n_draws", minimum=1)
    if not k < size <= len(kk):
        raise ValueError(f"size must be an integer in ({k}, {len(kk)}], got {size!r}")
    generator = torch_rng(rng)
    subsets = torch.stack([torch.randperm(len(kk), generator=generator)[:size] for _ in range(n_draws)])
    out = torch.empty(n_draws, dtype=torch.float64)
    step = max(1, _SUBSET_ELEMENTS // (size * size))              # draws per batched eigvalsh
    for start in range(0, n_draws, step):
        chunk = subsets[start:start + step]
        sub = kk[chunk[:, :, None], chunk[:, None, :]]
        eig = torch.linalg.eigvalsh(centred_gram(sub)).flip(-1)
        out[start:start + step] = eig[:, :k].sum(1) / eig.sum(1)
    return out.to(gram.device)


#: Elements of the batched sub-Gram matrices in :func:`random_subset_top_fraction` (32 MB in float64).
_SUBSET_ELEMENTS = 2**22

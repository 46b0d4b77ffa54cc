"""How the book decides: intervals over seeds and items, permutation p-values, Holm, equivalence.

A conclusion about trained networks is a statement about the population of networks the recipe
produces (the training seed is the unit of replication) and, usually, about a population of
inputs (test images are the items). The two kinds of sampling are handled together:

* :func:`hierarchical_bootstrap` resamples units and items, takes the spread of the resampled
  statistic as its standard error, and reads the interval off Student's t with S - 1 degrees of
  freedom (a cluster-t interval with the item resampling inside). With 8 seeds this covers at the
  nominal level where a plain percentile bootstrap covers about 0.87;
* :func:`equivalence` is the two one-sided tests (TOST) through the same interval: "no gain"
  needs a declared margin, never a failure to reject;
* :func:`verdict` turns paired differences into *better* / *worse* / *equivalent* /
  *not separated*, with Holm's correction among declared primary comparisons and, separately,
  among the rest;
* :func:`permutation_pvalue` and :func:`holm` are the textbook formulas (Phipson & Smyth 2010;
  Holm 1979).

Randomness comes in through ``rng`` (an int or a ``numpy.random.Generator``), as in scipy.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats as _st

from ._validate import integer, numpy_rng, real

__all__ = ["Interval", "Equivalence", "Verdict", "hierarchical_bootstrap", "permutation_pvalue",
           "holm", "equivalence", "verdict", "LABELS"]

LABELS = ("better", "worse", "equivalent", "not separated")


class Interval(NamedTuple):
    """A point estimate with a two-sided interval and the standard error behind it."""

    estimate: float
    low: float
    high: float
    se: float


class Equivalence(NamedTuple):
    """The outcome of two one-sided tests against ``+-margin``."""

    estimate: float
    low: float
    high: float
    equivalent: bool
    p: float


class Verdict(NamedTuple):
    """One comparison's outcome (see :func:`verdict`)."""

    name: str
    estimate: float
    low: float
    high: float
    p: float
    p_adjusted: float
    p_equivalence: float
    label: str


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------

def _as_table(values, name: str = "values") -> np.ndarray:
    """``values`` as a finite float64 array [S, N] (a 1-D input is S units of one item)."""
    try:
        table = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real array of shape (S,) or (S, N), got {type(values).__name__}")
    if table.ndim == 1:
        table = table[:, None]
    if table.ndim != 2:
        raise ValueError(f"{name} must have shape (S,) or (S, N), got shape {table.shape}")
    if table.size < 2 or table.shape[0] * table.shape[1] < 2:
        raise ValueError(f"{name} must hold at least two values, got shape {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(table)).sum())} non-finite entries")
    return table


def _check_items(items: str) -> str:
    if items not in ("shared", "nested"):
        raise ValueError(f"items must be 'shared' or 'nested', got {items!r}")
    return items


# ---------------------------------------------------------------------------------------------
# the interval
# ---------------------------------------------------------------------------------------------

def _counts(draws: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` indices occurs in every row of ``draws`` [B, k] -> [B, size]."""
    rows = np.arange(len(draws))[:, None] * size
    flat = np.bincount((draws + rows).ravel(), minlength=len(draws) * size)
    return flat.reshape(len(draws), size).astype(np.float64)


def _replicates(table: np.ndarray, statistic: Callable | None, n_boot: int, gen: np.random.Generator,
                items: str) -> np.ndarray:
    """Bootstrap replicates of the statistic, [n_boot]: units resampled with replacement, items
    resampled with replacement (the same item draw for every unit when shared)."""
    S, N = table.shape
    resample_units = S > 1
    if resample_units:
        units = gen.integers(0, S, size=(n_boot, S))
    else:
        units = np.zeros((n_boot, 1), dtype=np.int64)
    if items == "shared":
        cols = gen.integers(0, N, size=(n_boot, N))
        if statistic is None:  # the mean of the resampled grid, from resampling counts: O(B S N)
            w_units = _counts(units, S)
            return ((w_units @ table) * _counts(cols, N)).sum(1) / (units.shape[1] * N)
        return np.array([statistic(table[u][:, c]) for u, c in zip(units, cols)], dtype=np.float64)
    cols = gen.integers(0, N, size=(n_boot, units.shape[1], N))
    out = np.empty(n_boot)
    for b in range(n_boot):
        grid = np.take_along_axis(table[units[b]], cols[b], axis=1)
        out[b] = grid.mean() if statistic is None else statistic(grid)
    return out


def _studentised(values, statistic, n_boot, rng, items) -> tuple[float, float, int]:
    """(estimate, standard error, degrees of freedom) behind every interval of this module."""
    table = _as_table(values)
    items = _check_items(items)
    n_boot = integer(n_boot, "n_boot", minimum=100)
    if statistic is not None and not callable(statistic):
        raise ValueError(f"statistic must be a callable on an array (S, N) or None, got {statistic!r}")
    estimate = float(table.mean() if statistic is None else statistic(table))
    if not np.isfinite(estimate):
        raise ValueError(f"statistic must return a finite number, got {estimate}")
    S, N = table.shape
    reps = _replicates(table, statistic, n_boot, numpy_rng(rng), items)
    # A resample of S units has (S - 1) / S of their variance; with one unit, the items are the units.
    n = S if S > 1 else N
    se = float(reps.std(ddof=1) * np.sqrt(n / (n - 1)))
    return estimate, se, n - 1


def hierarchical_bootstrap(values, statistic: Callable | None = None, n_boot: int = 2000,
                           level: float = 0.95, rng=0, items: str = "shared") -> Interval:
    """Interval for a mean (or ``statistic``) over units and items, e.g. seeds x test images.

    Parameters
    ----------
    values : array_like, shape (S, N) or (S,)
        One value per unit (training seed, random network) and item (test image). A 1-D input
        holds one value per unit.
    statistic : callable, optional
        ``statistic(table) -> float`` on an array of shape (S, N); default the mean of all entries.
    n_boot : int
        Bootstrap replicates, >= 100.
    level : float
        Two-sided coverage, in (0, 1).
    rng : int, numpy.random.Generator or torch.Generator
        Source of the resampling.
    items : {"shared", "nested"}
        ``"shared"``: every unit was measured on the same items (crossed design; one item draw
        per replicate for all units). ``"nested"``: each unit has its own items.

    Returns
    -------
    Interval
        ``(estimate, low, high, se)``: ``estimate +- t_{S-1} se``, ``se`` the bootstrap standard
        deviation times ``sqrt(S / (S - 1))``. With one unit (S = 1) the items play the units' part
        (N - 1 degrees of freedom), and the interval speaks for that unit only.

    Notes
    -----
    Resampling both levels and studentising with the units' degrees of freedom follows the
    cluster-robust practice for few clusters (Cameron & Miller 2015); resampling the items of a
    crossed design as well adds their variance, which a t interval on unit means leaves out when
    all units share the items. The coverage is tested by simulation in ``tests/test_stats.py``.
    """
    level = real(level, "level", low=0.0, high=1.0, high_inclusive=False)
    estimate, se, df = _studentised(values, statistic, n_boot, rng, items)
    half = float(_st.t.ppf(0.5 + level / 2, df) * se)
    return Interval(estimate, estimate - half, estimate + half, se)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

def permutation_pvalue(observed, null, alternative: str = "greater", min_draws: int = 200) -> float:
    """Monte Carlo permutation p-value ``(1 + b) / (1 + m)`` (Phipson & Smyth 2010).

    Parameters
    ----------
    observed : float
        The statistic on the real data.
    null : array_like, shape (m,)
        The statistic on m permuted (or otherwise null) data sets.
    alternative : {"greater", "less", "two-sided"}
        ``b`` counts null values ``>= observed`` (``<=`` for "less"); "two-sided" doubles the
        smaller one-sided p-value (capped at 1).
    min_draws : int
        Fewer null draws are refused (the book uses at least 200).

    Returns
    -------
    float
        Never 0: with m draws the smallest p-value is ``1 / (1 + m)``.
    """
    observed = real(observed, "observed")
    draws = np.asarray(null, dtype=np.float64).ravel()
    min_draws = integer(min_draws, "min_draws", minimum=1)
    if draws.size < min_draws:
        raise ValueError(f"null must hold at least {min_draws} draws, got {draws.size}")
    if not np.isfinite(draws).all():
        raise ValueError("null must be finite")
    m = draws.size
    greater = (1 + np.count_nonzero(draws >= observed)) / (1 + m)
    less = (1 + np.count_nonzero(draws <= observed)) / (1 + m)
    if alternative == "greater":
        return float(greater)
    if alternative == "less":
        return float(less)
    if alternative == "two-sided":
        return float(min(1.0, 2 * min(greater, less)))
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order (Holm 1979).

    Parameters
    ----------
    pvalues : array_like, shape (m,)
        Values in [0, 1].

    Returns
    -------
    numpy.ndarray, shape (m,)
        ``p_(i)`` adjusted to ``max_{j <= i} min(1, (m - j + 1) p_(j))`` in sorted order; rejecting
        where the adjusted value is <= alpha is Holm's procedure at family-wise level alpha.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError("pvalues must lie in [0, 1]")
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _tost_p(estimate: float, se: float, df: int, margin: float) -> float:
    if se == 0:
        return 0.0 if abs(estimate) < margin else 1.0
    return float(max(_st.t.sf((estimate + margin) / se, df), _st.t.cdf((estimate - margin) / se, df)))


def _two_sided_p(estimate: float, se: float, df: int) -> float:
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * _st.t.sf(abs(estimate) / se, df))


def equivalence(values, margin: float, level: float = 0.90, rng=0, n_boot: int = 2000,
                items: str = "shared", statistic: Callable | None = None) -> Equivalence:
    """Two one-sided tests: is the mean of ``values`` within ``+-margin``?

    Parameters
    ----------
    values : array_like, shape (S, N) or (S,)
        Paired differences per unit and item (as in :func:`hierarchical_bootstrap`).
    margin : float
        The declared equivalence margin, > 0, in the units of ``values``.
    level : float
        Level of the interval that must lie inside ``(-margin, margin)``; 0.90 is TOST at 0.05.

    Returns
    -------
    Equivalence
        ``(estimate, low, high, equivalent, p)``: the interval at ``level``, whether it lies
        inside the margins, and the TOST p-value (the larger one-sided p-value).
    """
    margin = real(margin, "margin", low=0.0)
    level = real(level, "level", low=0.0, high=1.0, high_inclusive=False)
    estimate, se, df = _studentised(values, statistic, n_boot, rng, items)
    half = float(_st.t.ppf(0.5 + level / 2, df) * se)
    low, high = estimate - half, estimate + half
    inside = bool(-margin < low and high < margin)
    return Equivalence(estimate, low, high, inside, _tost_p(estimate, se, df, margin))


def verdict(comparisons: Mapping[str, object], margin: float | Mapping[str, float] | None = None, *,
            primary: Sequence[str] = (), higher_is_better: bool = True, level: float = 0.95,
            n_boot: int = 2000, rng=0, items: str = "shared") -> list[Verdict]:
    """Better, worse, equivalent or not separated: one decision rule for the whole book.

    Parameters
    ----------
    comparisons : dict of str to array_like, shape (S, N) or (S,)
        Name -> paired differences ``A - B`` per unit (seed) and item (image).
    margin : float or dict of str to float, optional
        Equivalence margin (> 0) for every comparison, or per name; without one a comparison is
        never called equivalent.
    primary : sequence of str
        The declared primary comparisons: Holm's correction runs among them, and separately among
        the rest.
    higher_is_better : bool
        Whether a positive difference means A is better (False for losses and error rates).
    level : float
        Interval level; a difference is declared at ``alpha = 1 - level`` after the correction.

    Returns
    -------
    list of Verdict
        In the order of ``comparisons``: ``(name, estimate, low, high, p, p_adjusted,
        p_equivalence, label)``; ``low, high`` is the (uncorrected) interval at ``level``,
        ``p`` the two-sided p-value of a zero difference from the same studentised statistic,
        ``p_equivalence`` the Holm-adjusted TOST p-value (``nan`` without a margin). Every
        comparison resamples the same units and items (common random numbers). The label is
        "better"/"worse" when ``p_adjusted < alpha``, else "equivalent" when ``p_equivalence <
        alpha``, else "not separated".
    """
    if not isinstance(comparisons, Mapping) or not comparisons:
        raise ValueError("comparisons must be a non-empty dict of name -> differences")
    names = list(comparisons)
    unknown = [p for p in primary if p not in comparisons]
    if isinstance(primary, str) or unknown:
        raise ValueError(f"primary must name comparisons, got {primary!r}")
    level = real(level, "level", low=0.0, high=1.0, high_inclusive=False)
    alpha = 1 - level
    if margin is None or isinstance(margin, Mapping):
        margins = dict(margin or {})
        if set(margins) - set(names):
            raise ValueError(f"margin names unknown comparisons: {sorted(set(margins) - set(names))}")
    else:
        margins = dict.fromkeys(names, margin)
    margins = {k: real(v, "margin", low=0.0) for k, v in margins.items()}
    # Common random numbers: every comparison resamples the same units and items.
    if isinstance(rng, np.random.Generator):
        seed = int(rng.integers(2**63))
    else:
        seed = integer(rng, "rng", minimum=0)
    rows = []
    for name in names:
        estimate, se, df = _studentised(comparisons[name], None, n_boot, seed, items)
        half = float(_st.t.ppf(0.5 + level / 2, df) * se)
        tost = _tost_p(estimate, se, df, margins[name]) if name in margins else np.nan
        rows.append((name, estimate, estimate - half, estimate + half, _two_sided_p(estimate, se, df), tost))
    p_adj = np.empty(len(rows))
    eq_adj = np.full(len(rows), np.nan)
    is_primary = [n in primary for n in names]
    for family in ([i for i, p in enumerate(is_primary) if p], [i for i, p in enumerate(is_primary) if not p]):
        if not family:
            continue
        p_adj[family] = holm([rows[i][4] for i in family])
        with_margin = [i for i in family if names[i] in margins]
        if with_margin:
            eq_adj[with_margin] = holm([rows[i][5] for i in with_margin])
    out = []
    for i, (name, estimate, low, high, p, _) in enumerate(rows):
        if p_adj[i] < alpha:
            label = "better" if (estimate > 0) == bool(higher_is_better) else "worse"
        elif eq_adj[i] < alpha:
            label = "equivalent"
        else:
            label = "not separated"
        out.append(Verdict(name, estimate, low, high, p, float(p_adj[i]), float(eq_adj[i]), label))
    return out

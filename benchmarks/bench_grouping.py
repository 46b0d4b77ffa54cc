"""Grouping samples by activation pattern: bit-packed 1-D unique vs the source's mask loop.

Targets (issue #4): >= 500x faster than ``for a in unique_rows: np.all(A == a, axis=1)`` at
N = 20 000, m = 32; growth close to N log N: time(10^6 rows) / time(10^5 rows) <= 15.
"""

import numpy as np
import torch
from _timing import best_of, setup

from nbsupport.patterns import group_by_pattern


def gates(n: int, m: int = 32, d: int = 8) -> torch.Tensor:
    """Patterns of a random ReLU layer on Gaussian inputs: realistic repetition, not random bits."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w, b = torch.randn(m, d, generator=g), 0.5 * torch.randn(m, generator=g)
    return x @ w.T + b > 0


def seed_loop(a: np.ndarray) -> list[np.ndarray]:
    """The source's step 3: unique rows, then one boolean mask over all rows per pattern."""
    return [np.all(a == row, axis=1) for row in np.unique(a, axis=0)]


if __name__ == "__main__":
    setup()
    a = gates(20_000)
    n_groups = len(group_by_pattern(a).counts)
    t_loop = best_of(lambda: seed_loop(a.numpy()), repeat=1)
    t_ours = best_of(lambda: group_by_pattern(a), repeat=5)
    print(f"N=20000, m=32, {n_groups} patterns: mask loop {t_loop:.3f}s, group_by_pattern {t_ours * 1e3:.1f}ms, "
          f"speed-up {t_loop / t_ours:.0f}x (target >= 500x)")
    big, small = gates(1_000_000), gates(100_000)
    t_big, t_small = best_of(lambda: group_by_pattern(big)), best_of(lambda: group_by_pattern(small))
    print(f"time(10^6 rows) / time(10^5 rows) = {t_big / t_small:.1f} (target <= 15; N log N gives ~12)")
    wide = gates(100_000, m=200)
    print(f"m=200 (4 words), N=10^5: {best_of(lambda: group_by_pattern(wide)) * 1e3:.0f}ms")

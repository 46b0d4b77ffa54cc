"""Grouping samples by activation pattern: bit-packed 1-D unique vs the source's mask loop and torch.unique.

Figures (issue 4; ratios measured in one run, median over rounds):

* speed-up over the source's ``for a in unique_rows: np.all(A == a, axis=1)`` at N = 20 000, m = 32:
  >= 500x;
* growth close to N log N: time(10^6 rows) / time(10^5 rows) <= 15 (N log N gives about 12).

``torch.unique(dim=0, return_inverse=True, return_counts=True)``, the contract ``group_by_pattern``
keeps, is timed beside them. Every route yields the same partition (checked). Scaling curves: time
against N (m = 32) and against the pattern width m (N = 10^5).
"""

import numpy as np
import torch
from _timing import SMOKE, Report, interleaved, ratio_stats, setup

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


def torch_unique(a: torch.Tensor):
    return torch.unique(a, dim=0, return_inverse=True, return_counts=True)


def same_partition(inv_a: torch.Tensor, inv_b: torch.Tensor) -> bool:
    """Two labelings define the same partition iff the label pairs are in one-to-one correspondence."""
    pairs = torch.unique(torch.stack([inv_a, inv_b], 1), dim=0)
    return len(pairs) == len(torch.unique(inv_a)) == len(torch.unique(inv_b))


def median(v):
    return sorted(v)[len(v) // 2]


def main():
    setup()
    report = Report(__file__, "Grouping samples by activation pattern")
    n = 20_000 if not SMOKE else 2_000
    a = gates(n)
    groups = group_by_pattern(a)
    masks = seed_loop(a.numpy())
    loop_inverse = torch.from_numpy(np.argmax(np.stack(masks, 1), 1))
    mismatch = float(not same_partition(groups.inverse, loop_inverse))
    mismatch += float(not same_partition(groups.inverse, torch_unique(a)[1]))
    report.check(f"partitions differ from the loop's or torch.unique's (N = {n}, m = 32)", mismatch, 0)

    t = interleaved({"mask loop": lambda: seed_loop(a.numpy()), "torch.unique": lambda: torch_unique(a),
                     "group_by_pattern": lambda: group_by_pattern(a)}, rounds=3 if not SMOKE else 1)
    desc = f"N = {n}, m = 32, {len(groups.counts)} patterns"
    report.figure("speed-up over the mask loop", description=desc, ours="mask loop", baseline="group_by_pattern",
                  op=">=", target=500.0, ratios=ratio_stats(t["mask loop"], t["group_by_pattern"]),
                  note="a speed-up: loop time / our time")
    report.table("times at N = 20 000", description=desc + f", median of {len(t['mask loop'])} rounds",
                 rows=[{"route": k, "median (s)": median(v), "min (s)": min(v)} for k, v in t.items()])

    big, small = (gates(1_000_000), gates(100_000)) if not SMOKE else (gates(20_000), gates(2_000))
    t = interleaved({"big": lambda: group_by_pattern(big), "small": lambda: group_by_pattern(small)},
                    rounds=5 if not SMOKE else 1)
    report.figure("growth from 10^5 to 10^6 rows", description="m = 32; N log N gives about 12",
                  ours=f"N = {len(big)}", baseline=f"N = {len(small)}", op="<=", target=15.0,
                  ratios=ratio_stats(t["big"], t["small"]), note="a time ratio for 10x more rows")

    ns = [1_000, 10_000, 100_000, 1_000_000] if not SMOKE else [500, 1_000]
    series = {"group_by_pattern": [], "torch.unique": [], "mask loop": []}
    for nv in ns:
        av = gates(nv)
        fns = {"group_by_pattern": lambda: group_by_pattern(av), "torch.unique": lambda: torch_unique(av)}
        if nv <= 20_000:
            fns["mask loop"] = lambda: seed_loop(av.numpy())
        tt = interleaved(fns, rounds=3 if not SMOKE else 1)
        for label in series:
            series[label].append(median(tt[label]) if label in tt else None)
    report.curve("time vs N", description="m = 32, median of 3 (the mask loop up to N = 20 000)", x_label="N",
                 x=ns, series=series)
    ms = [8, 32, 64, 128, 256] if not SMOKE else [8, 70]
    nm = 100_000 if not SMOKE else 1_000
    series = {"group_by_pattern": [], "torch.unique": []}
    for mv in ms:
        av = gates(nm, m=mv)
        tt = interleaved({"group_by_pattern": lambda: group_by_pattern(av), "torch.unique": lambda: torch_unique(av)},
                         rounds=3 if not SMOKE else 1)
        for label in series:
            series[label].append(median(tt[label]))
    report.curve("time vs m", description=f"N = {nm}, median of 3 (m > 64 packs into several words)",
                 x_label="pattern width m", x=ms, series=series)
    report.write()


if __name__ == "__main__":
    main()

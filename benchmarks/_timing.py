"""Timing helper shared by the benchmark scripts: best of a few runs, in seconds."""

import time

import torch


def best_of(fn, repeat: int = 3) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs (the least disturbed by other processes)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def setup(threads: int = 2) -> None:
    """Fix the thread count and the seed so that runs are comparable."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)

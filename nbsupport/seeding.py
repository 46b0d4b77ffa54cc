"""One seeding helper for every chapter, so that two builds print the same numbers."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ._validate import integer

__all__ = ["seed_everything"]


def seed_everything(seed: int = 0, deterministic: bool = True) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA), and return a NumPy generator.

    Parameters
    ----------
    seed : int
        A non-negative integer.
    deterministic : bool
        Also ask torch for deterministic kernels (``torch.use_deterministic_algorithms`` with
        ``warn_only=True``) and set ``CUBLAS_WORKSPACE_CONFIG`` so cuBLAS complies.

    Returns
    -------
    numpy.random.Generator
        ``np.random.default_rng(seed)``, for code that takes an explicit ``rng`` (e.g. scipy).
    """
    seed = integer(seed, "seed", minimum=0)
    if not isinstance(deterministic, (bool, np.bool_)):
        raise ValueError(f"deterministic must be a bool, got {deterministic!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return np.random.default_rng(seed)

"""nbsupport.seeding: one call makes Python, NumPy and torch repeat themselves."""

import random

import numpy as np
import pytest
import torch

from nbsupport.seeding import seed_everything


def _draw():
    return random.random(), np.random.rand(), torch.rand(3)


def test_same_seed_same_numbers():
    rng = seed_everything(123)
    first, r1 = _draw(), rng.random()
    rng = seed_everything(123)
    second, r2 = _draw(), rng.random()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2]) and r1 == r2
    assert r1 == np.random.default_rng(123).random()
    seed_everything(124)
    third = _draw()
    assert third[0] != first[0] and not torch.equal(third[2], first[2])


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, None, np.bool_(True)])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(seed, deterministic=False)


def test_numpy_and_tensor_seeds_are_the_int():
    for seed in (np.int64(7), torch.tensor(7)):
        rng = seed_everything(seed, deterministic=False)
        assert rng.random() == np.random.default_rng(7).random()
    with pytest.raises(ValueError, match="deterministic"):
        seed_everything(0, deterministic="yes")


def test_deterministic_mode_is_switched_on_here():
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()


def test_and_does_not_leak_into_the_next_test():
    """Runs after the test above (file order): conftest restores the process state."""
    assert not torch.are_deterministic_algorithms_enabled()

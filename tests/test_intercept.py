"""nbsupport.intercept: the window arguments of a routed max-pool call.

The routing itself (every ReLU and max-pool call path, restoration, nesting, checkpointing) is
tested through its rules in ``test_pullbacks.py`` and ``test_patterns.py``."""

import pytest
import torch

from nbsupport.intercept import PoolGeometry, pool_geometry


def test_pool_geometry_normalises_and_names_the_argument():
    assert pool_geometry(3) == PoolGeometry((3, 3), (3, 3), (0, 0), (1, 1))
    assert pool_geometry((3, 2), [], (1, 0), 2) == PoolGeometry((3, 2), (3, 2), (1, 0), (2, 2))
    assert pool_geometry(torch.tensor(2), stride=(1, 2)) == PoolGeometry((2, 2), (1, 2), (0, 0), (1, 1))
    for kwargs, name in [(dict(kernel_size=0), "kernel_size"), (dict(kernel_size=2, stride=0), "stride"),
                         (dict(kernel_size=2, dilation=(1, 0)), "dilation"), (dict(kernel_size=2.5), "kernel_size"),
                         (dict(kernel_size=3, padding=2), "padding"), (dict(kernel_size=3, padding=-1), "padding"),
                         (dict(kernel_size=(1, 2, 3)), "kernel_size")]:
        with pytest.raises(ValueError, match=name):
            pool_geometry(**kwargs)

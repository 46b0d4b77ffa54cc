"""A small one-hidden-layer classifier in float64, shared by the nbsupport.gating tests."""

import torch

from nbsupport.models import mlp


def _net(widths=(3, 5, 4), n=7, seed=0):
    torch.manual_seed(seed)
    net = mlp(list(widths)).double()
    x = torch.randn(n, widths[0], dtype=torch.float64)
    y = torch.randint(0, widths[-1], (n,))
    return net, x, y

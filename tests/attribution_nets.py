"""Small networks and images shared by the attribution, faithfulness and randomisation tests."""

import torch
from torch import nn

from nbsupport.models import vgg_cnn


def _linear(c=1, side=4, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, k)).double().eval()


def _images(n=4, c=1, side=4, seed=1):
    return torch.rand(n, c, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _seeded_cnn(seed=0, side=8):
    """A small CNN whose weights come from a private generator (no dependence on the global RNG)."""
    cnn = vgg_cnn((3, 4), image_size=side).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cnn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return cnn

"""Optional torchvision ImageNet models with weights from a local checkpoint file (never downloaded).

Chapter 4 checks the excitation rules on torchvision's architectures; with a checkpoint in
``$TORCH_HOME/hub/checkpoints`` it also runs them on trained ImageNet weights.
:func:`load_imagenet_checkpoint` builds the model without weights and loads the file strictly;
:func:`remap_legacy_densenet_keys` reads DenseNet files written in torchvision's legacy key layout.
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["remap_legacy_densenet_keys", "load_imagenet_checkpoint"]

_LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                                  r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def remap_legacy_densenet_keys(state_dict: dict) -> dict:
    """Rename DenseNet keys of the legacy layout (``...denselayer1.norm.1.weight``) to torchvision's
    current one (``...denselayer1.norm1.weight``), as torchvision does when it loads its own
    ``DenseNet121_Weights.IMAGENET1K_V1`` file. Other keys are kept.

    Parameters
    ----------
    state_dict : dict of str to Tensor

    Returns
    -------
    dict
        A new dict; the tensors are the same objects.
    """
    out = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_imagenet_checkpoint(name: str, path, map_location="cpu") -> nn.Module:
    """A torchvision ImageNet model with weights read from a local checkpoint file, in eval mode.

    ``name`` is a torchvision constructor (``"resnet50"``, ``"vgg11_bn"``, ``"densenet121"``, ...),
    built with ``weights=None`` (nothing is downloaded); DenseNet files in the legacy key layout are
    remapped by :func:`remap_legacy_densenet_keys`. Loading is strict: a file for another
    architecture raises.

    Parameters
    ----------
    name : str
    path : str or os.PathLike
        A ``torch.save``'d state dict (e.g. from ``$TORCH_HOME/hub/checkpoints``).
    map_location : str or torch.device

    Returns
    -------
    nn.Module
    """
    import torchvision

    constructor = getattr(torchvision.models, name, None) if isinstance(name, str) else None
    if constructor is None or not callable(constructor):
        raise ValueError(f"name must be a torchvision.models constructor such as 'resnet50', got {name!r}")
    model = constructor(weights=None)
    state = torch.load(path, map_location=map_location, weights_only=True)
    if name.startswith("densenet"):
        state = remap_legacy_densenet_keys(state)
    model.load_state_dict(state)
    return model.eval()

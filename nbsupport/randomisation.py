r"""Model-parameter randomisation :cite:p:`adebayo2018sanity`: does a map depend on the weights?

Weight layers (``nn.Linear``, ``nn.Conv2d``) are re-initialised from the top of the network down
and the map of the randomised model compared with the trained one's. Two details decide what the
test measures:

* *order*: "from the top" means by distance from the output in the computation graph. In a
  residual block the shortcut's 1x1 convolution reads the block's input, so it sits at the depth
  of the block's *first* convolution, not after its second; :func:`weight_layer_depths` reads the
  depths from a ``torch.fx`` trace, and layers at one depth are randomised together.
* *BatchNorm statistics*: a re-initialised convolution feeds its BatchNorm inputs of another scale,
  and stale running statistics then scale every later pre-activation (a fixed-temperature gate
  :math:`\sigma(z/T)` hardens). :func:`recalibrate_batchnorm` re-estimates them on calibration
  images after each randomisation.

:func:`random_logit` randomises the *target* instead of the weights :cite:p:`sixt2020explanations`:
the map for the class explained against the map for a random other class.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.fx
from torch import nn

from ._validate import check_input, check_target, int_seed, integer, torch_rng
from .map_statistics import rank_correlation, ssim

__all__ = ["weight_layers", "weight_layer_depths", "recalibrate_batchnorm", "randomise_top_layers",
           "cascading_randomisation", "map_similarity", "random_logit"]

_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def weight_layers(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear`` and ``nn.Conv2d`` modules, in definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, _WEIGHT_LAYERS)]


def weight_layer_depths(model: nn.Module) -> dict[str, int]:
    """Depth of every weight layer in the computation graph: weight layers on the longest path from the input.

    The model is traced with ``torch.fx`` (weight layers are kept as leaves); the depth of a node is
    the largest depth of its inputs plus one if it is a weight layer. In a chain the depths are
    1, 2, ...; a residual block's shortcut convolution gets the depth of the block's first one.

    Parameters
    ----------
    model : nn.Module
        Traceable by ``torch.fx`` (no data-dependent control flow).

    Returns
    -------
    dict of str to int
        Qualified module name -> depth (>= 1), in definition order.

    Raises
    ------
    ValueError
        If the model cannot be traced or a weight layer is called more than once.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # fx raises many types for untraceable code
        raise ValueError(f"model cannot be traced by torch.fx ({type(err).__name__}: {err}); "
                         "use order='definition'") from err
    modules = dict(model.named_modules())
    depth: dict[torch.fx.Node, int] = {}
    layer_depth: dict[str, int] = {}
    for node in graph.nodes:
        inputs = node.all_input_nodes
        d = max((depth[i] for i in inputs), default=0)
        if node.op == "call_module" and isinstance(modules.get(node.target), _WEIGHT_LAYERS):
            if node.target in layer_depth:
                raise ValueError(f"weight layer {node.target!r} is called more than once; use order='definition'")
            d += 1
            layer_depth[node.target] = d
        depth[node] = d
    return {name: layer_depth[name] for name in weight_layers(model) if name in layer_depth}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on ``x``, in place.

    Running statistics are reset and accumulated as exact averages over the batches of ``x``
    (``momentum=None``) in training mode, without gradients; affine parameters are not touched.
    Afterwards the model is in eval mode, and with one batch its BatchNorm layers normalise by the
    mean and the unbiased variance of their inputs over ``x``.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
        Calibration inputs (held-out training images).
    batch_size : int
        Batches of this size (each contributes as an equal-weight average, as PyTorch does).

    Returns
    -------
    nn.Module
        ``model``, in eval mode.
    """
    check_input(x)
    batch_size = integer(batch_size, "batch_size", minimum=2)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for batch in x.split(batch_size):
            model(batch)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return model


def _levels(model: nn.Module, order: str) -> list[list[str]]:
    """Weight layers grouped from the top: one group per depth (graph) or per layer (definition)."""
    if order == "graph":
        depths = weight_layer_depths(model)
        return [[name for name, d in depths.items() if d == level] for level in sorted(set(depths.values()),
                                                                                     reverse=True)]
    if order == "definition":
        return [[name] for name in reversed(weight_layers(model))]
    raise ValueError(f"order must be 'graph' or 'definition', got {order!r}")


def randomise_top_layers(model: nn.Module, n_layers: int, rng=0, *, order: str = "definition",
                         calibration: torch.Tensor | None = None) -> nn.Module:
    r"""A copy of ``model`` whose top ``n_layers`` weight layers (or depth levels) are re-initialised.

    Each re-initialised layer gets weights and bias drawn from PyTorch's default initialisation
    law, uniform on :math:`[-1/\sqrt{\text{fan-in}}, 1/\sqrt{\text{fan-in}}]`, drawn from ``rng``
    (the global random state is not used or changed).
    The original is untouched.

    Parameters
    ----------
    model : nn.Module
    n_layers : int
        How many steps from the top: layers (``order="definition"``, last defined first) or depth
        levels (``order="graph"``, :func:`weight_layer_depths`; layers at one depth together).
    rng : int or torch.Generator
        An int seeds a private CPU generator; a CPU generator is used and advanced.
    order : {"definition", "graph"}
    calibration : Tensor, optional
        If given, BatchNorm statistics are re-estimated on it afterwards
        (:func:`recalibrate_batchnorm`); otherwise they are left stale.

    Returns
    -------
    nn.Module
        The copy, on the original's device, in the original's train/eval mode (eval after
        recalibration).
    """
    levels = _levels(model, order)
    n_layers = integer(n_layers, "n_layers", minimum=1)
    if n_layers > len(levels):
        raise ValueError(f"n_layers must be an int in [1, {len(levels)}] (weight layers or depth levels), "
                         f"got {n_layers!r}")
    chosen = {name for level in levels[:n_layers] for name in level}
    clone = copy.deepcopy(model)
    generator = torch_rng(rng, "cpu", "rng")
    modules = dict(clone.named_modules())
    with torch.no_grad():
        for name in weight_layers(clone):  # draws in definition order
            if name not in chosen:
                continue
            layer = modules[name]
            bound = 1.0 / math.sqrt(layer.weight[0].numel())
            for param in (layer.weight, layer.bias):
                if param is not None:
                    draw = torch.rand(param.shape, generator=generator, dtype=torch.float64)
                    param.copy_((2 * draw - 1) * bound)
    if calibration is not None:
        recalibrate_batchnorm(clone, calibration.to(next(clone.parameters()).device))
    return clone


def cascading_randomisation(model: nn.Module, x: torch.Tensor, target, attribute, draws: int = 1,
                            absolute: bool = True, *, order: str = "definition",
                            calibration: torch.Tensor | None = None, rng=0) -> torch.Tensor:
    """Cascading model-parameter randomisation :cite:p:`adebayo2018sanity`, from the top down.

    For ``k = 1 .. K`` (``K`` layers or depth levels, see :func:`randomise_top_layers`) the top
    ``k`` are re-initialised and the map compared with the trained model's by
    :func:`~nbsupport.map_statistics.rank_correlation`. A map that explains the model decorrelates
    as ``k`` grows.

    Parameters
    ----------
    model : nn.Module
        The trained network (left untouched).
    x, target :
        Images ``(N, ...)`` and their classes (an int or ``(N,)``), as ``attribute`` takes them.
    attribute : callable
        ``attribute(model, x, target)``, run on the trained and on every randomised copy.
    draws : int
        Independent randomisations, >= 1; within a draw, the top ``k`` levels share one seed
        for every ``k``.
    absolute : bool
        Compare ``|a|`` (as in the source of the test).
    order : {"definition", "graph"}
    calibration : Tensor, optional
        Recalibrate BatchNorm statistics on these images after each randomisation.
    rng : int or torch.Generator
        Gives each draw's seed; an int seeds a private CPU generator, a CPU generator is advanced.

    Returns
    -------
    Tensor, float64, shape (draws, K, N), on ``x``'s device
        Entry ``[d, k - 1, n]`` for the top ``k`` randomised in draw ``d``.
    """
    check_input(x)
    draws = integer(draws, "draws", minimum=1)
    generator = torch_rng(rng, "cpu", "rng")
    seeds = [int_seed(generator, "rng") for _ in range(draws)]
    n_levels = len(_levels(model, order))
    reference = attribute(model, x, target)
    out = torch.empty(draws, n_levels, len(x), dtype=torch.float64, device=x.device)
    for i, seed in enumerate(seeds):
        for k in range(1, n_levels + 1):
            randomised = randomise_top_layers(model, k, rng=seed, order=order, calibration=calibration)
            out[i, k - 1] = rank_correlation(reference, attribute(randomised, x, target), absolute=absolute)
    return out


def _max_normalised(a: torch.Tensor) -> torch.Tensor:
    """Each map divided by its largest absolute entry (an all-zero map stays zero)."""
    scale = a.flatten(1).abs().max(1).values
    return a / torch.where(scale > 0, scale, 1).reshape((-1,) + (1,) * (a.ndim - 1))


def _spatial_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of the channel-summed maps (N, H, W), or of flattened maps for other shapes."""
    if a.ndim == 4:
        return ssim(a.sum(1), b.sum(1))
    return ssim(a.flatten(1), b.flatten(1))


def map_similarity(a: torch.Tensor, b: torch.Tensor, similarity=None) -> torch.Tensor:
    """The similarity RandomLogit uses, of any two batches of maps: each map divided by its largest
    absolute entry, then compared.

    Beside :func:`random_logit` it gives the noise floor: the same class's maps at ``x`` and at a
    slightly perturbed ``x``, which differ only as far as the map is unstable.

    Parameters
    ----------
    a, b : Tensor, shape (N, ...)
        Maps of the same shape.
    similarity : callable, optional
        As in :func:`random_logit`; default the SSIM of the channel-summed maps for images.

    Returns
    -------
    Tensor, float64, shape (N,)
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must be tensors of the same shape (N, ...), got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}")
    similarity = _spatial_ssim if similarity is None else similarity
    if not callable(similarity):
        raise ValueError(f"similarity must be callable as similarity(a, b), got {similarity!r}")
    return similarity(_max_normalised(a), _max_normalised(b)).double()


def random_logit(model: nn.Module, x: torch.Tensor, target, attribute, similarity=None, other=None,
                 rng=0) -> torch.Tensor:
    r"""RandomLogit :cite:p:`sixt2020explanations`: the map of the target against another class's.

    A map that explains the decision for class :math:`c` should change when another class
    :math:`c' \ne c`, drawn uniformly, is explained instead; the similarity of the two maps (each
    divided by its largest absolute entry) is returned, lower meaning more class-sensitive. A map
    that ignores the class scores the similarity of a map with itself (1 for SSIM). As Quantus's
    ``RandomLogit`` :cite:p:`hedstrom2023quantus`, except that the default similarity is the 2-d
    SSIM of the image-shaped maps (Quantus computes SSIM along the flattened maps: pass
    ``similarity=lambda a, b: ssim(a.flatten(1), b.flatten(1))`` for its number).

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    attribute : callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``.
    similarity : callable, optional
        ``similarity(a, b) -> Tensor (N,)`` of two batches of maps shaped like ``x``; default
        :func:`~nbsupport.map_statistics.ssim` of the channel-summed maps for images
        ``(N, C, H, W)``, of the flattened maps otherwise.
    other : Tensor of shape (N,), optional
        The other classes, instead of drawing them (each must differ from its target).
    rng : int or torch.Generator
        Draws the other classes.

    Returns
    -------
    Tensor, float64, shape (N,), on ``x``'s device
    """
    check_input(x)
    if not callable(attribute):
        raise ValueError(f"attribute must be callable as attribute(model, x, target), got {attribute!r}")
    if similarity is not None and not callable(similarity):
        raise ValueError(f"similarity must be callable as similarity(a, b), got {similarity!r}")
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    if n_classes < 2:
        raise ValueError(f"model must have at least two outputs, got {n_classes}")
    target_idx = check_target(target, len(x), n_classes, device=x.device)
    if other is None:
        generator = torch_rng(rng, "cpu", "rng")
        shift = torch.randint(1, n_classes, (len(x),), generator=generator).to(x.device)
        other = (target_idx + shift) % n_classes
    else:
        other = check_target(other, len(x), n_classes, device=x.device, name="other")
        if bool((other == target_idx).any()):
            raise ValueError("other must differ from target for every sample")
    return map_similarity(attribute(model, x, target_idx), attribute(model, x, other), similarity)

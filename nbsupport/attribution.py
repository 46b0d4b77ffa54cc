r"""Baseline attributions and faithfulness metrics, one call shape for all of them.

Every attribution is a function ``attribute(model, x, target) -> Tensor shaped like x`` (as
Captum's ``attribute(inputs, target=...)``), so the metrics loop over methods: the vanilla
gradient and guided backpropagation live in :mod:`nbsupport.pullbacks` (they share its machinery),
gradient x input and SmoothGrad :cite:p:`smilkov2017smoothgrad` here. The metrics: deletion and
insertion curves :cite:p:`petsiuk2018rise`, infidelity and max-sensitivity :cite:p:`yeh2019fidelity`
(Captum's implementations :cite:p:`kokhlikyan2020captum`, with our own seeded perturbations), and
the model-parameter randomisation test :cite:p:`adebayo2018sanity`.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple

import numpy as np
import scipy.stats
import torch
from torch import nn

from .pullbacks import _check_input, check_target, input_gradient

__all__ = [
    "gradient_x_input",
    "smoothgrad",
    "DeletionInsertion",
    "deletion_insertion",
    "curve_auc",
    "infidelity",
    "max_sensitivity",
    "randomise_top_layers",
    "rank_correlation",
    "mean_ci",
]

Attribution = Callable[[nn.Module, torch.Tensor, object], torch.Tensor]


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def gradient_x_input(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    r"""Gradient times input, :math:`x \odot \nabla_x f_c(x)` :cite:p:`shrikumar2017learning`.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)

    Returns
    -------
    Tensor, shape of ``x``
    """
    return x * input_gradient(model, x, target)


def smoothgrad(model: nn.Module, x: torch.Tensor, target, n_samples: int = 16, noise_level: float = 0.15,
               seed: int = 0) -> torch.Tensor:
    r"""SmoothGrad :cite:p:`smilkov2017smoothgrad`: the gradient averaged over noisy copies of ``x``.

    :math:`\frac1K \sum_k \nabla_x f_c(x + \varepsilon_k)`, :math:`\varepsilon_k \sim \mathcal N(0, \sigma^2 I)`
    with :math:`\sigma` = ``noise_level`` times the range ``max(x) - min(x)`` of each sample.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    n_samples : int
        Noisy copies per input, >= 1.
    noise_level : float
        Noise standard deviation relative to each sample's value range, >= 0.
    seed : int
        Seeds a private generator: the same call gives the same result.

    Returns
    -------
    Tensor, shape of ``x``
    """
    _check_input(x)
    n_samples = _check_positive_int(n_samples, "n_samples")
    if not noise_level >= 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level!r}")
    flat = x.flatten(1)
    sigma = (noise_level * (flat.max(1).values - flat.min(1).values)).reshape(-1, *[1] * (x.ndim - 1))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        total += input_gradient(model, x + sigma * noise, target)
    return total / n_samples


# ---------------------------------------------------------------------------------------------
# Deletion and insertion
# ---------------------------------------------------------------------------------------------

class DeletionInsertion(NamedTuple):
    """Curves of :func:`deletion_insertion`.

    Attributes
    ----------
    fractions : Tensor, shape (S + 1,)
        Fraction of pixels deleted (or inserted), from 0 to 1.
    deletion, insertion : Tensor, shape (N, S + 1)
        Softmax probability of the target class along the way.
    """

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor


@torch.no_grad()
def deletion_insertion(model: nn.Module, x: torch.Tensor, target, attribution: torch.Tensor, n_steps: int = 20,
                       baseline: float = 0.0) -> DeletionInsertion:
    r"""Deletion and insertion curves :cite:p:`petsiuk2018rise` of an attribution map.

    Pixels (spatial positions; the attribution is summed over channels) are ranked by attribution,
    largest first. *Deletion* replaces the top ``k`` pixels of ``x`` by ``baseline``, *insertion*
    starts from an image filled with ``baseline`` and puts the top ``k`` pixels of ``x`` back, for
    ``k = round(j P / S)``, ``j = 0..S``. A faithful map makes the target probability drop fast under
    deletion (low area) and rise fast under insertion (high area).

    Parameters
    ----------
    model : nn.Module
        Maps ``(N, C, H, W)`` to logits.
    x : Tensor, shape (N, C, H, W)
    target : int or Tensor of shape (N,)
    attribution : Tensor, shape of ``x``
    n_steps : int
        Number ``S`` of steps, >= 1.
    baseline : float
        The value a deleted pixel takes (for Fashion-MNIST, 0 is the background).

    Returns
    -------
    DeletionInsertion
    """
    _check_input(x)
    if x.ndim != 4 or attribution.shape != x.shape:
        raise ValueError(f"x must have shape (N, C, H, W) and attribution the same shape, got {tuple(x.shape)} "
                         f"and {tuple(attribution.shape)}")
    n_steps = _check_positive_int(n_steps, "n_steps")
    n, c, h, w = x.shape
    scores = attribution.sum(1).reshape(n, h * w)
    rank = torch.empty_like(scores, dtype=torch.long)
    rank.scatter_(1, scores.argsort(dim=1, descending=True, stable=True),
                  torch.arange(h * w, device=x.device).expand(n, -1).contiguous())
    counts = [round(j * h * w / n_steps) for j in range(n_steps + 1)]
    fill = torch.full_like(x, baseline)
    deletion, insertion = [], []
    target_idx = None
    for k in counts:
        top = (rank < k).reshape(n, 1, h, w)
        for images, out in ((torch.where(top, fill, x), deletion), (torch.where(top, x, fill), insertion)):
            logits = model(images)
            if target_idx is None:
                target_idx = check_target(target, n, logits.shape[1], device=logits.device)
            out.append(logits.softmax(1).gather(1, target_idx[:, None])[:, 0])
    fractions = torch.tensor(counts, dtype=x.dtype) / (h * w)
    return DeletionInsertion(fractions, torch.stack(deletion, 1), torch.stack(insertion, 1))


def curve_auc(fractions: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """Area under each curve by the trapezoidal rule.

    Parameters
    ----------
    fractions : Tensor, shape (S,)
        Increasing abscissae.
    curves : Tensor, shape (N, S)

    Returns
    -------
    Tensor, shape (N,)
    """
    if fractions.ndim != 1 or curves.shape[-1] != len(fractions):
        raise ValueError(f"curves must end with the length of fractions {len(fractions)}, got {tuple(curves.shape)}")
    return torch.trapezoid(curves, fractions.to(curves), dim=-1)


# ---------------------------------------------------------------------------------------------
# Infidelity and max-sensitivity (Captum)
# ---------------------------------------------------------------------------------------------

def infidelity(model: nn.Module, x: torch.Tensor, target, attribution: torch.Tensor, noise_std: float = 0.1,
               n_samples: int = 16, seed: int = 0) -> torch.Tensor:
    r"""Infidelity :cite:p:`yeh2019fidelity` under Gaussian perturbations, scale-free.

    :math:`\min_\beta \E_I[(\beta I^\top a - (f_c(x) - f_c(x - I)))^2]`, :math:`I \sim \mathcal N(0,
    \sigma^2 I)`, estimated from ``n_samples`` draws by ``captum.metrics.infidelity`` with
    ``normalize=True`` (the optimal :math:`\beta` makes maps of different scales comparable). The
    target logit is :math:`f_c`. Lower is better; the value is in squared logits.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    attribution : Tensor, shape of ``x``
    noise_std : float
        :math:`\sigma > 0`.
    n_samples : int
        Perturbations per input, >= 1.
    seed : int
        Seeds the perturbations (a private generator).

    Returns
    -------
    Tensor, shape (N,)
    """
    from captum.metrics import infidelity as captum_infidelity

    _check_input(x)
    if attribution.shape != x.shape:
        raise ValueError(f"attribution must have the shape of x {tuple(x.shape)}, got {tuple(attribution.shape)}")
    if not noise_std > 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std!r}")
    n_samples = _check_positive_int(n_samples, "n_samples")
    generator = torch.Generator(device=x.device).manual_seed(seed)

    def perturb(inputs):
        noise = noise_std * torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return noise, inputs - noise

    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    target = check_target(target, len(x), n_classes, device=x.device)
    return captum_infidelity(model, perturb, x, attribution, target=target, n_perturb_samples=n_samples,
                             normalize=True)


def max_sensitivity(model: nn.Module, x: torch.Tensor, target, attribute: Attribution, radius: float = 0.02,
                    n_samples: int = 8, seed: int = 0) -> torch.Tensor:
    r"""Max-sensitivity :cite:p:`yeh2019fidelity`: the largest relative change of the map nearby.

    :math:`\max_k \|a(x + \delta_k) - a(x)\| / \|a(x)\|` over ``n_samples`` draws
    :math:`\delta_k` uniform in the :math:`L_\infty` ball of ``radius``, by
    ``captum.metrics.sensitivity_max`` (Frobenius norm). Lower is more stable.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    attribute : callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``.
    radius : float
        > 0.
    n_samples : int
        >= 1.
    seed : int
        Seeds the perturbations (a private generator).

    Returns
    -------
    Tensor, shape (N,)
    """
    from captum.metrics import sensitivity_max

    _check_input(x)
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    n_samples = _check_positive_int(n_samples, "n_samples")
    generator = torch.Generator(device=x.device).manual_seed(seed)

    def perturb(inputs, r):
        u = torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return inputs + (2 * u - 1) * r

    def explain(inputs, target):  # Captum passes and expects tuples of tensors
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (attribute(model, inputs, target),)

    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    target = check_target(target, len(x), n_classes, device=x.device)
    return sensitivity_max(explain, x, perturb_func=perturb, perturb_radius=radius, n_perturb_samples=n_samples,
                           target=target)


# ---------------------------------------------------------------------------------------------
# Model-parameter randomisation
# ---------------------------------------------------------------------------------------------

def randomise_top_layers(model: nn.Module, n_layers: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose last ``n_layers`` weight layers are re-initialised.

    The cascading model-parameter randomisation test of :cite:t:`adebayo2018sanity`: weight layers
    are the ``nn.Linear`` and ``nn.Conv2d`` modules in definition order. For a residual block that
    defines its shortcut after its second convolution (as ``small_resnet`` does) the last layers
    are the shortcut's 1x1 convolution and the head; each of the last ``n_layers`` gets its default ``reset_parameters()``, drawn
    from a private seeded generator state. BatchNorm layers are left as they are. The original is
    untouched.

    Parameters
    ----------
    model : nn.Module
    n_layers : int
        Between 1 and the number of weight layers.
    seed : int

    Returns
    -------
    nn.Module
        The copy, in the original's train/eval mode.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers must be an int in [1, {len(layers)}] (the weight layers), got {n_layers!r}")
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in [m for m in clone.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-n_layers:]:
            layer.reset_parameters()
    return clone


def rank_correlation(a: torch.Tensor, b: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """Spearman rank correlation between two maps, per sample (ties get average ranks).

    Parameters
    ----------
    a, b : Tensor, shape (N, ...)
    absolute : bool
        Correlate ``|a|`` and ``|b|`` (as in the randomisation test of :cite:t:`adebayo2018sanity`).

    Returns
    -------
    Tensor, float64, shape (N,)
        NaN for a sample whose map is constant (e.g. an all-zero gradient).
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must have the same shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = (t.detach().flatten(1).double().cpu().numpy() for t in (a, b))
    if absolute:
        a, b = np.abs(a), np.abs(b)
    ra, rb = scipy.stats.rankdata(a, axis=1), scipy.stats.rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    return torch.from_numpy((ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1)))


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval.

    Parameters
    ----------
    values : array-like, shape (n,)
        At least two finite values (independent draws, e.g. one per test image).
    level : float
        Confidence level in (0, 1).

    Returns
    -------
    mean, half_width : float
        The interval is ``mean ± half_width``.
    """
    values = np.asarray(values, dtype=float).ravel()
    if len(values) < 2 or not np.isfinite(values).all():
        raise ValueError(f"values must hold at least two finite numbers, got {len(values)} values")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    sem = values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(scipy.stats.t.ppf((1 + level) / 2, len(values) - 1) * sem)

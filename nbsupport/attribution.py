r"""Baseline attributions and faithfulness metrics, one call shape for all of them.

Every attribution is a function ``attribute(model, x, target) -> Tensor shaped like x`` (as
Captum's ``attribute(inputs, target=...)``), so the metrics loop over methods: the vanilla
gradient lives in :mod:`nbsupport.saliency` and the excitation pullback in
:mod:`nbsupport.surrogate`; guided backpropagation :cite:p:`springenberg2015striving`, gradient x
input and SmoothGrad :cite:p:`smilkov2017smoothgrad` are here. The metrics: deletion and
insertion curves :cite:p:`petsiuk2018rise`, infidelity and max-sensitivity :cite:p:`yeh2019fidelity`
(Captum's implementations :cite:p:`kokhlikyan2020captum`, with our own seeded perturbations), and
the model-parameter randomisation test :cite:p:`adebayo2018sanity`.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, NamedTuple

import numpy as np
import scipy.stats
import torch
from torch import nn

from ._validate import integer, real
from .intercept import route_calls
from .saliency import check_input, check_target, input_gradient

__all__ = [
    "guided_backprop",
    "gradient_x_input",
    "smoothgrad",
    "image_map",
    "random_map",
    "class_average_map",
    "gaussian_blur",
    "roughness",
    "pearson_rows",
    "linear_cka",
    "evaluate_methods",
    "cascading_randomisation",
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


class _GuidedReLU(torch.autograd.Function):
    """Forward ``relu``; backward ``max(grad, 0) * 1(z > 0)`` (guided backpropagation)."""

    @staticmethod
    def forward(ctx, z, inplace):
        ctx.save_for_backward(z > 0)
        if inplace:
            ctx.mark_dirty(z)
            return z.relu_()
        return torch.relu(z)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (active,) = ctx.saved_tensors
        return grad.clamp(min=0) * active, None


def guided_backprop(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    r"""Guided backpropagation :cite:p:`springenberg2015striving`, all ReLU call paths covered.

    Each ReLU passes back :math:`\max(g, 0)\,\1(z > 0)`; max-pooling keeps its usual routing.
    Unlike Captum's ``GuidedBackprop`` (which hooks ``nn.ReLU`` modules only), ReLUs called
    functionally are covered too (:func:`nbsupport.intercept.route_calls`).

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)

    Returns
    -------
    Tensor, shape of ``x``
    """
    with route_calls(model, lambda z, inplace: _GuidedReLU.apply(z, inplace)):
        return input_gradient(model, x, target)


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
    check_input(x)
    n_samples = integer(n_samples, "n_samples", minimum=1)
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


def image_map(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """The image itself as an attribution map (a baseline that knows nothing about the model).

    Parameters
    ----------
    model : nn.Module
        Ignored (kept for the common call shape).
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
        Ignored.

    Returns
    -------
    Tensor, a copy of ``x``
    """
    check_input(x)
    return x.detach().clone()


def random_map(model: nn.Module, x: torch.Tensor, target, seed: int = 0) -> torch.Tensor:
    """A random attribution map: i.i.d. standard normal entries from a private seeded generator.

    The same ``seed`` gives the same map for inputs of the same shape, so the map does not depend
    on the model, the target or the values of ``x``.

    Parameters
    ----------
    model : nn.Module
        Ignored.
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
        Ignored.
    seed : int

    Returns
    -------
    Tensor, shape, dtype and device of ``x``
    """
    check_input(x)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def class_average_map(attribute: Attribution, x_ref: torch.Tensor, y_ref: torch.Tensor) -> Attribution:
    """An input-independent attribution: the average map of the target class over a reference set.

    Returns ``fn(model, x, target)`` whose value for sample ``n`` is the mean of
    ``attribute(model, x_ref[y_ref == c], c)`` over the reference images of class ``c = target[n]``,
    whatever ``x[n]`` is. It is recomputed from ``model`` at every call (so it follows a randomised
    model), and it is the null a faithfulness metric must beat: a map that only knows where
    garments of the class usually are.

    Parameters
    ----------
    attribute : callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``.
    x_ref : Tensor, shape (M, ...)
    y_ref : Tensor, long, shape (M,)
        Classes of the reference images; every class asked for later must occur.

    Returns
    -------
    callable
        ``fn(model, x, target) -> Tensor`` shaped like ``x``, on ``x``'s device.
    """
    check_input(x_ref)
    if not isinstance(y_ref, torch.Tensor) or y_ref.shape != (len(x_ref),) or y_ref.is_floating_point():
        raise ValueError(f"y_ref must be an integer tensor of shape ({len(x_ref)},), got {y_ref!r}")

    def fn(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
        check_input(x)
        if x.shape[1:] != x_ref.shape[1:]:
            raise ValueError(f"x must have samples of shape {tuple(x_ref.shape[1:])}, got {tuple(x.shape[1:])}")
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        target_idx = check_target(target, len(x), n_classes, device=x.device)
        xr, yr = x_ref.to(device=x.device, dtype=x.dtype), y_ref.to(x.device)
        maps = {}
        for c in target_idx.unique().tolist():
            members = xr[yr == c]
            if len(members) == 0:
                raise ValueError(f"y_ref has no image of class {c}")
            maps[c] = attribute(model, members, c).mean(0)
        return torch.stack([maps[c] for c in target_idx.tolist()])

    return fn


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    r"""Gaussian blur of images, channel by channel, with mirror padding.

    The kernel is :math:`\exp(-k^2 / 2\sigma^2)`, normalised, for :math:`|k| \le` ``round(truncate *
    sigma)``, applied along both image axes; the border is padded by reflection without repeating the
    edge pixel (``scipy.ndimage.gaussian_filter`` with ``mode="mirror"``). Used as a
    deletion/insertion baseline that removes detail but keeps the overall intensity.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
    sigma : float
        Standard deviation in pixels, > 0.
    truncate : float
        Kernel half-width in standard deviations, > 0; the half-width must be smaller than H and W.

    Returns
    -------
    Tensor, shape, dtype and device of ``x``
    """
    check_input(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    sigma = real(sigma, "sigma", low=0)
    if not truncate > 0:
        raise ValueError(f"truncate must be > 0, got {truncate!r}")
    radius = int(truncate * sigma + 0.5)
    n, c, h, w = x.shape
    if radius >= min(h, w):
        raise ValueError(f"the kernel half-width {radius} must be smaller than the image ({h}x{w}); lower sigma")
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    out = x.reshape(n * c, 1, h, w)
    out = torch.nn.functional.pad(out, (radius, radius, 0, 0), mode="reflect")
    out = torch.nn.functional.conv2d(out, kernel.reshape(1, 1, 1, -1))
    out = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(out, kernel.reshape(1, 1, -1, 1))
    return out.reshape(n, c, h, w)


def roughness(maps: torch.Tensor) -> torch.Tensor:
    r"""Total variation of each map relative to its norm: lower for smoother maps.

    :math:`\sqrt{\sum (a_{i+1,j} - a_{i,j})^2 + \sum (a_{i,j+1} - a_{i,j})^2} / \|a\|_2`, summed
    over channels, per sample. Scale-free: ``roughness(c * a) == roughness(a)`` for ``c != 0``.

    Parameters
    ----------
    maps : Tensor, shape (N, C, H, W)

    Returns
    -------
    Tensor, shape (N,), dtype and device of ``maps``
        NaN for an all-zero map.
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or not maps.is_floating_point():
        raise ValueError(f"maps must be a floating tensor of shape (N, C, H, W), got "
                         f"{tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__}")
    dv = maps[..., 1:, :] - maps[..., :-1, :]
    dh = maps[..., :, 1:] - maps[..., :, :-1]
    return ((dv**2).sum((1, 2, 3)) + (dh**2).sum((1, 2, 3))).sqrt() / maps.flatten(1).norm(dim=1)


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of ``a[n]`` and ``b[n]`` for every row ``n``.

    Parameters
    ----------
    a, b : Tensor, shape (N, d)
        ``d >= 2``.

    Returns
    -------
    Tensor, shape (N,), on the inputs' device, in their (promoted floating) dtype
        NaN for a constant row.
    """
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape or a.ndim != 2 \
            or a.shape[1] < 2:
        raise ValueError(f"a and b must be tensors of the same shape (N, d) with d >= 2, got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Linear centred kernel alignment of two representations of the same samples (Kornblith et al., 2019).

    :math:`\operatorname{CKA}(X, Y) = \langle K, L \rangle_F / (\|K\|_F \|L\|_F)` with
    :math:`K = X_c X_c^\top`, :math:`L = Y_c Y_c^\top` and :math:`X_c, Y_c` the column-centred
    matrices. It lies in [0, 1], equals 1 for ``x == y`` and is invariant to orthogonal transforms
    and isotropic scaling of either representation, so gates (binary) and features (real) can be
    compared on one scale. Computed from the ``N x N`` Gram matrices in float64, so ``p`` and ``q``
    may be large.

    Parameters
    ----------
    x : Tensor, shape (N, p)
    y : Tensor, shape (N, q)
        Same samples in the same order; ``N >= 2``. Bool tensors are read as 0/1.

    Returns
    -------
    Tensor, float64, shape (), on ``x``'s device
    """
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.ndim != 2 or y.ndim != 2 \
            or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y must be 2-d tensors (N, p) and (N, q) with the same N >= 2, got "
                         f"{getattr(x, 'shape', type(x).__name__)} and {getattr(y, 'shape', type(y).__name__)}")
    x, y = x.double(), y.to(device=x.device, dtype=torch.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    k, l_ = x @ x.T, y @ y.T
    return (k * l_).sum() / (k.norm() * l_.norm())


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
                       baseline: float | torch.Tensor = 0.0) -> DeletionInsertion:
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
    baseline : float or Tensor broadcastable to ``x``
        What a deleted pixel becomes: a constant (for Fashion-MNIST 0 is the background), a blurred
        copy of ``x`` (:func:`gaussian_blur`), or the dataset's mean image of shape (C, H, W).

    Returns
    -------
    DeletionInsertion
    """
    check_input(x)
    if x.ndim != 4 or attribution.shape != x.shape:
        raise ValueError(f"x must have shape (N, C, H, W) and attribution the same shape, got {tuple(x.shape)} "
                         f"and {tuple(attribution.shape)}")
    n_steps = integer(n_steps, "n_steps", minimum=1)
    n, c, h, w = x.shape
    scores = attribution.sum(1).reshape(n, h * w)
    rank = torch.empty_like(scores, dtype=torch.long)
    rank.scatter_(1, scores.argsort(dim=1, descending=True, stable=True),
                  torch.arange(h * w, device=x.device).expand(n, -1).contiguous())
    counts = [round(j * h * w / n_steps) for j in range(n_steps + 1)]
    try:
        fill = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"baseline must be a number or a tensor broadcastable to {tuple(x.shape)}, got "
                         f"{tuple(baseline.shape) if isinstance(baseline, torch.Tensor) else baseline!r}") from err
    deletion, insertion = [], []
    target_idx = None
    for k in counts:
        top = (rank < k).reshape(n, 1, h, w)
        for images, out in ((torch.where(top, fill, x), deletion), (torch.where(top, x, fill), insertion)):
            logits = model(images)
            if target_idx is None:
                target_idx = check_target(target, n, logits.shape[1], device=logits.device)
            out.append(logits.softmax(1).gather(1, target_idx[:, None])[:, 0])
    fractions = torch.tensor(counts, dtype=x.dtype, device=x.device) / (h * w)
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

def _captum_metrics():
    """``captum.metrics``, imported on first use without tqdm's "IProgress not found" warning.

    Captum imports ``tqdm.auto``, which warns inside a Jupyter kernel without ipywidgets; its
    progress bars are never shown here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import captum.metrics
    return captum.metrics


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
    check_input(x)
    if attribution.shape != x.shape:
        raise ValueError(f"attribution must have the shape of x {tuple(x.shape)}, got {tuple(attribution.shape)}")
    if not noise_std > 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std!r}")
    n_samples = integer(n_samples, "n_samples", minimum=1)
    generator = torch.Generator(device=x.device).manual_seed(seed)

    def perturb(inputs):
        noise = noise_std * torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return noise, inputs - noise

    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    target = check_target(target, len(x), n_classes, device=x.device)
    return _captum_metrics().infidelity(model, perturb, x, attribution, target=target,
                                        n_perturb_samples=n_samples, normalize=True)


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
    check_input(x)
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    n_samples = integer(n_samples, "n_samples", minimum=1)
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
    return _captum_metrics().sensitivity_max(explain, x, perturb_func=perturb, perturb_radius=radius,
                                             n_perturb_samples=n_samples, target=target)


# ---------------------------------------------------------------------------------------------
# Model-parameter randomisation
# ---------------------------------------------------------------------------------------------

def randomise_top_layers(model: nn.Module, n_layers: int, seed: int = 0) -> nn.Module:
    r"""A copy of ``model`` whose last ``n_layers`` weight layers are re-initialised.

    The cascading model-parameter randomisation test of :cite:t:`adebayo2018sanity`: weight layers
    are the ``nn.Linear`` and ``nn.Conv2d`` modules in definition order. For a residual block that
    defines its shortcut after its second convolution (as ``small_resnet`` does) the last layers
    are the shortcut's 1x1 convolution and the head. Each of the last ``n_layers`` gets weights and
    bias drawn from PyTorch's default initialisation law, uniform on
    :math:`[-1/\sqrt{\text{fan-in}}, 1/\sqrt{\text{fan-in}}]`, from a private CPU
    ``torch.Generator`` seeded with ``seed`` (the global random state, CPU or CUDA, is not used or
    changed). BatchNorm layers are left as they are. The original is untouched.

    Parameters
    ----------
    model : nn.Module
    n_layers : int
        Between 1 and the number of weight layers.
    seed : int

    Returns
    -------
    nn.Module
        The copy, on the original's device, in its train/eval mode.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers must be an int in [1, {len(layers)}] (the weight layers), got {n_layers!r}")
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [m for m in clone.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-n_layers:]:
            bound = 1.0 / math.sqrt(layer.weight[0].numel())
            for param in (layer.weight, layer.bias):
                if param is not None:
                    draw = torch.rand(param.shape, generator=generator, dtype=torch.float64)
                    param.copy_((2 * draw - 1) * bound)
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
    Tensor, float64, shape (N,), on ``a``'s device
        NaN for a sample whose map is constant (e.g. an all-zero gradient).
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must have the same shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    device = a.device
    a, b = (t.detach().flatten(1).double().cpu().numpy() for t in (a, b))
    if absolute:
        a, b = np.abs(a), np.abs(b)
    ra, rb = scipy.stats.rankdata(a, axis=1), scipy.stats.rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    return torch.from_numpy((ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1))).to(device)


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


# ---------------------------------------------------------------------------------------------
# The metrics table and the cascading randomisation test
# ---------------------------------------------------------------------------------------------

def evaluate_methods(model: nn.Module, x: torch.Tensor, target, methods: dict[str, Attribution], *,
                     baselines: dict | None = None, n_steps: int = 10, noise_std: float = 0.1,
                     infidelity_samples: int = 16, radius: float = 0.02, sensitivity_samples: int = 4,
                     randomise_layers: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Every faithfulness metric of every attribution method, per sample.

    For each method ``a = attribute(model, x, target)`` and, per deletion/insertion baseline ``b``,
    ``"deletion AUC (b)"`` and ``"insertion AUC (b)"`` (:func:`deletion_insertion`,
    :func:`curve_auc`); ``"infidelity"`` (:func:`infidelity`, ``noise_std``, ``infidelity_samples``
    draws); ``"max-sensitivity"`` (:func:`max_sensitivity`, ``radius``, ``sensitivity_samples``
    draws); ``"randomisation Spearman"``: :func:`rank_correlation` of ``a`` with the same method's
    map on :func:`randomise_top_layers` ``(model, randomise_layers, seed)``. Every method sees the
    same perturbations (the same ``seed``), so differences between methods are paired.

    Parameters
    ----------
    model : nn.Module
        In eval mode.
    x : Tensor, shape (N, C, H, W)
    target : int or Tensor of shape (N,)
    methods : dict of str to callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``.
    baselines : dict of str to (float or Tensor), optional
        Deletion/insertion baselines by name; default ``{"zero": 0.0}``.
    n_steps, infidelity_samples, sensitivity_samples, randomise_layers : int
    noise_std, radius : float
    seed : int

    Returns
    -------
    dict
        ``results[method][metric]``: Tensor of shape (N,), on ``x``'s device.
    """
    check_input(x)
    if not isinstance(methods, dict) or not methods or not all(callable(f) for f in methods.values()):
        raise ValueError("methods must be a non-empty dict of name -> attribute(model, x, target)")
    baselines = {"zero": 0.0} if baselines is None else baselines
    if not isinstance(baselines, dict) or not baselines:
        raise ValueError(f"baselines must be a non-empty dict of name -> value, got {baselines!r}")
    randomised = randomise_top_layers(model, randomise_layers, seed=seed).eval()
    results = {}
    for name, attribute in methods.items():
        a = attribute(model, x, target)
        row = {}
        for base_name, base in baselines.items():
            curves = deletion_insertion(model, x, target, a, n_steps=n_steps, baseline=base)
            row[f"deletion AUC ({base_name})"] = curve_auc(curves.fractions, curves.deletion)
            row[f"insertion AUC ({base_name})"] = curve_auc(curves.fractions, curves.insertion)
        row["infidelity"] = infidelity(model, x, target, a, noise_std=noise_std, n_samples=infidelity_samples,
                                       seed=seed).to(x.device)
        row["max-sensitivity"] = max_sensitivity(model, x, target, attribute, radius=radius,
                                                 n_samples=sensitivity_samples, seed=seed).to(x.device)
        row["randomisation Spearman"] = rank_correlation(a, attribute(randomised, x, target))
        results[name] = row
    return results


def cascading_randomisation(model: nn.Module, x: torch.Tensor, target, attribute: Attribution,
                            seeds=(0,), absolute: bool = True) -> torch.Tensor:
    """Cascading model-parameter randomisation :cite:p:`adebayo2018sanity`, from the top layer down.

    For ``k = 1 .. L`` (``L`` weight layers, see :func:`randomise_top_layers`) the last ``k`` layers
    are re-initialised and the map compared with the trained model's by :func:`rank_correlation`.
    A map that explains the model decorrelates as ``k`` grows.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    attribute : callable
    seeds : sequence of int
        One randomisation draw per seed.
    absolute : bool
        Compare ``|a|`` (as in the source of the test).

    Returns
    -------
    Tensor, float64, shape (len(seeds), L, N), on ``x``'s device
        Entry ``[s, k - 1, n]`` for the top ``k`` layers randomised with seed ``seeds[s]``.
    """
    check_input(x)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    reference = attribute(model, x, target)
    out = torch.empty(len(seeds), n_layers, len(x), dtype=torch.float64, device=x.device)
    for i, seed in enumerate(seeds):
        for k in range(1, n_layers + 1):
            randomised = randomise_top_layers(model, k, seed=seed)
            out[i, k - 1] = rank_correlation(reference, attribute(randomised, x, target), absolute=absolute)
    return out

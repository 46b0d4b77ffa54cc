r"""Faithfulness metrics of attribution maps: does the map predict what the model does?

Every metric takes the model, inputs ``x (N, C, H, W)``, target classes and a map shaped like ``x``
(or the attribution function, for the metrics that re-run it), and returns one number per image,
so that differences between methods are paired by image. Two kinds of map enter:

* a *gradient-type* map :math:`v` (the gradient, the excitation pullback, SmoothGrad) predicts the
  effect of replacing ``x`` by a baseline ``b`` only through the *contribution*
  :math:`v \odot (x - b)` (first-order Taylor); :func:`contribution` forms it, and the
  deletion/insertion and ROAD curves rank pixels by it;
* sensitivity metrics (infidelity, max-sensitivity, randomisation) use the raw map.

Metrics: deletion and insertion curves :cite:p:`petsiuk2018rise` (:func:`deletion_insertion`,
:func:`curve_auc`); ROAD, removal with noisy linear imputation :cite:p:`rong2022consistent`
(:func:`road`, :func:`linear_imputation`); infidelity and max-sensitivity :cite:p:`yeh2019fidelity`
(Captum's implementations :cite:p:`kokhlikyan2020captum` in :func:`infidelity` and
:func:`max_sensitivity`, our own :func:`explained_share`, the share of the output change a map
explains); faithfulness correlation :cite:p:`bhatt2020evaluating`, the correlation between the map's
sum over a random pixel subset and the output change when that subset is removed
(:func:`faithfulness_correlation`); and the source's own test :cite:p:`satkiewicz2025tapping`, whether the class whose
pullback has the largest dot product with the input is the predicted class (:func:`dot_scores`).
:func:`evaluate_methods` runs them all for a dict of methods.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch
from torch import nn

from ._validate import check_input, check_target, int_seed, integer, real, torch_rng
from .attribution import Attribution
from .map_statistics import rank_correlation
from .randomisation import randomise_top_layers

__all__ = [
    "contribution",
    "DeletionInsertion",
    "deletion_insertion",
    "curve_auc",
    "linear_imputation",
    "RoadCurves",
    "road",
    "infidelity",
    "explained_share",
    "max_sensitivity",
    "faithfulness_correlation",
    "dot_scores",
    "MAP_TYPES",
    "evaluate_methods",
]


def _n_classes(model, x):
    with torch.no_grad():
        return model(x[:1]).shape[1]


def _baseline_like(baseline, x):
    try:
        return torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    except (RuntimeError, TypeError) as err:
        shape = tuple(baseline.shape) if isinstance(baseline, torch.Tensor) else baseline
        raise ValueError(f"baseline must be a number or a tensor broadcastable to {tuple(x.shape)}, "
                         f"got {shape!r}") from err


def contribution(attribution: torch.Tensor, x: torch.Tensor, baseline=0.0) -> torch.Tensor:
    r"""The first-order contribution :math:`v \odot (x - b)` of a gradient-type map.

    Replacing ``x`` by the baseline ``b`` changes a locally linear model by
    :math:`\langle v, x - b \rangle`; pixel ``i`` contributes :math:`v_i (x_i - b_i)`. Removal
    metrics must rank pixels by this, not by :math:`v` (a large :math:`v_i` on a pixel equal to its
    baseline predicts no effect of removing it).

    Parameters
    ----------
    attribution : Tensor, shape (N, ...)
    x : Tensor, shape of ``attribution``
    baseline : float or Tensor broadcastable to ``x``

    Returns
    -------
    Tensor, shape of ``x``
    """
    check_input(x)
    if not isinstance(attribution, torch.Tensor) or attribution.shape != x.shape:
        raise ValueError(f"attribution must have the shape of x {tuple(x.shape)}, got "
                         f"{getattr(attribution, 'shape', type(attribution).__name__)}")
    return attribution * (x - _baseline_like(baseline, x))


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


def _pixel_rank(attribution: torch.Tensor) -> torch.Tensor:
    """Rank of every spatial position by the channel-summed map, 0 = largest; shape (N, H * W)."""
    n, _, h, w = attribution.shape
    scores = attribution.sum(1).reshape(n, h * w)
    rank = torch.empty_like(scores, dtype=torch.long)
    rank.scatter_(1, scores.argsort(dim=1, descending=True, stable=True),
                  torch.arange(h * w, device=scores.device).expand(n, -1).contiguous())
    return rank


def _check_map(x, attribution):
    check_input(x)
    if x.ndim != 4 or not isinstance(attribution, torch.Tensor) or attribution.shape != x.shape:
        raise ValueError(f"x must have shape (N, C, H, W) and attribution the same shape, got {tuple(x.shape)} "
                         f"and {getattr(attribution, 'shape', type(attribution).__name__)}")


@torch.no_grad()
def deletion_insertion(model: nn.Module, x: torch.Tensor, target, attribution: torch.Tensor, n_steps: int = 20,
                       baseline: float | torch.Tensor = 0.0) -> DeletionInsertion:
    r"""Deletion and insertion curves :cite:p:`petsiuk2018rise` of an attribution map.

    Pixels (spatial positions; the map is summed over channels) are ranked by the map, largest
    first. *Deletion* replaces the top ``k`` pixels of ``x`` by ``baseline``, *insertion* starts
    from the baseline image and puts the top ``k`` pixels of ``x`` back, for ``k = round(j P / S)``,
    ``j = 0..S``. A faithful ranking makes the target probability drop fast under deletion (low
    area) and rise fast under insertion (high area). Pass a gradient-type map as its
    :func:`contribution` for the same baseline.

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
        copy of ``x`` (:func:`~nbsupport.map_statistics.gaussian_blur`), or a mean image (C, H, W).

    Returns
    -------
    DeletionInsertion
    """
    _check_map(x, attribution)
    n_steps = integer(n_steps, "n_steps", minimum=1)
    n, c, h, w = x.shape
    rank = _pixel_rank(attribution)
    counts = [round(j * h * w / n_steps) for j in range(n_steps + 1)]
    fill = _baseline_like(baseline, x)
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
# ROAD: removal with noisy linear imputation
# ---------------------------------------------------------------------------------------------

def _neighbour_kernel(dtype, device):
    # ROAD's weights: 1/6 for the four direct neighbours, 1/12 for the four diagonal ones
    k = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=dtype,
                     device=device)
    return k.reshape(1, 1, 3, 3)


def linear_imputation(x: torch.Tensor, removed: torch.Tensor, max_iter: int = 400, tol: float = 1e-10
                      ) -> torch.Tensor:
    r"""Fill removed pixels with the harmonic interpolation of ROAD :cite:p:`rong2022consistent`.

    Every removed pixel equals the weighted mean of its neighbours inside the image (weight 1/6 for
    the four direct, 1/12 for the four diagonal ones), kept pixels stay: the discrete Dirichlet
    problem :math:`\sum_j w_{ij} (u_i - u_j) = 0` for removed :math:`i`. Its matrix is the graph
    Laplacian restricted to the removed pixels, symmetric positive definite as long as one pixel of
    each image is kept; it is solved by conjugate gradients, batched over images and channels.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
    removed : bool Tensor, shape (N, 1, H, W) or (N, C, H, W)
        Pixels to impute; each image must keep at least one pixel.
    max_iter : int
        Conjugate-gradient iterations at most.
    tol : float
        Stop when every residual norm is below ``tol`` times its right-hand side's.

    Returns
    -------
    Tensor, shape of ``x``
        ``x`` on kept pixels, the interpolation on removed ones.
    """
    check_input(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool or removed.ndim != 4 \
            or removed.shape[0] != x.shape[0] or removed.shape[2:] != x.shape[2:]:
        raise ValueError(f"removed must be a bool tensor of shape (N, 1 or C, H, W) matching x {tuple(x.shape)}")
    n, c, h, w = x.shape
    mask = removed.expand(n, c, h, w).reshape(n * c, 1, h, w).to(x.dtype)
    if bool((mask.flatten(1).sum(1) == h * w).any()):
        raise ValueError("removed must keep at least one pixel of every image")
    u0 = x.reshape(n * c, 1, h, w)
    kernel = _neighbour_kernel(x.dtype, x.device)
    conv = lambda v: torch.nn.functional.conv2d(v, kernel, padding=1)  # noqa: E731
    degree = conv(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))  # sum of in-image weights

    def apply(v):  # the Laplacian restricted to removed pixels (v is zero on kept ones)
        return mask * (degree * v - conv(v))

    b = mask * conv((1 - mask) * u0)
    v = torch.zeros_like(u0)  # start from zero: the removed values cannot leak in
    r = b.clone()
    p = r.clone()
    rr = (r * r).flatten(1).sum(1)
    stop = (tol * b.flatten(1).norm(dim=1)) ** 2
    for _ in range(integer(max_iter, "max_iter", minimum=1)):
        if bool((rr <= stop).all()):
            break
        ap = apply(p)
        alpha = rr / (p * ap).flatten(1).sum(1).clamp_min(torch.finfo(x.dtype).tiny)
        v = v + alpha.reshape(-1, 1, 1, 1) * p
        r = r - alpha.reshape(-1, 1, 1, 1) * ap
        rr_new = (r * r).flatten(1).sum(1)
        p = r + (rr_new / rr.clamp_min(torch.finfo(x.dtype).tiny)).reshape(-1, 1, 1, 1) * p
        rr = rr_new
    out = (1 - mask) * u0 + mask * v
    return out.reshape(n, c, h, w)


class RoadCurves(NamedTuple):
    """Curves of :func:`road`.

    Attributes
    ----------
    fractions : Tensor, shape (F,)
        Fractions of pixels removed.
    morf, lerf : Tensor, shape (N, F)
        Target probability with the most (MoRF) or least (LeRF) relevant pixels removed.
    score : Tensor, shape (N,)
        Mean over fractions of ``lerf - morf``: higher when the map's top pixels matter more than
        its bottom ones (the symmetric score; 0 for a ranking unrelated to the model).
    """

    fractions: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor
    score: torch.Tensor


@torch.no_grad()
def road(model: nn.Module, x: torch.Tensor, target, attribution: torch.Tensor,
         fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), noise_std: float = 0.01, rng=0,
         tol: float = 1e-8) -> RoadCurves:
    r"""ROAD :cite:p:`rong2022consistent`: remove pixels by noisy linear imputation, both orders.

    Removing pixels by a constant lets the model see *where* pixels were removed (the mask's shape
    leaks the ranking, and the image leaves the data distribution). ROAD replaces removed pixels by
    :func:`linear_imputation` plus Gaussian noise of ``noise_std`` so the filled values carry no
    trace of the removed ones, and removes the most relevant pixels first (MoRF: the probability
    should drop fast) and the least relevant first (LeRF: it should stay).

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, C, H, W)
    target : int or Tensor of shape (N,)
    attribution : Tensor, shape of ``x``
        Pixels are ranked by its channel sum, largest first.
    fractions : sequence of float
        In (0, 1).
    noise_std : float
        >= 0.
    rng : int or torch.Generator
        Seeds the imputation noise (the same noise for every map: paired comparisons).
    tol : float
        Relative residual at which :func:`linear_imputation` stops; an error of that relative size
        in the filled values is harmless once it is far below ``noise_std``.

    Returns
    -------
    RoadCurves
    """
    _check_map(x, attribution)
    fractions = [real(f, "fractions", low=0, high=1, high_inclusive=False) for f in fractions]
    if not fractions:
        raise ValueError("fractions must hold at least one fraction")
    noise_std = real(noise_std, "noise_std", low=0, low_inclusive=True)
    tol = real(tol, "tol", low=0)
    n, c, h, w = x.shape
    target_idx = check_target(target, n, _n_classes(model, x), device=x.device)
    rank = _pixel_rank(attribution).reshape(n, 1, h, w)
    generator = torch_rng(rng, x.device, "rng")
    noise = [noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
             for _ in fractions]
    # one batched imputation for every fraction and both orders: (F, 2, N, C, H, W)
    masks = []
    for f in fractions:
        k = round(f * h * w)
        masks += [rank < k, rank >= h * w - k]
    removed = torch.cat(masks)  # (2F N, 1, H, W)
    filled = linear_imputation(x.repeat(2 * len(fractions), 1, 1, 1), removed, tol=tol)
    eps = torch.cat([e for e in noise for _ in range(2)])
    filled = torch.where(removed, filled + eps, x.repeat(2 * len(fractions), 1, 1, 1))
    probs = model(filled).softmax(1).gather(1, target_idx.repeat(2 * len(fractions))[:, None])[:, 0]
    probs = probs.reshape(len(fractions), 2, n)
    curves = {"morf": list(probs[:, 0]), "lerf": list(probs[:, 1])}
    morf, lerf = torch.stack(curves["morf"], 1), torch.stack(curves["lerf"], 1)
    return RoadCurves(torch.tensor(fractions, dtype=x.dtype, device=x.device), morf, lerf, (lerf - morf).mean(1))


# ---------------------------------------------------------------------------------------------
# Infidelity, explained share and max-sensitivity
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
               n_samples: int = 16, rng=0) -> torch.Tensor:
    r"""Infidelity :cite:p:`yeh2019fidelity` under Gaussian perturbations, scale-free.

    :math:`\min_\beta \E_I[(\beta I^\top a - (f_c(x) - f_c(x - I)))^2]`, :math:`I \sim \mathcal N(0,
    \sigma^2 I)`, estimated from ``n_samples`` draws by ``captum.metrics.infidelity`` with
    ``normalize=True`` (the optimal :math:`\beta` makes maps of different scales comparable). The
    target logit is :math:`f_c`. Lower is better; the value is in squared logits. See
    :func:`explained_share` for the same quantity as a share of :math:`\E[\Delta^2]`.

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
    rng : int or torch.Generator
        An int seeds a private generator; a generator on ``x``'s device is advanced.

    Returns
    -------
    Tensor, shape (N,): the infidelity of each input.
    """
    check_input(x)
    if attribution.shape != x.shape:
        raise ValueError(f"attribution must have the shape of x {tuple(x.shape)}, got {tuple(attribution.shape)}")
    noise_std = real(noise_std, "noise_std", low=0)
    n_samples = integer(n_samples, "n_samples", minimum=1)
    generator = torch_rng(rng, x.device, "rng")

    def perturb(inputs):
        noise = noise_std * torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return noise, inputs - noise

    target = check_target(target, len(x), _n_classes(model, x), device=x.device)
    return _captum_metrics().infidelity(model, perturb, x, attribution, target=target,
                                        n_perturb_samples=n_samples, normalize=True)


@torch.no_grad()
def explained_share(model: nn.Module, x: torch.Tensor, target, attributions: dict[str, torch.Tensor],
                    noise_std: float = 0.1, n_samples: int = 32, perturbation: str = "gaussian",
                    square: int = 4, rng=0) -> dict[str, torch.Tensor]:
    r"""Share of the output change :math:`\Delta = f_c(x) - f_c(x - I)` that :math:`I^\top a` explains.

    With the optimal scale :math:`\beta`, infidelity :cite:p:`yeh2019fidelity` is
    :math:`\E[\Delta^2] (1 - \rho^2)` where :math:`\rho^2 = \E[I^\top a\,\Delta]^2 /
    (\E[(I^\top a)^2] \E[\Delta^2])`; :math:`\rho^2 \in [0, 1]` is the share returned (1: the map
    predicts every perturbation's effect up to scale; 0: none). Unlike infidelity it is comparable
    across noise levels. All maps see the same perturbations.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, C, H, W)
    target : int or Tensor of shape (N,)
    attributions : dict of str to Tensor
        Maps shaped like ``x``.
    noise_std : float
        ``"gaussian"``: :math:`I \sim \mathcal N(0, \sigma^2)` per pixel, :math:`\sigma > 0`.
    n_samples : int
        Perturbations per image, >= 2.
    perturbation : {"gaussian", "square"}
        ``"square"``: :math:`I = x \odot 1_S` removes (sets to 0) a random ``square x square`` patch
        :math:`S`, as in :cite:t:`yeh2019fidelity`.
    square : int
        Side of the removed patch.
    rng : int or torch.Generator

    Returns
    -------
    dict of str to Tensor of shape (N,)
    """
    check_input(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not isinstance(attributions, dict) or not attributions:
        raise ValueError("attributions must be a non-empty dict of name -> map")
    for name, a in attributions.items():
        if not isinstance(a, torch.Tensor) or a.shape != x.shape:
            raise ValueError(f"attributions[{name!r}] must have the shape of x {tuple(x.shape)}")
    n_samples = integer(n_samples, "n_samples", minimum=2)
    if perturbation not in ("gaussian", "square"):
        raise ValueError(f"perturbation must be 'gaussian' or 'square', got {perturbation!r}")
    noise_std = real(noise_std, "noise_std", low=0)
    n, c, h, w = x.shape
    square = integer(square, "square", minimum=1)
    if perturbation == "square" and square > min(h, w):
        raise ValueError(f"square must be at most {min(h, w)}, got {square}")
    generator = torch_rng(rng, x.device, "rng")
    target_idx = check_target(target, n, _n_classes(model, x), device=x.device)
    f0 = model(x).gather(1, target_idx[:, None])[:, 0]
    sums = {name: torch.zeros(3, n, dtype=torch.float64, device=x.device) for name in attributions}
    delta2 = torch.zeros(n, dtype=torch.float64, device=x.device)
    for _ in range(n_samples):
        if perturbation == "gaussian":
            pert = noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        else:
            top = torch.randint(0, h - square + 1, (n,), generator=generator, device=x.device)
            left = torch.randint(0, w - square + 1, (n,), generator=generator, device=x.device)
            rows = torch.arange(h, device=x.device)[None, :, None]
            cols = torch.arange(w, device=x.device)[None, None, :]
            inside = ((rows >= top[:, None, None]) & (rows < (top + square)[:, None, None])
                      & (cols >= left[:, None, None]) & (cols < (left + square)[:, None, None]))
            pert = x * inside[:, None].to(x.dtype)
        delta = (f0 - model(x - pert).gather(1, target_idx[:, None])[:, 0]).double()
        delta2 += delta**2
        for name, a in attributions.items():
            proj = (pert * a).flatten(1).sum(1).double()
            sums[name] += torch.stack([proj * delta, proj**2, delta**2])
    out = {}
    for name, (cross, proj2, d2) in sums.items():
        out[name] = (cross**2 / (proj2 * d2)).nan_to_num(0.0).to(x.dtype)
    return out


def max_sensitivity(model: nn.Module, x: torch.Tensor, target, attribute: Attribution, radius: float = 0.02,
                    n_samples: int = 8, rng=0) -> torch.Tensor:
    r"""Max-sensitivity :cite:p:`yeh2019fidelity`: the largest relative change of the map nearby.

    :math:`\max_k \|a(x + \delta_k) - a(x)\| / \|a(x)\|` over ``n_samples`` draws
    :math:`\delta_k` uniform in the :math:`L_\infty` ball of ``radius``, by
    ``captum.metrics.sensitivity_max`` (Frobenius norm). Lower is more stable.

    Parameters
    ----------
    model, x, target :
        As for :func:`infidelity`.
    attribute : callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``, re-run on every draw.
    radius : float
        Half-width of the uniform perturbation, > 0.
    n_samples : int
        Draws per input, >= 1.
    rng : int or torch.Generator
        An int seeds a private generator; a generator on ``x``'s device is advanced.

    Returns
    -------
    Tensor, shape (N,): the largest relative change per input.
    """
    check_input(x)
    radius = real(radius, "radius", low=0)
    n_samples = integer(n_samples, "n_samples", minimum=1)
    generator = torch_rng(rng, x.device, "rng")

    def perturb(inputs, r):
        u = torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return inputs + (2 * u - 1) * r

    def explain(inputs, target):  # Captum passes and expects tuples of tensors
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (attribute(model, inputs, target),)

    target = check_target(target, len(x), _n_classes(model, x), device=x.device)
    return _captum_metrics().sensitivity_max(explain, x, perturb_func=perturb, perturb_radius=radius,
                                             n_perturb_samples=n_samples, target=target)


@torch.no_grad()
def faithfulness_correlation(model: nn.Module, x: torch.Tensor, target, attributions: dict[str, torch.Tensor],
                             subset_size: int, n_subsets: int = 32, baseline=0.0, rng=0,
                             subsets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    r"""Faithfulness correlation :cite:p:`bhatt2020evaluating`, per image, for several maps at once.

    For random subsets :math:`S_r` of ``subset_size`` input entries (``r = 1..R``), the Pearson
    correlation over ``r`` between :math:`\sum_{i \in S_r} a_i` and :math:`f_c(x) - f_c(x_{S_r
    \leftarrow b})`, the drop of the target logit when the entries of :math:`S_r` are replaced by
    the baseline. A map that predicts the effect of removing any subset scores 1. The sum is the
    first-order prediction of the drop only for a contribution map, so pass a gradient-type map as
    its :func:`contribution` for the same baseline. As Quantus's ``FaithfulnessCorrelation``
    :cite:p:`hedstrom2023quantus` (logits, entries of all channels drawn alike, subsets drawn
    independently per image); every map sees the same subsets, so differences are paired.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    target : int or Tensor of shape (N,)
    attributions : dict of str to Tensor
        Maps shaped like ``x``.
    subset_size : int
        Entries per subset, between 1 and the number of entries of one input minus 1.
    n_subsets : int
        Subsets ``R`` per image, >= 3.
    baseline : float or Tensor broadcastable to ``x``
        What a removed entry becomes.
    rng : int or torch.Generator
        Draws the subsets.
    subsets : Tensor of shape (N, R, subset_size), optional
        Flat entry indices of the subsets, instead of drawing them (then ``subset_size`` and
        ``n_subsets`` must match its shape).

    Returns
    -------
    dict of str to Tensor of shape (N,)
        The correlation per image, 0 where the map's sums or the drops do not vary.
    """
    check_input(x)
    if not isinstance(attributions, dict) or not attributions:
        raise ValueError("attributions must be a non-empty dict of name -> map")
    for name, a in attributions.items():
        if not isinstance(a, torch.Tensor) or a.shape != x.shape:
            raise ValueError(f"attributions[{name!r}] must have the shape of x {tuple(x.shape)}")
    n, d = len(x), x[0].numel()
    subset_size = integer(subset_size, "subset_size", minimum=1)
    if subset_size >= d:
        raise ValueError(f"subset_size must be below the {d} entries of one input, got {subset_size}")
    n_subsets = integer(n_subsets, "n_subsets", minimum=3)
    if subsets is None:
        generator = torch_rng(rng, x.device, "rng")
        keys = torch.rand((n, n_subsets, d), generator=generator, device=x.device)
        subsets = keys.argsort(-1)[..., :subset_size]
    elif not isinstance(subsets, torch.Tensor) or subsets.dtype != torch.long \
            or subsets.shape != (n, n_subsets, subset_size) or bool((subsets < 0).any() | (subsets >= d).any()):
        raise ValueError(f"subsets must be a long tensor of shape {(n, n_subsets, subset_size)} with entries "
                         f"in [0, {d}), got {getattr(subsets, 'shape', type(subsets).__name__)}")
    subsets = subsets.to(x.device)
    target_idx = check_target(target, n, _n_classes(model, x), device=x.device)
    flat = x.reshape(n, 1, d).expand(n, n_subsets, d).clone()
    fill = _baseline_like(baseline, x).reshape(n, 1, d).expand(n, n_subsets, d)
    flat.scatter_(2, subsets, fill.gather(2, subsets))
    f0 = model(x).gather(1, target_idx[:, None])
    logits = model(flat.reshape((n * n_subsets,) + tuple(x.shape[1:]))).reshape(n, n_subsets, -1)
    drop = (f0 - logits.gather(2, target_idx[:, None, None].expand(n, n_subsets, 1))[..., 0]).double()
    out = {}
    for name, a in attributions.items():
        sums = a.reshape(n, 1, d).expand(n, n_subsets, d).gather(2, subsets).sum(2).double()
        sc, dc = sums - sums.mean(1, keepdim=True), drop - drop.mean(1, keepdim=True)
        out[name] = ((sc * dc).sum(1) / (sc.norm(dim=1) * dc.norm(dim=1))).nan_to_num(0.0).to(x.dtype)
    return out


def dot_scores(model: nn.Module, x: torch.Tensor, attribute: Attribution, n_classes: int | None = None
               ) -> torch.Tensor:
    r"""The source's decision test: :math:`\langle x, v_c(x) \rangle` for every class ``c``.

    The source reads the network as a linear model :math:`f_c(x) \approx \langle v_c(x), x
    \rangle` in its pullbacks :cite:p:`satkiewicz2025tapping`; if so, the class with the largest
    dot product should be the predicted one. (For the gradient of a bias-free ReLU network the dot
    product is the logit itself; biases and BatchNorm shifts make it differ.)

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape (N, ...)
    attribute : callable
        ``attribute(model, x, target)``.
    n_classes : int, optional
        Default: the model's number of outputs.

    Returns
    -------
    Tensor, shape (N, n_classes)
        Entry ``[n, c] = <x[n], attribute(model, x, c)[n]>``.
    """
    check_input(x)
    n_classes = _n_classes(model, x) if n_classes is None else integer(n_classes, "n_classes", minimum=1)
    return torch.stack([(x * attribute(model, x, c)).flatten(1).sum(1) for c in range(n_classes)], 1)


# ---------------------------------------------------------------------------------------------
# The metrics table
# ---------------------------------------------------------------------------------------------

#: The ways a method's map enters the removal metrics. ``"gradient"`` maps are scored as their
#: :func:`contribution` for each baseline, ``"path"`` maps (integrated gradients) are recomputed
#: from each baseline (``attribute(model, x, target, baseline=b)``), ``"score"`` maps (random,
#: gradient x input) rank pixels as they are.
MAP_TYPES = ("gradient", "path", "score")


def evaluate_methods(model: nn.Module, x: torch.Tensor, target, methods: dict[str, Attribution], *,
                     map_types: dict[str, str] | None = None, baselines: dict | None = None,
                     n_steps: int = 10, road_fractions=None, road_tol: float = 1e-8, noise_std: float = 0.1,
                     infidelity_samples: int = 16, radius: float = 0.02, sensitivity_samples: int = 4,
                     randomise_layers: int = 2, order: str = "definition",
                     calibration: torch.Tensor | None = None, sensitivity_for=None,
                     rng=0) -> dict[str, dict[str, torch.Tensor]]:
    """Every faithfulness metric of every attribution method, per sample.

    For each method, raw map ``a = attribute(model, x, target)``:

    * per deletion/insertion baseline ``b``: ``"deletion AUC (b)"`` and ``"insertion AUC (b)"``
      (:func:`deletion_insertion`, :func:`curve_auc`) of the map's score for that baseline
      (``map_types``);
    * ``"ROAD"``: the symmetric :func:`road` score of ``a`` times ``x`` for gradient-type maps (the
      contribution against a black image), of ``a`` otherwise (only when ``road_fractions`` is given);
    * ``"infidelity"`` (:func:`infidelity`, raw ``a``; skipped when ``infidelity_samples`` is 0);
      ``"max-sensitivity"``
      (:func:`max_sensitivity`); ``"randomisation Spearman"``: :func:`~nbsupport.map_statistics.rank_correlation` of ``a``
      with the same method's map on :func:`~nbsupport.randomisation.randomise_top_layers`
      ``(model, randomise_layers, rng, order, calibration)``.

    Every method sees the same perturbations (one seed drawn from ``rng``), so differences are
    paired.

    Parameters
    ----------
    model : nn.Module
        In eval mode.
    x : Tensor, shape (N, C, H, W)
    target : int or Tensor of shape (N,)
    methods : dict of str to callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``.
    map_types : dict of str to str, optional
        Method name -> one of :data:`MAP_TYPES`; default ``"gradient"`` for every method.
    baselines : dict of str to (float or Tensor), optional
        Deletion/insertion baselines by name; default ``{"zero": 0.0}``.
    n_steps, infidelity_samples, sensitivity_samples, randomise_layers : int
    road_fractions : sequence of float, optional
    road_tol : float
        The imputation tolerance of :func:`road`.
    noise_std, radius : float
    order : {"definition", "graph"}
        Which layers count as the top ones (:func:`~nbsupport.randomisation.randomise_top_layers`).
    calibration : Tensor, optional
        Images to recalibrate BatchNorm statistics after randomisation.
    sensitivity_for : collection of str, optional
        Methods for which max-sensitivity and the randomisation statistic are computed (they
        re-run the method several times); default every method.
    rng : int or torch.Generator
        An int is the seed of every metric's private generator; a generator gives one such seed
        (and is advanced).

    Returns
    -------
    dict
        ``results[method][metric]``: Tensor of shape (N,), on ``x``'s device.
    """
    check_input(x)
    if not isinstance(methods, dict) or not methods or not all(callable(f) for f in methods.values()):
        raise ValueError("methods must be a non-empty dict of name -> attribute(model, x, target)")
    map_types = {} if map_types is None else dict(map_types)
    unknown = {k: v for k, v in map_types.items() if k not in methods or v not in MAP_TYPES}
    if unknown:
        raise ValueError(f"map_types must map method names to one of {MAP_TYPES}, got {unknown!r}")
    baselines = {"zero": 0.0} if baselines is None else baselines
    if not isinstance(baselines, dict) or not baselines:
        raise ValueError(f"baselines must be a non-empty dict of name -> value, got {baselines!r}")
    seed = int_seed(rng, "rng")
    randomised = randomise_top_layers(model, randomise_layers, rng=seed, order=order,
                                      calibration=calibration).eval()
    results = {}
    for name, attribute in methods.items():
        kind = map_types.get(name, "gradient")
        a = attribute(model, x, target)
        row = {}
        for base_name, base in baselines.items():
            if kind == "gradient":
                score = contribution(a, x, base)
            elif kind == "path":
                score = attribute(model, x, target, baseline=base)
            else:
                score = a
            curves = deletion_insertion(model, x, target, score, n_steps=n_steps, baseline=base)
            row[f"deletion AUC ({base_name})"] = curve_auc(curves.fractions, curves.deletion)
            row[f"insertion AUC ({base_name})"] = curve_auc(curves.fractions, curves.insertion)
        if road_fractions is not None:
            score = contribution(a, x, 0.0) if kind == "gradient" else a
            row["ROAD"] = road(model, x, target, score, fractions=road_fractions, rng=seed, tol=road_tol).score
        if infidelity_samples != 0:
            row["infidelity"] = infidelity(model, x, target, a, noise_std=noise_std, n_samples=infidelity_samples,
                                           rng=seed).to(x.device)
        if sensitivity_for is not None and name not in sensitivity_for:
            results[name] = row
            continue
        row["max-sensitivity"] = max_sensitivity(model, x, target, attribute, radius=radius,
                                                 n_samples=sensitivity_samples, rng=seed).to(x.device)
        row["randomisation Spearman"] = rank_correlation(a, attribute(randomised, x, target))
        results[name] = row
    return results

r"""Image operations and statistics of attribution maps: blur, roughness, correlations, CKA.

:func:`gaussian_blur` makes a deletion baseline; :func:`roughness` measures how speckled a map is;
:func:`rank_correlation` (Spearman, the randomisation test's statistic :cite:p:`adebayo2018sanity`),
:func:`pearson_rows` and :func:`linear_cka` :cite:p:`kornblith2019similarity` compare maps or
representations sample by sample; :func:`ssim` (structural similarity, the RandomLogit test's
statistic :cite:p:`sixt2020explanations`) compares two maps of one image.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
import torch

from ._validate import check_input, integer, real
from .covariance import centred_gram

__all__ = ["gaussian_blur", "roughness", "pearson_rows", "linear_cka", "rank_correlation", "ssim"]


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
    r"""The L2 norm of each map's finite differences relative to its norm: lower for smoother maps.

    :math:`\sqrt{\sum (a_{i+1,j} - a_{i,j})^2 + \sum (a_{i,j+1} - a_{i,j})^2} / \|a\|_2`, summed
    over channels, per sample: the L2 norm of the discrete gradient (a Sobolev seminorm), not the
    total variation (which sums absolute differences); squaring weights large jumps (speckle) more
    than total variation would. Scale-free: ``roughness(c * a) == roughness(a)`` for ``c != 0``.

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
    matrices (formed as :func:`~nbsupport.covariance.centred_gram` of :math:`X X^\top` and
    :math:`Y Y^\top`). It lies in [0, 1], equals 1 for ``x == y`` and is invariant to orthogonal transforms
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
    k, l_ = centred_gram(x @ x.T), centred_gram(y @ y.T)
    return (k * l_).sum() / (k.norm() * l_.norm())


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


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7, data_range=None) -> torch.Tensor:
    r"""Mean structural similarity (Wang et al., 2004) of ``a[n]`` and ``b[n]``, per sample.

    The local statistics are means over every ``win_size``-wide window lying inside the array
    (uniform weights, sample variances with ``1 / (w - 1)``), :math:`K_1 = 0.01, K_2 = 0.03`, and
    the local index :math:`\frac{(2 \mu_a \mu_b + C_1)(2 \sigma_{ab} + C_2)}{(\mu_a^2 + \mu_b^2 +
    C_1)(\sigma_a^2 + \sigma_b^2 + C_2)}`, :math:`C_k = (K_k R)^2`, averaged over the windows:
    ``skimage.metrics.structural_similarity`` with its defaults. The windows span every axis after
    the first: 2-d windows for maps ``(N, H, W)``, 1-d ones for flattened maps ``(N, d)`` (what
    Quantus's RandomLogit compares :cite:p:`hedstrom2023quantus`).

    Parameters
    ----------
    a, b : Tensor, shape (N, d) or (N, H, W)
        Every axis after the first at least ``win_size`` long.
    win_size : int
        Odd, >= 3.
    data_range : float, optional
        :math:`R`; default, per sample, the range of ``a[n]`` and ``b[n]`` together (as Quantus),
        so the index does not change when both maps are scaled together.

    Returns
    -------
    Tensor, float64, shape (N,), on ``a``'s device
        1 for identical non-constant maps; 1 also for two equal constant maps.
    """
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
            or a.ndim not in (2, 3) or not a.is_floating_point() or not b.is_floating_point():
        raise ValueError(f"a and b must be floating tensors of one shape (N, d) or (N, H, W), got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}")
    win_size = integer(win_size, "win_size", minimum=3)
    if win_size % 2 == 0 or min(a.shape[1:]) < win_size:
        raise ValueError(f"win_size must be odd and at most {min(a.shape[1:])}, got {win_size}")
    a, b = a.double(), b.to(device=a.device, dtype=torch.float64)
    n, spatial = len(a), a.ndim - 1
    if data_range is None:
        both = torch.cat([a.flatten(1), b.flatten(1)], 1)
        r = both.max(1).values - both.min(1).values
    else:
        r = torch.full((n,), real(data_range, "data_range", low=0.0), dtype=torch.float64, device=a.device)
    r = r.reshape((n,) + (1,) * spatial)
    pool = torch.nn.functional.avg_pool1d if spatial == 1 else torch.nn.functional.avg_pool2d

    def mean(t):  # the mean over every window inside the array
        return pool(t[:, None], win_size, stride=1)[:, 0]

    ua, ub = mean(a), mean(b)
    scale = win_size**spatial / (win_size**spatial - 1)
    va, vb = scale * (mean(a * a) - ua * ua), scale * (mean(b * b) - ub * ub)
    vab = scale * (mean(a * b) - ua * ub)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    index = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
    return torch.where(r.flatten() == 0, 1.0, index.flatten(1).mean(1))  # equal constants

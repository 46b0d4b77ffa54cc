r"""Signal propagation through random networks at initialisation.

For a fully connected network with weights :math:`W^{(l)}_{ij} \sim \mathcal{N}(0, C_W / n_{l-1})`
and biases :math:`b^{(l)}_i \sim \mathcal{N}(0, C_b)`, the preactivations of two inputs
:math:`\alpha, \beta` are, at infinite width, jointly Gaussian, independent across neurons, with the
kernel :math:`G^{(l)}_{\alpha\beta} = \E[z^{(l)}_{i;\alpha} z^{(l)}_{i;\beta}]`
:cite:p:`roberts2022principles,vanishing_covariance_blog`:

.. math::

    G^{(1)} = C_b + C_W G^{(0)}, \qquad
    G^{(l+1)} = C_b + C_W \, \E_{(u, v) \sim \mathcal{N}(0, G^{(l)})}[\sigma(u) \sigma(v)],

with :math:`G^{(0)}_{\alpha\beta} = x_\alpha \cdot x_\beta / n_0`. For a linear network this is
:math:`G^{(l)} = C_W^l G^{(0)}` (zero biases); for the ReLU the expectation is the arc-cosine kernel
:cite:p:`cho2009kernel`, critical at :math:`C_W = 2` :cite:p:`he2015delving`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ._validate import integer, real, real_tensor, torch_rng

__all__ = ["ACTIVATIONS", "SAMPLERS", "CRITICAL_A", "kernel_recursion", "relu_expectation",
           "relu_correlation_map", "relu_coactivation", "empirical_kernels", "preactivations",
           "preactivation_moments", "linear_kernels_wishart", "kernel_correlation", "kernel_summary", "KernelSummary",
           "kernel_ratio_moments", "kernel_log_ratio_moments", "excess_kurtosis_theory",
           "excess_kurtosis_estimate", "excess_kurtosis_from_moments", "gradient_norms",
           "gradient_norm_theory", "fit_decay", "DecayFit", "fit_next_order", "NextOrderFit"]

#: Activations with a closed-form kernel map.
ACTIVATIONS = ("linear", "relu")

#: How :func:`empirical_kernels` and :func:`preactivations` draw a layer: from its exact Gaussian law
#: given the previous layer (``"conditional"``, fast), through a Gaussian weight matrix
#: (``"gaussian"``), or through a weight matrix of random signs :math:`\pm\sqrt{C_W / n}` and biases
#: :math:`\pm\sqrt{C_b}` (``"rademacher"``, same mean and variance, not Gaussian).
SAMPLERS = ("conditional", "gaussian", "rademacher")


def _check_common(depth, C_W, C_b, activation) -> tuple[int, float, float]:
    """Validated ``depth`` (int >= 0), ``C_W`` and ``C_b`` (finite floats >= 0) and ``activation``.

    Python, NumPy and 0-d tensor scalars are accepted; booleans are refused (``nbsupport._validate``)."""
    depth = integer(depth, "depth", minimum=0)
    C_W = real(C_W, "C_W", low=0.0, low_inclusive=True)
    C_b = real(C_b, "C_b", low=0.0, low_inclusive=True)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return depth, C_W, C_b


def relu_expectation(kernel: torch.Tensor) -> torch.Tensor:
    r"""The arc-cosine map :math:`\E[\relu(u)\relu(v)]` for :math:`(u, v) \sim \mathcal{N}(0, K)`, entrywise.

    .. math::

        \E[\relu(u_\alpha) \relu(u_\beta)] = \frac{\sqrt{K_{\alpha\alpha} K_{\beta\beta}}}{2\pi}
        \left(\sin\theta + (\pi - \theta)\cos\theta\right), \quad
        \theta = \arccos \frac{K_{\alpha\beta}}{\sqrt{K_{\alpha\alpha} K_{\beta\beta}}},

    with :math:`\theta` computed as ``atan2(sqrt(max(0, K_aa K_bb - K_ab^2)), K_ab)``: no NaN when
    rounding pushes the correlation past 1 (``arccos`` would return NaN there). Near
    :math:`\theta = 0` the map is flat, so the digits lost in :math:`\theta` do not reach the result.

    Parameters
    ----------
    kernel : Tensor, shape (n, n)
        Symmetric positive semi-definite.

    Returns
    -------
    Tensor, shape (n, n)
    """
    if not (isinstance(kernel, torch.Tensor) and kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1]):
        raise ValueError(f"kernel must be a square tensor, got shape {tuple(getattr(kernel, 'shape', ()))}")
    diag = torch.diagonal(kernel)
    if bool((diag < 0).any()) or not bool(torch.isfinite(kernel).all()):
        raise ValueError("kernel must be finite with a non-negative diagonal")
    products = torch.outer(diag, diag)
    norms = torch.sqrt(products)
    theta = torch.atan2(torch.sqrt(torch.clamp(products - kernel**2, min=0)), kernel)
    return norms / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))


def relu_correlation_map(c: torch.Tensor) -> torch.Tensor:
    r"""Correlation after a ReLU layer at criticality (:math:`C_W = 2`, :math:`C_b = 0`).

    :math:`c' = \frac{1}{\pi}\left(\sqrt{1 - c^2} + (\pi - \arccos c)\, c\right)`; its fixed point
    is :math:`c^* = 1`, approached from every :math:`c \in [-1, 1)`.

    Parameters
    ----------
    c : Tensor
        Correlations in [-1, 1].
    """
    c = c.to(torch.float64) if isinstance(c, torch.Tensor) and not c.is_complex() else real_tensor(c, "c")
    if not bool(((c >= -1 - 1e-12) & (c <= 1 + 1e-12)).all()):  # also rejects NaN
        raise ValueError("c must lie in [-1, 1]")
    c = c.clamp(-1, 1)  # rounding can push a correlation of 1 just past it
    theta = torch.atan2(torch.sqrt(torch.clamp(1 - c**2, min=0)), c)
    return (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / math.pi


def kernel_recursion(G0: torch.Tensor, depth: int, C_W: float, C_b: float = 0.0,
                     activation: str = "linear") -> torch.Tensor:
    r"""Infinite-width preactivation kernels :math:`G^{(0)}, \dots, G^{(\text{depth})}`.

    Parameters
    ----------
    G0 : Tensor, shape (n, n)
        The inputs' kernel :math:`x_\alpha \cdot x_\beta / n_0` (symmetric); converted to float64.
    depth : int
        Number of layers, >= 0.
    C_W, C_b : float
        Weight and bias variances, >= 0.
    activation : {"linear", "relu"}

    Returns
    -------
    Tensor, float64, shape (depth + 1, n, n)
        Entry 0 is ``G0``; entry 1 is ``C_b + C_W G0``; entry ``l + 1`` is
        ``C_b + C_W E[σ(u)σ(v)]`` under entry ``l``.
    """
    depth, C_W, C_b = _check_common(depth, C_W, C_b, activation)
    if not (isinstance(G0, torch.Tensor) and G0.ndim == 2 and G0.shape[0] == G0.shape[1]):
        raise ValueError(f"G0 must be a square (n, n) tensor, got shape {tuple(getattr(G0, 'shape', ()))}")
    G0 = G0.to(torch.float64)
    if not bool(torch.isfinite(G0).all()) or not torch.allclose(G0, G0.T, rtol=1e-10, atol=1e-12):
        raise ValueError("G0 must be finite and symmetric")
    kernels = [G0]
    for layer in range(depth):
        previous = kernels[-1]
        if layer > 0 and activation == "relu":
            previous = relu_expectation(previous)
        kernels.append(C_b + C_W * previous)
    return torch.stack(kernels)


def _networks(x: torch.Tensor, depth: int, width: int, C_W: float, C_b: float, activation: str,
              n_networks: int, generator: torch.Generator, sampler: str = "conditional"):
    r"""Yield the preactivations (n_networks, n_inputs, width) of layers 1..depth of random networks.

    ``sampler="conditional"`` draws each layer from its exact conditional law instead of through a
    weight matrix: given the previous activations :math:`h` (n_inputs x fan_in), the columns of
    :math:`z = h W^\top + b` are independent :math:`\mathcal{N}(0, C_b + C_W h h^\top / \text{fan\_in})`,
    so one draws ``width x n_inputs`` normals instead of ``width x fan_in``. Same distribution,
    far fewer random numbers, but the independence of neurons is built in. ``"gaussian"`` and
    ``"rademacher"`` draw weight matrices (needed to backpropagate, or to measure that independence).
    """
    h = x.to(torch.float64).unsqueeze(0).expand(n_networks, -1, -1)
    n_inputs = h.shape[1]
    options = dict(generator=generator, dtype=torch.float64, device=x.device)
    for layer in range(depth):
        fan_in = h.shape[2]
        if sampler == "conditional":
            cov = C_b + C_W * torch.bmm(h, h.transpose(1, 2)) / fan_in
            values, vectors = torch.linalg.eigh(cov)
            factor = vectors * values.clamp(min=0).sqrt().unsqueeze(1)  # cov = factor factor^T
            z = torch.bmm(factor, torch.randn(n_networks, n_inputs, width, **options))
        else:
            if sampler == "gaussian":
                w = torch.randn(n_networks, fan_in, width, **options)
                b = torch.randn(n_networks, 1, width, **options)
            else:
                w = torch.randint(0, 2, (n_networks, fan_in, width), **options) * 2 - 1
                b = torch.randint(0, 2, (n_networks, 1, width), **options) * 2 - 1
            z = torch.bmm(h, w * math.sqrt(C_W / fan_in)) + b * math.sqrt(C_b)
        yield z
        h = torch.relu(z) if activation == "relu" else z


def _check_mc(x, width, n_networks, sampler="conditional", rng=0):
    """Validated Monte Carlo arguments: ``width`` and ``n_networks`` as ints, and the generator."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not (isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] >= 1):
        raise ValueError(f"x must be a tensor of shape (n_inputs, n_0), got {tuple(getattr(x, 'shape', ()))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    width, n_networks = _check_width(width), integer(n_networks, "n_networks", minimum=1)
    return width, n_networks, torch_rng(rng, x.device)


def empirical_kernels(x: torch.Tensor, depth: int, width: int, C_W: float, C_b: float = 0.0,
                      activation: str = "linear", *, n_networks: int = 100, rng=0,
                      per_network: bool = False, sampler: str = "conditional") -> torch.Tensor:
    r"""Monte Carlo kernels :math:`\frac{1}{n}\sum_i z^{(l)}_{i;\alpha} z^{(l)}_{i;\beta}` of random networks.

    All ``n_networks`` networks run at once. By default each layer is drawn from its exact Gaussian
    law given the previous one (:math:`z \mid h \sim \mathcal{N}(0, C_b + C_W h h^\top / n)` per
    neuron), which needs ``width x n_inputs`` random numbers per layer and network instead of a
    ``width x fan_in`` weight matrix.

    Parameters
    ----------
    x : Tensor, shape (n_inputs, n_0)
    depth : int
        Number of layers, >= 0.
    width : int
        Width of every layer.
    C_W, C_b : float
        Weight and bias variances.
    activation : {"linear", "relu"}
    n_networks : int
        Number of independent networks (keyword only, as every option after ``activation``).
    rng : int, torch.Generator or numpy.random.Generator, default 0
        Source of the weights: an int seed (a fresh generator on ``x``'s device), a torch generator
        on that device (advanced), or a numpy generator (one seed drawn from it). Never the
        global RNG.
    per_network : bool
        Return every network's kernels instead of their mean.
    sampler : {"conditional", "gaussian", "rademacher"}
        How layers are drawn (see ``SAMPLERS``).

    Returns
    -------
    Tensor, float64, on ``x``'s device
        Shape (depth + 1, n_inputs, n_inputs), or (n_networks, depth + 1, n_inputs, n_inputs)
        with ``per_network``. Entry 0 is :math:`x x^\top / n_0`.
    """
    depth, C_W, C_b = _check_common(depth, C_W, C_b, activation)
    width, n_networks, generator = _check_mc(x, width, n_networks, sampler, rng)
    x = x.to(torch.float64)
    g0 = (x @ x.T / x.shape[1]).expand(n_networks, -1, -1)
    draws = _networks(x, depth, width, C_W, C_b, activation, n_networks, generator, sampler)
    layers = [g0] + [torch.bmm(z, z.transpose(1, 2)) / width for z in draws]
    kernels = torch.stack(layers, dim=1)
    return kernels if per_network else kernels.mean(0)


def preactivations(x: torch.Tensor, depth: int, width: int, C_W: float, C_b: float = 0.0,
                   activation: str = "linear", *, n_networks: int = 100, rng=0,
                   sampler: str = "conditional") -> torch.Tensor:
    """The preactivations of every layer of ``n_networks`` random networks.

    Parameters
    ----------
    x, depth, width, C_W, C_b, activation, n_networks, rng, sampler
        As in :func:`empirical_kernels`.

    Returns
    -------
    Tensor, float64, on ``x``'s device, shape (depth, n_networks, n_inputs, width)
    """
    depth, C_W, C_b = _check_common(depth, C_W, C_b, activation)
    width, n_networks, generator = _check_mc(x, width, n_networks, sampler, rng)
    layers = list(_networks(x, depth, width, C_W, C_b, activation, n_networks, generator, sampler))
    if not layers:
        return torch.zeros(0, n_networks, len(x), width, dtype=torch.float64, device=x.device)
    return torch.stack(layers)


def preactivation_moments(x: torch.Tensor, depth: int, width: int, C_W: float, C_b: float = 0.0,
                          activation: str = "linear", *, n_networks: int = 100, rng=0,
                          orders=(2, 4), sampler: str = "conditional") -> torch.Tensor:
    r"""Per-network means over neurons of :math:`(z^{(l)}_{i;\alpha})^k`, layer by layer.

    The same networks as :func:`preactivations` with the same ``rng`` (the same draws), but only
    the moments are kept, so memory is ``depth x n_networks x n_inputs`` per order instead of
    ``x width``: deep and wide networks fit. Input to :func:`excess_kurtosis_from_moments`.

    Parameters
    ----------
    x, depth, width, C_W, C_b, activation, n_networks, rng, sampler
        As in :func:`empirical_kernels`.
    orders : sequence of int
        The powers :math:`k \ge 1`.

    Returns
    -------
    Tensor, float64, on ``x``'s device, shape (len(orders), depth, n_networks, n_inputs)
    """
    depth, C_W, C_b = _check_common(depth, C_W, C_b, activation)
    width, n_networks, generator = _check_mc(x, width, n_networks, sampler, rng)
    orders = [integer(k, "orders", minimum=1) for k in orders]
    if not orders:
        raise ValueError("orders must hold at least one power")
    out = torch.zeros(len(orders), depth, n_networks, len(x), dtype=torch.float64, device=x.device)
    for layer, z in enumerate(_networks(x, depth, width, C_W, C_b, activation, n_networks,
                                        generator, sampler)):
        for j, k in enumerate(orders):
            out[j, layer] = (z**k).mean(-1)
    return out


def linear_kernels_wishart(G0: torch.Tensor, depth: int, width: int, C_W: float = 1.0, *,
                           n_networks: int = 100, rng=0) -> torch.Tensor:
    r"""Per-network kernels of zero-bias linear networks, drawn exactly as Wishart products.

    Given layer :math:`l - 1`, one network's empirical kernel of :math:`p` inputs is
    :math:`K^{(l)} = \frac{C_W}{n} L S L^\top` with :math:`L L^\top = K^{(l-1)}` (Cholesky) and
    :math:`S \sim \mathrm{Wishart}_p(n, I)`, drawn by the Bartlett decomposition (a lower
    triangle of standard normals below a diagonal of :math:`\sqrt{\chi^2_{n - i}}`). The law is
    the same as :func:`empirical_kernels` with ``per_network=True`` for a linear network, at a
    cost of :math:`p \times p` per layer and network instead of :math:`n \times p`.

    Parameters
    ----------
    G0 : Tensor, shape (p, p)
        The inputs' kernel, symmetric positive definite; converted to float64.
    depth : int
        Number of layers, >= 0.
    width : int
        Neurons per layer, >= p (a full-rank Wishart draw).
    C_W : float
        Weight variance, >= 0.
    n_networks : int
        Independent networks, >= 1.
    rng : int, torch.Generator or numpy.random.Generator
        As in :func:`empirical_kernels`.

    Returns
    -------
    Tensor, float64, shape (depth + 1, n_networks, p, p)
        Entry 0 is ``G0`` for every network.
    """
    depth, C_W, _ = _check_common(depth, C_W, 0.0, "linear")
    if not (isinstance(G0, torch.Tensor) and G0.ndim == 2 and G0.shape[0] == G0.shape[1]):
        raise ValueError(f"G0 must be a square (p, p) tensor, got shape {tuple(getattr(G0, 'shape', ()))}")
    G0 = G0.to(torch.float64)
    p = G0.shape[0]
    width = integer(width, "width", minimum=max(p, 1))
    n_networks = integer(n_networks, "n_networks", minimum=1)
    if not torch.allclose(G0, G0.T, rtol=1e-10, atol=1e-12) or torch.linalg.cholesky_ex(G0).info:
        raise ValueError("G0 must be symmetric positive definite")
    generator = torch_rng(rng, G0.device)
    kernel = G0.expand(n_networks, p, p).clone()
    kernels = [kernel]
    dof = width - torch.arange(p, dtype=torch.float64, device=G0.device)
    lower = torch.tril(torch.ones(p, p, dtype=torch.bool, device=G0.device), -1)
    # the chi-square diagonal from a numpy generator seeded by this one (torch's gamma
    # sampler takes no generator), so the draw depends on ``rng`` alone
    chi2_rng = np.random.default_rng(
        int(torch.randint(0, 2**62, (1,), generator=generator, device=G0.device)))
    for _ in range(depth):
        A = torch.randn(n_networks, p, p, dtype=torch.float64, device=G0.device,
                        generator=generator) * lower
        chi2 = torch.as_tensor(chi2_rng.chisquare(dof.cpu().numpy(), (n_networks, p)),
                               dtype=torch.float64, device=G0.device)
        A = A + torch.diag_embed(chi2.sqrt())
        L = torch.linalg.cholesky(kernel)
        LA = L @ A
        kernel = C_W / width * LA @ LA.transpose(-1, -2)
        kernels.append(kernel)
    return torch.stack(kernels)


def kernel_correlation(kernels: torch.Tensor) -> torch.Tensor:
    r"""Correlations :math:`c_{\alpha\beta} = G_{\alpha\beta} / \sqrt{G_{\alpha\alpha} G_{\beta\beta}}`.

    Parameters
    ----------
    kernels : Tensor, shape (..., n, n)
        Kernels with a positive diagonal (any leading batch dimensions, e.g. layers or networks).

    Returns
    -------
    Tensor, shape (..., n, n)
        Same dtype and device; the diagonal is 1.
    """
    if not (isinstance(kernels, torch.Tensor) and kernels.ndim >= 2 and kernels.shape[-1] == kernels.shape[-2]):
        raise ValueError(f"kernels must be a tensor of shape (..., n, n), got {tuple(getattr(kernels, 'shape', ()))}")
    diag = torch.diagonal(kernels, dim1=-2, dim2=-1)
    if not bool((diag > 0).all()):
        raise ValueError("kernels must have a positive diagonal")
    scale = diag.sqrt()
    return kernels / (scale.unsqueeze(-1) * scale.unsqueeze(-2))


class KernelSummary(NamedTuple):
    """What :func:`kernel_summary` returns; every field has shape (depth + 1,)."""

    mean_variance: torch.Tensor
    """Mean of the diagonal :math:`G^{(l)}_{\\alpha\\alpha}` over inputs."""
    mean_correlation: torch.Tensor
    """Mean correlation over the ordered pairs of distinct inputs."""
    min_correlation: torch.Tensor
    """Smallest correlation over the pairs of distinct inputs."""


def kernel_summary(x: torch.Tensor, depth: int, C_W: float, C_b: float = 0.0,
                   activation: str = "linear") -> KernelSummary:
    r"""Mean variance and the mean and smallest pairwise correlation of the kernels of ``x``, per layer.

    The infinite-width kernels :math:`G^{(0)}, \dots, G^{(\text{depth})}` of :func:`kernel_recursion`
    for :math:`G^{(0)} = x x^\top / n_0`, summarised by their diagonal and their correlations
    (:func:`kernel_correlation`) over the pairs :math:`\alpha \ne \beta`.

    Parameters
    ----------
    x : Tensor, shape (n_inputs, n_0)
        At least two inputs, none of them zero.
    depth : int
    C_W, C_b : float
    activation : {"linear", "relu"}
        Default ``"linear"``, as in :func:`kernel_recursion` and :func:`empirical_kernels`.

    Returns
    -------
    KernelSummary
        Fields of shape (depth + 1,), float64, on ``x``'s device; entry ``l`` for layer ``l``.
    """
    depth, C_W, C_b = _check_common(depth, C_W, C_b, activation)
    if not (isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[0] >= 2 and x.shape[1] >= 1):
        raise ValueError(f"x must be a tensor of shape (n_inputs >= 2, n_0), got {tuple(getattr(x, 'shape', ()))}")
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()) or bool((x.norm(dim=1) == 0).any()):
        raise ValueError("x must be finite with no zero row")
    kernels = kernel_recursion(x @ x.T / x.shape[1], depth, C_W, C_b, activation)
    corr = kernel_correlation(kernels)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    pairs = corr[:, off]  # (depth + 1, n (n - 1))
    return KernelSummary(torch.diagonal(kernels, dim1=1, dim2=2).mean(1), pairs.mean(1), pairs.min(1).values)


def _check_width(width) -> int:
    return integer(width, "width", minimum=1)


def kernel_ratio_moments(depth: int, width: int, order: int) -> torch.Tensor:
    r"""Exact moments of one network's kernel over its mean, for a deep linear Gaussian network.

    For one input, zero biases and any :math:`C_W`, the layer-:math:`l` kernel of one network of
    width :math:`n` is :math:`K^{(l)} = G^{(l)} R_l` with :math:`R_l = \prod_{k=1}^{l} \chi^2_{n,k} / n`,
    a product of independent scaled chi-squares (given layer :math:`l-1`, the :math:`n`
    preactivations of layer :math:`l` are independent :math:`\mathcal{N}(0, C_W K^{(l-1)})`). Hence

    .. math::

        \E[R_l^k] = \Big(\prod_{j=0}^{k-1} \big(1 + \tfrac{2j}{n}\big)\Big)^{l},

    and the relative mean-square deviation of one network's kernel is
    :math:`\E[(R_l - 1)^2] = (1 + 2/n)^l - 1`, which is :math:`\approx 2l/n` only for :math:`l \ll n`.

    Parameters
    ----------
    depth : int
        Last layer, >= 0.
    width : int
        Width :math:`n` of every hidden layer, >= 1.
    order : int
        The moment :math:`k`, >= 0.

    Returns
    -------
    Tensor, float64, shape (depth + 1,)
        Entry ``l`` is :math:`\E[R_l^k]` (entry 0 is 1).
    """
    depth, _, _ = _check_common(depth, 1.0, 0.0, "linear")
    width = _check_width(width)
    order = integer(order, "order", minimum=0)
    per_layer = math.prod(1 + 2 * j / width for j in range(order))
    return per_layer ** torch.arange(depth + 1, dtype=torch.float64)


def kernel_log_ratio_moments(depth: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact mean and variance of :math:`\log R_l`, one linear network's kernel over its mean.

    With :math:`R_l = \prod_{k=1}^{l} \chi^2_{n,k} / n` as in :func:`kernel_ratio_moments`,
    :math:`\log R_l` is a sum of :math:`l` independent :math:`\log(\chi^2_n / n)`, so

    .. math::

        \E[\log R_l] = l\,\big(\psi(n/2) - \log(n/2)\big), \qquad
        \Var[\log R_l] = l\,\psi'(n/2),

    with :math:`\psi` the digamma function. Unlike :math:`R_l` itself, :math:`\log R_l` has light
    tails, so sample moments over a few hundred networks estimate these well at any depth.

    Parameters
    ----------
    depth : int
        Last layer, >= 0.
    width : int
        Width :math:`n`, >= 1.

    Returns
    -------
    mean, variance : Tensor, float64, shape (depth + 1,)
        Entry ``l`` for layer ``l`` (entry 0 is 0).
    """
    depth, _, _ = _check_common(depth, 1.0, 0.0, "linear")
    width = _check_width(width)
    half = torch.tensor(width / 2, dtype=torch.float64)
    layers = torch.arange(depth + 1, dtype=torch.float64)
    return layers * (torch.special.digamma(half) - half.log()), layers * torch.special.polygamma(1, half)


def excess_kurtosis_theory(depth: int, width: int, activation: str = "linear") -> torch.Tensor:
    r"""Excess kurtosis of a preactivation of layers :math:`1, \dots, \text{depth}` for one input.

    Zero biases; linear at any :math:`C_W`, ReLU at :math:`C_W = 2` (the ratio does not depend on
    :math:`C_W`). Given layer :math:`l`, :math:`z^{(l+1)}_i` is Gaussian with the random variance
    :math:`v = \frac{C_W}{n}\sum_j \sigma(z^{(l)}_j)^2`; propagating :math:`\E[v^2]` gives exactly
    :math:`3[(1 + 2/n)^{l-1} - 1]` (linear) and :math:`3[(1 + 5/n)^{l-1} - 1]` (ReLU)
    :cite:p:`roberts2022principles`.

    Returns
    -------
    Tensor, float64, shape (depth,)
        Entry ``l - 1`` for layer ``l``.
    """
    depth, _, _ = _check_common(depth, 1.0, 0.0, activation)
    width = _check_width(width)
    factor = 1 + (2 if activation == "linear" else 5) / width
    layers = torch.arange(depth, dtype=torch.float64)
    return 3 * (factor**layers - 1)


def excess_kurtosis_estimate(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Excess kurtosis of preactivations pooled over neurons, with a standard error over networks.

    The neurons of one network share its random variance, so they are not independent draws; the
    networks are. See :func:`excess_kurtosis_from_moments`, which this calls with the per-network
    means of :math:`z^2` and :math:`z^4` over neurons.

    Parameters
    ----------
    z : Tensor, shape (..., n_networks, m)
        Preactivations (zero mean by symmetry); ``m`` values per network, at least 2 networks.

    Returns
    -------
    estimate, stderr : Tensor, shape (...)
        Same dtype and device as ``z``.
    """
    if not (isinstance(z, torch.Tensor) and z.ndim >= 2 and z.shape[-2] >= 2 and z.shape[-1] >= 1):
        raise ValueError(f"z must be a tensor of shape (..., n_networks >= 2, m), got {tuple(getattr(z, 'shape', ()))}")
    return excess_kurtosis_from_moments((z**2).mean(-1), (z**4).mean(-1))


def excess_kurtosis_from_moments(m2: torch.Tensor, m4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Excess kurtosis :math:`A / B^2 - 3` from per-network moments, delta-method error over networks.

    With :math:`b_k, a_k` the means of :math:`z^2` and :math:`z^4` over the neurons of network
    :math:`k` and :math:`B, A` their means over networks, the standard error comes from the
    delta method on the sample covariance of :math:`(a_k, b_k)` over networks, gradient
    :math:`(1/B^2, -2A/B^3)`.

    Parameters
    ----------
    m2, m4 : Tensor, shape (..., n_networks)
        Per-network means of :math:`z^2` and :math:`z^4` (e.g. from :func:`preactivation_moments`),
        at least 2 networks.

    Returns
    -------
    estimate, stderr : Tensor, shape (...)
    """
    if not (isinstance(m2, torch.Tensor) and isinstance(m4, torch.Tensor) and m2.shape == m4.shape
            and m2.ndim >= 1 and m2.shape[-1] >= 2):
        raise ValueError("m2 and m4 must be tensors of one shape (..., n_networks >= 2), got "
                         f"{tuple(getattr(m2, 'shape', ()))} and {tuple(getattr(m4, 'shape', ()))}")
    a, b = m4, m2
    n = a.shape[-1]
    A, B = a.mean(-1), b.mean(-1)
    da, db = a - A.unsqueeze(-1), b - B.unsqueeze(-1)
    var_a, var_b = (da**2).sum(-1) / (n - 1), (db**2).sum(-1) / (n - 1)
    cov = (da * db).sum(-1) / (n - 1)
    ga, gb = 1 / B**2, -2 * A / B**3
    var = (ga**2 * var_a + gb**2 * var_b + 2 * ga * gb * cov) / n
    return A / B**2 - 3, var.clamp(min=0).sqrt()


def gradient_norms(x: torch.Tensor, depth: int, width: int, C_W: float, C_b: float = 0.0,
                   activation: str = "linear", *, n_networks: int = 100, rng=0,
                   per_network: bool = False) -> torch.Tensor:
    r"""Squared norm of :math:`\partial f / \partial z^{(l)}` for a random readout f, per layer.

    :math:`f = u \cdot z^{(\text{depth})}` with :math:`u \sim \mathcal{N}(0, I/n)`, so
    :math:`\E\|\partial f / \partial z^{(\text{depth})}\|^2 = 1`; each step back multiplies the
    expectation by :math:`C_W` (linear) or :math:`C_W / 2` (ReLU; exact at finite width up to the
    chance of a dead layer, :func:`gradient_norm_theory`). Gaussian weight matrices and biases
    are drawn (``sampler="gaussian"``), then ``u`` from the same generator.

    Parameters
    ----------
    x : Tensor, shape (n_inputs, n_0)
    depth, width, C_W, C_b, activation, n_networks, rng
        As in :func:`empirical_kernels` (same positions); ``depth >= 1``.
    per_network : bool
        Return each network's value (mean over inputs) instead of the mean over networks.

    Returns
    -------
    Tensor, float64, on ``x``'s device, shape (depth,) or (n_networks, depth)
        Entry ``l - 1``: the mean over inputs (and networks) of
        :math:`\|\partial f/\partial z^{(l)}\|^2`.
    """
    depth, C_W, C_b = _check_common(depth, C_W, C_b, activation)
    width, n_networks, generator = _check_mc(x, width, n_networks, "gaussian", rng)
    if depth < 1:
        raise ValueError(f"depth must be >= 1 for gradients, got {depth}")
    start = x.detach().to(torch.float64).requires_grad_()  # so that every z is in the graph
    zs = list(_networks(start, depth, width, C_W, C_b, activation, n_networks, generator,
                        "gaussian"))
    u = torch.randn(n_networks, 1, width, generator=generator, dtype=torch.float64,
                    device=x.device) / math.sqrt(width)
    grads = torch.autograd.grad((zs[-1] * u).sum(), zs)
    norms = torch.stack([(g**2).sum(2).mean(1) for g in grads], dim=1)  # (n_networks, depth)
    return norms if per_network else norms.mean(0)


def gradient_norm_theory(depth: int, width: int, C_W: float, activation: str = "linear") -> torch.Tensor:
    r"""Exact :math:`\E\|\partial f / \partial z^{(l)}\|^2` of :func:`gradient_norms` at finite width.

    Zero biases, Gaussian weights, every hidden width :math:`n`. Linear: :math:`C_W^{L-l}`. ReLU:

    .. math::

        \E\|\delta^{(l)}\|^2 = (C_W / 2)^{L - l}\,(1 - 2^{-n})^{l - 1}, \quad l < L,

    and 1 at :math:`l = L`. Averaging over the readout, :math:`\E_u\|J^\top u\|^2 = \E_v\|J v\|^2`
    for :math:`u, v \sim \mathcal{N}(0, I/n)`, so the backward norm is a forward tangent pushed
    through :math:`W^{(k+1)} D_k`; given the past, each unit's (preactivation, tangent) pair is a
    centred Gaussian pair, and the sign symmetry :math:`(z, t) \to (-z, -t)` gives
    :math:`\E[\1(z > 0)\, t^2] = \E[t^2] / 2` at any width. That fails only when a layer is dead
    (every unit off, probability :math:`2^{-n}` per layer given a live one): then the next
    preactivations are exactly 0 and so are the gates. No infinite-width limit is taken; the
    weights seen backward need not be independent of the gates.

    Parameters
    ----------
    depth : int
        :math:`L \ge 1`.
    width : int
        :math:`n \ge 1`.
    C_W : float
    activation : {"linear", "relu"}

    Returns
    -------
    Tensor, float64, shape (depth,)
        Entry ``l - 1`` for layer ``l``.
    """
    depth, C_W, _ = _check_common(depth, C_W, 0.0, activation)
    width = _check_width(width)
    if depth < 1:
        raise ValueError(f"depth must be >= 1 for gradients, got {depth}")
    layers = torch.arange(1, depth + 1, dtype=torch.float64)
    if activation == "linear":
        return C_W ** (depth - layers)
    alive = (1 - 2.0**-width) ** (layers - 1)
    alive[-1] = 1.0  # the readout layer has no gate
    return (C_W / 2) ** (depth - layers) * alive


def relu_coactivation(kernel: torch.Tensor) -> torch.Tensor:
    r"""Probability that two ReLU units are both on: :math:`P(u > 0, v > 0) = (\pi - \theta) / (2\pi)`.

    For :math:`(u_\alpha, u_\beta) \sim \mathcal{N}(0, K)` with :math:`\cos\theta =
    K_{\alpha\beta} / \sqrt{K_{\alpha\alpha} K_{\beta\beta}}`: the bivariate orthant probability
    (Sheppard's formula), the two-unit case of chapter 3's pattern law. Applied to a layer's
    kernel it is the expected share of units on for both inputs :math:`\alpha` and :math:`\beta`
    (the diagonal is 1/2).

    Parameters
    ----------
    kernel : Tensor, shape (..., n, n)
        Kernels with a positive diagonal.

    Returns
    -------
    Tensor, shape (..., n, n)
    """
    kernel_correlation(kernel)  # validates the shape and the diagonal
    diag = torch.diagonal(kernel, dim1=-2, dim2=-1)
    products = diag.unsqueeze(-1) * diag.unsqueeze(-2)
    # the angle from the kernel itself, as in relu_expectation: exact 0 on the diagonal
    theta = torch.atan2(torch.sqrt(torch.clamp(products - kernel**2, min=0)), kernel)
    return (math.pi - theta) / (2 * math.pi)


class DecayFit(NamedTuple):
    """What :func:`fit_decay` returns."""

    exponent: float
    """Slope :math:`p` of :math:`\\log y` against :math:`\\log l` (power law :math:`y \\propto l^{p}`)."""
    power_rms: float
    """Root-mean-square residual of that fit, in :math:`\\log y`."""
    rate: float
    """Slope :math:`r` of :math:`\\log y` against :math:`l` (exponential :math:`y \\propto e^{r l}`)."""
    exponential_rms: float
    """Root-mean-square residual of the exponential fit, in :math:`\\log y`."""
    inverse_square_slope: float
    """Slope :math:`s` of :math:`y^{-1/2}` against :math:`l` (shifted inverse square :math:`y = (s l + c)^{-2}`)."""
    inverse_square_rms: float
    """Root-mean-square residual of that fit, in :math:`\\log y`."""


def fit_decay(layers, values) -> DecayFit:
    r"""Least-squares fits of three decay laws to a positive decaying sequence.

    Straight-line fits of :math:`\log y` against :math:`\log l` (power law, free exponent) and
    against :math:`l` (exponential), and of :math:`y^{-1/2}` against :math:`l` (the shifted inverse
    square :math:`y = (s l + c)^{-2}`, the law of the critical ReLU correlation, whose exponent is
    reached only slowly in :math:`\log l`). All residuals are reported in :math:`\log y`, so the
    smallest says which law describes the data.

    Parameters
    ----------
    layers : array-like, shape (m,)
        Positive abscissae (layer indices), at least 3.
    values : array-like, shape (m,)
        Positive values :math:`y_l` (e.g. :math:`1 - c^{(l)}`).

    Returns
    -------
    DecayFit
    """
    l, y = real_tensor(layers, "layers"), real_tensor(values, "values")
    if not (l.ndim == 1 and len(l) >= 3 and bool((l > 0).all()) and bool(torch.isfinite(l).all())):
        raise ValueError(f"layers must be a 1-d sequence of >= 3 positive numbers, got shape {tuple(l.shape)}")
    if not (y.shape == l.shape and bool((y > 0).all()) and bool(torch.isfinite(y).all())):
        raise ValueError(f"values must be positive and finite, shaped like layers {tuple(l.shape)}, got {tuple(y.shape)}")
    log_y = y.log()

    def line(t):
        design = torch.stack([t, torch.ones_like(t)], dim=1)
        coef = torch.linalg.lstsq(design, log_y.unsqueeze(1)).solution.squeeze(1)
        residual = log_y - design @ coef
        return coef[0].item(), residual.pow(2).mean().sqrt().item()

    exponent, power_rms = line(l.log())
    rate, exponential_rms = line(l)
    design = torch.stack([l, torch.ones_like(l)], dim=1)
    coef = torch.linalg.lstsq(design, y.rsqrt().unsqueeze(1)).solution.squeeze(1)
    fitted = design @ coef
    if bool((fitted > 0).all()):
        inverse_square_rms = (log_y + 2 * fitted.log()).pow(2).mean().sqrt().item()
    else:  # the line crosses zero: the law cannot describe the data
        inverse_square_rms = math.inf
    return DecayFit(exponent, power_rms, rate, exponential_rms, coef[0].item(), inverse_square_rms)


#: The coefficient ``a`` of the critical ReLU correlation map near c = 1,
#: :math:`\epsilon' = \epsilon - a\,\epsilon^{3/2} + O(\epsilon^{5/2})`.
CRITICAL_A = 2 * math.sqrt(2) / (3 * math.pi)


class NextOrderFit(NamedTuple):
    """What :func:`fit_next_order` returns."""

    slope: float
    """Coefficient of :math:`l` in :math:`\\epsilon^{-1/2}`; the law says :math:`a/2`."""
    log_coefficient: float
    """Coefficient of :math:`\\ln l`; the law says :math:`3a/4`."""
    intercept: float
    """The constant, set by the starting correlation."""
    rms: float
    """Root-mean-square residual of :math:`\\epsilon^{-1/2}`."""


def fit_next_order(layers, values) -> NextOrderFit:
    r"""Fit :math:`\epsilon_l^{-1/2} = s\,l + k \ln l + C` by least squares.

    For the critical ReLU correlation, :math:`\epsilon' = \epsilon - a\epsilon^{3/2} + O(\epsilon^{5/2})`
    with no :math:`\epsilon^2` term, so :math:`y = \epsilon^{-1/2}` obeys
    :math:`y' = y + a/2 + \tfrac{3a^2}{8y} + O(y^{-2})` and
    :math:`\epsilon_l^{-1/2} = \tfrac{a}{2}(l + \tfrac{3}{2}\ln l + C) + o(1)`:
    :math:`s = a/2`, :math:`k = 3a/4` (``CRITICAL_A``) :cite:p:`hayou2019impact`.
    The pure :math:`9\pi^2/(2l^2)` law is the first term; the :math:`\ln l` term is why
    :math:`l^2\epsilon_l` sits about :math:`3\ln l / l` below it.

    Parameters
    ----------
    layers : array-like, shape (m,)
        Layer indices >= 1, at least 4.
    values : array-like, shape (m,)
        Positive :math:`\epsilon_l = 1 - c^{(l)}`.

    Returns
    -------
    NextOrderFit
    """
    l, y = real_tensor(layers, "layers"), real_tensor(values, "values")
    if not (l.ndim == 1 and len(l) >= 4 and bool((l >= 1).all()) and bool(torch.isfinite(l).all())):
        raise ValueError(f"layers must be a 1-d sequence of >= 4 numbers >= 1, got shape {tuple(l.shape)}")
    if not (y.shape == l.shape and bool((y > 0).all()) and bool(torch.isfinite(y).all())):
        raise ValueError(f"values must be positive and finite, shaped like layers {tuple(l.shape)}, "
                         f"got {tuple(y.shape)}")
    target = y.rsqrt()
    design = torch.stack([l, l.log(), torch.ones_like(l)], dim=1)
    coef = torch.linalg.lstsq(design, target.unsqueeze(1)).solution.squeeze(1)
    rms = (target - design @ coef).pow(2).mean().sqrt().item()
    return NextOrderFit(coef[0].item(), coef[1].item(), coef[2].item(), rms)

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

import torch

__all__ = ["ACTIVATIONS", "kernel_recursion", "relu_expectation", "relu_correlation_map", "empirical_kernels",
           "preactivations",
           "excess_kurtosis_theory", "gradient_norms"]

#: Activations with a closed-form kernel map.
ACTIVATIONS = ("linear", "relu")


def _check_common(depth, C_W, C_b, activation) -> None:
    if not (isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0):
        raise ValueError(f"depth must be an int >= 0, got {depth!r}")
    if not (isinstance(C_W, (int, float)) and math.isfinite(C_W) and C_W >= 0):
        raise ValueError(f"C_W must be a finite number >= 0, got {C_W!r}")
    if not (isinstance(C_b, (int, float)) and math.isfinite(C_b) and C_b >= 0):
        raise ValueError(f"C_b must be a finite number >= 0, got {C_b!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


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
    c = torch.as_tensor(c, dtype=torch.float64)
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
    _check_common(depth, C_W, C_b, activation)
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
              n_networks: int, seed: int, weights: bool = False):
    r"""Yield the preactivations (n_networks, n_inputs, width) of layers 1..depth of random networks.

    With ``weights=False`` each layer is drawn from its exact conditional law instead of through a
    weight matrix: given the previous activations :math:`h` (n_inputs x fan_in), the columns of
    :math:`z = h W^\top + b` are independent :math:`\mathcal{N}(0, C_b + C_W h h^\top / \text{fan\_in})`,
    so one draws ``width x n_inputs`` normals instead of ``width x fan_in``. Same distribution,
    far fewer random numbers. ``weights=True`` draws the weights (needed to backpropagate).
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    h = x.to(torch.float64).unsqueeze(0).expand(n_networks, -1, -1)
    n_inputs = h.shape[1]
    for layer in range(depth):
        fan_in = h.shape[2]
        if weights:
            w = torch.randn(n_networks, fan_in, width, generator=generator, dtype=torch.float64, device=x.device)
            b = torch.randn(n_networks, 1, width, generator=generator, dtype=torch.float64, device=x.device)
            z = torch.bmm(h, w * math.sqrt(C_W / fan_in)) + b * math.sqrt(C_b)
        else:
            cov = C_b + C_W * torch.bmm(h, h.transpose(1, 2)) / fan_in
            values, vectors = torch.linalg.eigh(cov)
            factor = vectors * values.clamp(min=0).sqrt().unsqueeze(1)  # cov = factor factor^T
            noise = torch.randn(n_networks, n_inputs, width, generator=generator, dtype=torch.float64, device=x.device)
            z = torch.bmm(factor, noise)
        yield z
        h = torch.relu(z) if activation == "relu" else z


def _check_mc(x, width, n_networks) -> None:
    if not (isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] >= 1):
        raise ValueError(f"x must be a tensor of shape (n_inputs, n_0), got {tuple(getattr(x, 'shape', ()))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be an int >= 1, got {width!r}")
    if not (isinstance(n_networks, int) and n_networks >= 1):
        raise ValueError(f"n_networks must be an int >= 1, got {n_networks!r}")


def empirical_kernels(x: torch.Tensor, depth: int, width: int, C_W: float, C_b: float = 0.0,
                      activation: str = "linear", n_networks: int = 100, seed: int = 0,
                      per_network: bool = False) -> torch.Tensor:
    r"""Monte Carlo kernels :math:`\frac{1}{n}\sum_i z^{(l)}_{i;\alpha} z^{(l)}_{i;\beta}` of random networks.

    All ``n_networks`` networks run at once, and each layer is drawn from its exact Gaussian law
    given the previous one (:math:`z \mid h \sim \mathcal{N}(0, C_b + C_W h h^\top / n)` per neuron),
    which needs ``width x n_inputs`` random numbers per layer and network instead of a
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
        Number of independent networks.
    seed : int
        Seed of the weights.
    per_network : bool
        Return every network's kernels instead of their mean.

    Returns
    -------
    Tensor, float64, shape (depth + 1, n_inputs, n_inputs) or (n_networks, depth + 1, n_inputs, n_inputs)
        Entry 0 is :math:`x x^\top / n_0`.
    """
    _check_common(depth, C_W, C_b, activation)
    _check_mc(x, width, n_networks)
    x = x.to(torch.float64)
    g0 = (x @ x.T / x.shape[1]).expand(n_networks, -1, -1)
    layers = [g0] + [torch.bmm(z, z.transpose(1, 2)) / width
                     for z in _networks(x, depth, width, C_W, C_b, activation, n_networks, seed)]
    kernels = torch.stack(layers, dim=1)
    return kernels if per_network else kernels.mean(0)


def preactivations(x: torch.Tensor, depth: int, width: int, C_W: float, C_b: float = 0.0,
                   activation: str = "linear", n_networks: int = 100, seed: int = 0) -> torch.Tensor:
    """The preactivations of every layer of ``n_networks`` random networks (drawn as in
    :func:`empirical_kernels`).

    Returns
    -------
    Tensor, float64, shape (depth, n_networks, n_inputs, width)
    """
    _check_common(depth, C_W, C_b, activation)
    _check_mc(x, width, n_networks)
    layers = list(_networks(x, depth, width, C_W, C_b, activation, n_networks, seed))
    if not layers:
        return torch.zeros(0, n_networks, len(x), width, dtype=torch.float64, device=x.device)
    return torch.stack(layers)


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
    _check_common(depth, 1.0, 0.0, activation)
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be an int >= 1, got {width!r}")
    factor = 1 + (2 if activation == "linear" else 5) / width
    layers = torch.arange(depth, dtype=torch.float64)
    return 3 * (factor**layers - 1)


def gradient_norms(x: torch.Tensor, depth: int, width: int, C_W: float, activation: str = "linear",
                   n_networks: int = 100, seed: int = 0) -> torch.Tensor:
    r"""Mean squared norm of :math:`\partial f / \partial z^{(l)}` for a random readout f, per layer.

    :math:`f = u \cdot z^{(\text{depth})}` with :math:`u \sim \mathcal{N}(0, I/n)`, so
    :math:`\E\|\partial f / \partial z^{(\text{depth})}\|^2 = 1`; each step back multiplies the
    expectation by :math:`C_W` (linear) or, at large width, :math:`C_W / 2` (ReLU).

    Parameters
    ----------
    x : Tensor, shape (n_inputs, n_0)
    depth, width, C_W, activation, n_networks, seed
        As in :func:`empirical_kernels` (zero biases).

    Returns
    -------
    Tensor, float64, shape (depth,)
        Entry ``l - 1``: the mean over networks and inputs of :math:`\|\partial f/\partial z^{(l)}\|^2`.
    """
    _check_common(depth, C_W, 0.0, activation)
    _check_mc(x, width, n_networks)
    if depth < 1:
        raise ValueError(f"depth must be >= 1 for gradients, got {depth}")
    start = x.detach().to(torch.float64).requires_grad_()  # so that every z is in the graph
    zs = list(_networks(start, depth, width, C_W, 0.0, activation, n_networks, seed, weights=True))
    generator = torch.Generator(device=x.device).manual_seed(seed + 1)
    u = torch.randn(n_networks, 1, width, generator=generator, dtype=torch.float64, device=x.device) / math.sqrt(width)
    grads = torch.autograd.grad((zs[-1] * u).sum(), zs)
    return torch.stack([(g**2).sum(2).mean() for g in grads])

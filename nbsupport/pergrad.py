"""Per-sample gradients, and the covariance of gradients through the N x N Gram matrix.

The per-sample gradient :math:`g_i = \\nabla_\\theta \\ell(f(x_i), y_i)` is the object whose
covariance source 000 decomposes :cite:p:`condcov_note`. Three routes compute it:

* :func:`per_sample_grads_loop`, the source's loop: one backward pass per sample (the reference);
* ``per_sample_grads(..., method="vmap")``: ``torch.func.vmap(grad(...))`` over the batch;
* ``per_sample_grads(..., method="outer")``: for an MLP (``nn.Sequential`` of ``nn.Linear`` and
  elementwise activations) one forward and one backward pass give every layer's input :math:`h_i`
  and output gradient :math:`\\delta_i`, and the weight gradient of sample ``i`` is the outer product
  :math:`\\delta_i h_i^\\top`, written straight into one ``(N, P)`` buffer (optionally the caller's,
  ``out=``), each entry once: the route runs at the speed of writing N x P numbers
  (``benchmarks/bench_pergrad.py`` measures it against Opacus, BackPACK and a plain fill).

For networks with :math:`P \\gtrsim 10^5` parameters a :math:`P \\times P` covariance is out of reach,
but every trace and non-zero eigenvalue of a covariance of gradients is one of an
:math:`N \\times N` matrix: with :math:`K = G G^\\top` and a symmetric idempotent centring matrix
:math:`\\Pi`, :math:`G^\\top \\Pi G` and :math:`\\Pi K \\Pi` share their non-zero spectrum. For linear layers
with inputs :math:`H^{(l-1)}` (:math:`A` is kept for the gate matrix) and output gradients :math:`\\Delta_l`,
:math:`K = \\sum_l (\\Delta_l \\Delta_l^\\top) \\odot (H^{(l-1)} H^{(l-1)\\top} + 1)` (the 1 for the bias), so
:math:`G` is never materialised (:func:`gradient_gram`, :func:`gram_decomposition`); for other
models :func:`gradient_gram` adds :math:`G_m G_m^\\top` one parameter-owning module at a time.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ._validate import batch, integer
from .covariance import CovarianceSplit, centred_gram
from .subspaces import top_eigenvalues

__all__ = ["per_sample_grads", "per_sample_grads_loop", "layer_signals", "gradient_gram",
           "gradient_gram_per_layer", "gram_decomposition", "group_gram_spectra", "GramSpectra",
           "ELEMENTWISE"]

#: Elementwise modules allowed between the linear layers of the outer-product route.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Softplus, nn.ELU, nn.Identity)


def _check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be tensors with the same non-zero number of rows, got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    batch(model, x, y, loss_fn, name="")


def per_sample_grads_loop(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The source's algorithm: a backward pass per sample, gradients flattened one by one.

    Unlike the listing in the source, gradients are cleared between samples (the listing lets
    them accumulate, so its :math:`G_i` would be the running sum of the first ``i`` gradients).

    Parameters
    ----------
    model : nn.Module
    loss_fn : callable
        ``loss_fn(output, target)`` returning the mean loss over the batch (e.g. ``F.cross_entropy``).
    x : Tensor, shape (N, ...)
    y : Tensor, shape (N, ...)

    Returns
    -------
    Tensor, shape (N, P)
        Row ``i`` is the gradient of ``loss_fn(model(x[i:i+1]), y[i:i+1])``, flattened in
        ``model.parameters()`` order. The model's ``.grad`` fields are left as they were.
    """
    _check_batch(model, x, y, loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def _is_mlp(model: nn.Module) -> bool:
    """An nn.Sequential of distinct nn.Linear and elementwise modules (a reused Linear shares weights,
    and its per-sample gradient would be a sum the outer-product route does not form)."""
    return (isinstance(model, nn.Sequential) and any(isinstance(m, nn.Linear) for m in model)
            and all(isinstance(m, (nn.Linear,) + ELEMENTWISE) for m in model)
            and len({id(m) for m in model if isinstance(m, nn.Linear)}) == sum(isinstance(m, nn.Linear) for m in model))


def layer_signals(model: nn.Sequential, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor
                  ) -> list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]:
    """Inputs and output gradients of every linear layer of an MLP, for every sample.

    One forward and one backward pass of :math:`\\sum_i \\ell_i` (``loss_fn`` times N): because the
    samples do not interact in an MLP, the gradient with respect to layer ``l``'s output row ``i``
    is sample ``i``'s own :math:`\\delta_{l,i}`.

    Parameters
    ----------
    model : nn.Sequential
        ``nn.Linear`` layers and elementwise activations (see :data:`ELEMENTWISE`) only.
    loss_fn : callable
        Mean loss over the batch, as in :func:`per_sample_grads_loop`.
    x : Tensor, shape (N, d)
    y : Tensor, shape (N, ...)

    Returns
    -------
    list of (layer, a, delta)
        ``a`` of shape (N, in_features) and ``delta`` of shape (N, out_features), detached.
    """
    _check_batch(model, x, y, loss_fn)
    if not _is_mlp(model):
        raise ValueError("model must be an nn.Sequential of nn.Linear and elementwise activations "
                         f"({', '.join(t.__name__ for t in ELEMENTWISE)}), got {model!r}")
    inputs, outputs = [], []
    h = x
    for module in model:
        if isinstance(module, nn.Linear):
            inputs.append(h.detach())
            h = module(h)
            outputs.append(h)
        else:
            h = module(h)
    deltas = torch.autograd.grad(loss_fn(h, y) * len(x), outputs)
    layers = [m for m in model if isinstance(m, nn.Linear)]
    return [(layer, a, d.detach()) for layer, a, d in zip(layers, inputs, deltas)]


def _param_offsets(params: list[torch.Tensor]) -> tuple[dict[int, int], int]:
    offsets, start = {}, 0
    for p in params:
        offsets[id(p)] = start
        start += p.numel()
    return offsets, start


def _check_out(out: torch.Tensor | None, n: int, p: int, like: torch.Tensor) -> None:
    if out is None:
        return
    if (not isinstance(out, torch.Tensor) or out.shape != (n, p) or out.dtype != like.dtype
            or out.device != like.device or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous tensor of shape ({n}, {p}), dtype {like.dtype} on "
                         f"{like.device}, got {getattr(out, 'dtype', type(out).__name__)} of shape "
                         f"{tuple(getattr(out, 'shape', ()))}")


def _outer_grads(model: nn.Sequential, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    offsets, total = _param_offsets(params)
    n = len(x)
    _check_out(out, n, total, x)
    signals = layer_signals(model, loss_fn, x, y)
    # every trainable parameter of an MLP is a weight or a bias of one of its (distinct) Linear layers,
    # so every column is written below: no zero fill, one pass over the N x P output
    if out is None:
        out = torch.empty(n, total, dtype=x.dtype, device=x.device)
    for layer, a, delta in signals:
        if layer.weight.requires_grad:
            o = offsets[id(layer.weight)]
            block = out[:, o:o + layer.weight.numel()].view(n, *layer.weight.shape)
            torch.mul(delta.unsqueeze(2), a.unsqueeze(1), out=block)
        if layer.bias is not None and layer.bias.requires_grad:
            o = offsets[id(layer.bias)]
            out[:, o:o + layer.bias.numel()] = delta
    return out


def _vmap_grads(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xi, yi):
        return loss_fn(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g.reshape(len(x), -1) for g in grads.values()], dim=1)


def per_sample_grads(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                     method: str = "auto", out: torch.Tensor | None = None) -> torch.Tensor:
    """Gradients of the loss of every sample, one row per sample.

    Parameters
    ----------
    model : nn.Module
        Without batch-coupling layers (batch norm in training mode would mix samples).
    loss_fn : callable
        ``loss_fn(output, target)`` returning the mean loss over the batch (e.g. ``F.cross_entropy``).
    x : Tensor, shape (N, ...)
    y : Tensor, shape (N, ...)
    method : {"auto", "outer", "vmap"}
        ``"outer"``: outer products of layer signals, MLPs only (see the module docstring);
        ``"vmap"``: ``torch.func``; ``"auto"``: ``"outer"`` when the model is an MLP, else ``"vmap"``.
    out : Tensor, shape (N, P), optional
        A contiguous buffer of x's dtype and device to write into (and return), e.g. reused across
        batches: the outer-product route then writes every entry once and allocates nothing of size
        N x P. Building the matrix is memory-bound, and a fresh N x P allocation costs about as
        much as writing it (the operating system zero-fills every new page).

    Returns
    -------
    Tensor, shape (N, P)
        Flattened in ``model.parameters()`` order (parameters with ``requires_grad``), equal to
        :func:`per_sample_grads_loop` up to rounding.
    """
    _check_batch(model, x, y, loss_fn)
    if method not in ("auto", "outer", "vmap"):
        raise ValueError(f"method must be 'auto', 'outer' or 'vmap', got {method!r}")
    if method == "outer" or (method == "auto" and _is_mlp(model)):
        return _outer_grads(model, loss_fn, x, y, out=out)
    g = _vmap_grads(model, loss_fn, x, y)
    if out is None:
        return g
    _check_out(out, g.shape[0], g.shape[1], g)
    return out.copy_(g)


def _owned_parameter_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Names of trainable parameters grouped by the module that owns them, in parameters() order."""
    names = [k for k, v in model.named_parameters() if v.requires_grad]
    owner = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            owner.setdefault(full, mname)
    groups: dict[str, list[str]] = {}
    for k in names:
        groups.setdefault(owner[k], []).append(k)
    return list(groups.items())


def _blocked_gram(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, per_layer: bool,
                  chunk_size: int) -> torch.Tensor | list[torch.Tensor]:
    """K = sum over parameter-owning modules of G_m G_m^T, with G_m (N x P_m) from vmap, one module at a time."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    n = len(x)
    grams = []
    for _, group in _owned_parameter_groups(model):
        fixed = {k: v for k, v in params.items() if k not in group}

        def loss(trainable, xi, yi):
            merged = {**fixed, **trainable}
            return loss_fn(functional_call(model, (merged, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
        trainable = {k: params[k] for k in group}
        g = torch.cat([torch.cat([t.reshape(len(xb), -1) for t in per_sample(trainable, xb, yb).values()], 1)
                       for xb, yb in zip(x.split(chunk_size), y.split(chunk_size))]).to(torch.float64)
        k = g @ g.T
        del g
        if per_layer:
            grams.append(k)
        elif grams:
            grams[0] += k
        else:
            grams.append(k)
    if not grams:
        raise ValueError("model has no parameters with requires_grad")
    return grams if per_layer else grams[0]


def gradient_gram(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                  method: str = "auto", chunk_size: int | None = None) -> torch.Tensor:
    """The Gram matrix :math:`K_{ij} = g_i \\cdot g_j` of per-sample gradients, without forming G.

    Two routes, neither of which holds the (N, P) matrix G of per-sample gradients:

    * ``"signals"`` (MLPs, see :func:`layer_signals`): for linear layer ``l`` with inputs
      :math:`H^{(l-1)}` and output gradients :math:`\\Delta_l`,
      :math:`K_l = (\\Delta_l \\Delta_l^\\top) \\odot (H^{(l-1)} H^{(l-1)\\top} + [\\text{bias}])`.
      Memory :math:`O(N^2 + N \\cdot \\text{width})`, time :math:`O(N^2 \\sum_l (m_{l-1} + m_l))`.
    * ``"blocks"`` (any model without batch-coupling layers): for each module that owns trainable
      parameters, its per-sample gradients :math:`G_m` (N, P_m) by ``torch.func.vmap``, added as
      :math:`G_m G_m^\\top` and dropped. Memory :math:`O(N^2 + N \\max_m P_m)`; one vmapped
      backward pass per module.

    Parameters
    ----------
    model : nn.Module
        An MLP for ``method="signals"``; any model (no batch norm in training mode) for ``"blocks"``.
    loss_fn, x, y
        As in :func:`per_sample_grads`.
    method : {"auto", "signals", "blocks"}
        ``"auto"``: ``"signals"`` for MLPs, else ``"blocks"``.
    chunk_size : int, optional
        ``"blocks"`` only: samples per vmap call (default all N), to bound vmap's intermediates.

    Returns
    -------
    Tensor, float64, shape (N, N)
    """
    return _gradient_grams(model, loss_fn, x, y, False, method, chunk_size)


def gradient_gram_per_layer(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                            method: str = "auto", chunk_size: int | None = None) -> list[torch.Tensor]:
    """:func:`gradient_gram` split by layer: one Gram matrix per linear layer (``"signals"``) or per
    parameter-owning module (``"blocks"``, in ``model.parameters()`` order); they sum to it.

    Parameters
    ----------
    model, loss_fn, x, y, method, chunk_size
        As in :func:`gradient_gram`.

    Returns
    -------
    list of Tensor, float64, each of shape (N, N)
    """
    return _gradient_grams(model, loss_fn, x, y, True, method, chunk_size)


def _gradient_grams(model, loss_fn, x, y, per_layer: bool, method: str, chunk_size):
    _check_batch(model, x, y, loss_fn)
    if method not in ("auto", "signals", "blocks"):
        raise ValueError(f"method must be 'auto', 'signals' or 'blocks', got {method!r}")
    if chunk_size is not None:
        chunk_size = integer(chunk_size, "chunk_size", minimum=1)
    if method == "blocks" or (method == "auto" and not _is_mlp(model)):
        return _blocked_gram(model, loss_fn, x, y, per_layer, chunk_size or len(x))
    grams, total = [], None
    for layer, a, delta in layer_signals(model, loss_fn, x, y):
        a, delta = a.to(torch.float64), delta.to(torch.float64)
        k = delta @ delta.T
        if layer.weight.requires_grad and layer.bias is not None and layer.bias.requires_grad:
            k *= torch.addmm(torch.ones_like(k), a, a.T)          # (a a^T + 1): weight and bias
        elif layer.weight.requires_grad:
            k *= a @ a.T
        elif not (layer.bias is not None and layer.bias.requires_grad):
            k.zero_()
        if per_layer:
            grams.append(k)
        elif total is None:
            total = k
        else:
            total += k
    return grams if per_layer else total


class GramSpectra(NamedTuple):
    """Traces and top eigenvalues of the total, within- and between-group gradient covariances."""

    traces: CovarianceSplit
    eigenvalues: CovarianceSplit


def _check_gram(gram: torch.Tensor, inverse: torch.Tensor, ddof: int, k: int) -> tuple[int, int]:
    """Validate a Gram matrix and its grouping; return ``ddof`` and ``k`` as Python ints."""
    if not isinstance(gram, torch.Tensor) or gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (N, N) tensor, got shape {tuple(getattr(gram, 'shape', ()))}")
    if not bool(torch.isfinite(gram).all()) or not torch.allclose(gram, gram.T, rtol=1e-10, atol=1e-12):
        raise ValueError("gram must be finite and symmetric")
    if not isinstance(inverse, torch.Tensor) or inverse.dtype != torch.long or inverse.shape != gram.shape[:1]:
        raise ValueError(f"inverse must be a long tensor of shape ({gram.shape[0]},)")
    if bool((inverse < 0).any()):
        raise ValueError("inverse must hold group indices >= 0")
    ddof = integer(ddof, "ddof")
    if ddof not in (0, 1) or gram.shape[0] <= ddof:
        raise ValueError(f"ddof must be 0 or 1 (and smaller than N), got {ddof!r}")
    return ddof, integer(k, "k", minimum=1)


def _group_sums(gram: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Row sums of K per group, (G, N), and block sums :math:`1_k^\top K 1_l`, (G, G)."""
    rows = torch.zeros(n_groups, gram.shape[0], dtype=gram.dtype, device=gram.device).index_add_(0, inverse, gram)
    blocks = torch.zeros(n_groups, n_groups, dtype=gram.dtype, device=gram.device).index_add_(1, inverse, rows)
    return rows, blocks


def gram_decomposition(gram: torch.Tensor, inverse: torch.Tensor, ddof: int = 0, k: int = 5) -> GramSpectra:
    r"""Within/between split of the traces and top-``k`` eigenvalues of :math:`\Cov(G)`, from K = G Gᵀ.

    With :math:`J = \mathbf{1}\mathbf{1}^\top / N` and the group-averaging matrix :math:`B`
    (:math:`B_{ij} = 1/n_k` when samples i and j are both in group k), the total, within and between
    scatter matrices are :math:`G^\top H G` for :math:`H = I - J`, :math:`I - B` and :math:`B - J`.
    Each H is a symmetric projector, so the non-zero eigenvalues equal those of :math:`H K H`, and
    :math:`H K H` is formed by group averages of K in :math:`O(N^2)` (no N x N matrix products). The
    between part has rank below the number of groups G and is diagonalised as a G x G matrix.
    Everything is divided by :math:`N - \text{ddof}`, as in
    :func:`nbsupport.covariance.decompose_covariance`.

    Parameters
    ----------
    gram : Tensor, shape (N, N)
        :math:`K = G G^\top` (:func:`gradient_gram`); converted to float64.
    inverse : Tensor, long, shape (N,)
        Group of every sample.
    ddof : {0, 1}
    k : int
        Number of leading eigenvalues.

    Returns
    -------
    GramSpectra
        ``traces`` (three 0-d tensors) and ``eigenvalues`` (three descending tensors of at most
        ``k`` entries; the between part has at most G), each a
        :class:`~nbsupport.covariance.CovarianceSplit`.
    """
    ddof, k = _check_gram(gram, inverse, ddof, k)
    gram = gram.to(torch.float64)
    n = gram.shape[0]
    n_groups = int(inverse.max()) + 1
    counts = torch.bincount(inverse, minlength=n_groups).to(torch.float64)
    present = counts > 0
    rows, blocks = _group_sums(gram, inverse, n_groups)
    rows, blocks, counts = rows[present], blocks[present][:, present], counts[present]
    inverse = torch.cumsum(present.long(), 0)[inverse] - 1  # renumber without empty groups
    total = centred_gram(gram)
    group_rows = (rows / counts[:, None])[inverse]                 # B K
    block_means = blocks / (counts[:, None] * counts[None, :])     # 1_k' K 1_l / (n_k n_l)
    within = gram - group_rows - group_rows.T + block_means[inverse][:, inverse]
    # between: C C^T with rows C_k = sqrt(n_k) (g_k - g), g_k group mean gradients, g the mean
    w = counts / n
    dev = block_means - (block_means @ w)[:, None] - (w @ block_means)[None, :] + w @ block_means @ w
    between = counts.sqrt()[:, None] * dev * counts.sqrt()[None, :]
    norm = n - ddof
    traces = CovarianceSplit(*(torch.trace(m) / norm for m in (total, within, between)))
    eigs = CovarianceSplit(*(top_eigenvalues(m, k) / norm for m in (total, within, between)))
    return GramSpectra(traces, eigs)


def group_gram_spectra(gram: torch.Tensor, inverse: torch.Tensor, groups: torch.Tensor, ddof: int = 1,
                       k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace and top-``k`` eigenvalues of :math:`\\Cov(G \\mid A = a)` for chosen groups.

    The groups' centred sub-Gram matrices are gathered (no loop over groups), zero-padded to the
    largest group and diagonalised in one batched ``eigvalsh`` (padding adds only zero eigenvalues).

    Parameters
    ----------
    gram : Tensor, shape (N, N)
    inverse : Tensor, long, shape (N,)
    groups : Tensor, long, shape (K,)
        Group indices, each with more than ``ddof`` members.
    ddof : {0, 1}
    k : int

    Returns
    -------
    traces : Tensor, float64, shape (K,)
    eigenvalues : Tensor, float64, shape (K, k)
        Descending; zero where a group has fewer than ``k`` non-zero eigenvalues.
    """
    ddof, k = _check_gram(gram, inverse, ddof, k)
    if (not isinstance(groups, torch.Tensor) or groups.dtype != torch.long or groups.ndim != 1 or len(groups) == 0
            or bool((groups < 0).any()) or len(torch.unique(groups)) != len(groups)):
        raise ValueError("groups must be a non-empty long tensor of distinct group indices >= 0")
    gram = gram.to(torch.float64)
    slot_of = torch.full((int(max(inverse.max(), groups.max())) + 1,), -1, dtype=torch.long, device=gram.device)
    slot_of[groups] = torch.arange(len(groups), device=gram.device)
    rows = torch.nonzero(slot_of[inverse] >= 0).squeeze(1)
    slots, order = torch.sort(slot_of[inverse[rows]], stable=True)
    rows = rows[order]
    sizes = torch.bincount(slots, minlength=len(groups))
    if bool((sizes <= ddof).any()):
        raise ValueError(f"every group needs more than ddof={ddof} members, sizes {sizes.tolist()}")
    position = torch.arange(len(rows), device=gram.device) - (torch.cumsum(sizes, 0) - sizes)[slots]
    n_max = int(sizes.max())
    index = torch.zeros(len(groups), n_max, dtype=torch.long, device=gram.device)
    valid = torch.zeros(len(groups), n_max, dtype=torch.bool, device=gram.device)
    index[slots, position], valid[slots, position] = rows, True
    pair = (valid.unsqueeze(2) & valid.unsqueeze(1)).to(torch.float64)
    sub = gram[index.unsqueeze(2), index.unsqueeze(1)] * pair
    n = sizes.to(torch.float64).view(-1, 1, 1)
    centred = (sub - sub.sum(2, keepdim=True) / n - sub.sum(1, keepdim=True) / n
               + sub.sum((1, 2), keepdim=True) / n**2) * pair / (n - ddof)
    eig = torch.linalg.eigvalsh(centred).flip(-1)  # batched and dense: groups are small
    top = torch.zeros(len(groups), k, dtype=torch.float64, device=gram.device)
    top[:, :min(k, n_max)] = eig[:, :k]
    return centred.diagonal(dim1=1, dim2=2).sum(1), top

"""Monte Carlo references for the orthant chapter: patterns, outputs and Jacobian spectra of a network
under Gaussian inputs, from a fixed seed (the independent check of ``nbsupport.orthant.pattern_law``)."""

from __future__ import annotations

import numpy as np
import torch

from ._common import as_first_layer, as_gaussian, as_layers, cov_factor
from .._validate import integer, numpy_rng
from .pattern_law import MAX_FULL_PMF_UNITS
from .regions import network_patterns, pattern_codes

__all__ = ["mc_pattern_pmf", "mc_network", "mc_network_pmf", "mc_jacobian_singular_values"]

def _sample(mean, cov, n, rng, chunk=1_000_000):
    """Yield chunks of Gaussian samples (handles singular cov through the eigen-factor)."""
    factor = cov_factor(cov)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        yield mean + rng.standard_normal((size, factor.shape[1])) @ factor.T


def _check_n(n):
    return integer(n, "n", minimum=1)


def mc_pattern_pmf(weight, bias, mean, cov, n: int, seed: int) -> np.ndarray:
    r"""Monte Carlo estimate of :func:`pattern_pmf`: frequencies of :math:`\1(Wx + b > 0)` over ``n`` draws.

    Parameters
    ----------
    weight, bias, mean, cov
        As in :func:`pattern_pmf`.
    n : int
        Number of samples (drawn in chunks of 10**6).
    seed : int, numpy or torch Generator

    Returns
    -------
    ndarray, float64, shape (2**m,)
        Same layout as :func:`pattern_pmf`.
    """
    weight, bias, mean, cov = as_first_layer(weight, bias, mean, cov)
    m = weight.shape[0]
    if m > MAX_FULL_PMF_UNITS:
        raise ValueError(f"weight has m = {m} units, limit m <= {MAX_FULL_PMF_UNITS} for a full PMF")
    n, rng = _check_n(n), numpy_rng(seed, "seed")
    counts = np.zeros(2**m)
    for x in _sample(mean, cov, n, rng):
        counts += np.bincount(pattern_codes((x @ weight.T + bias) > 0), minlength=2**m)
    return counts / n


def mc_network(weights, biases, mean, cov, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monte Carlo reference: ``n`` Gaussian inputs, their hidden patterns and the network outputs.

    Returns
    -------
    x : ndarray, shape (n, d)
    patterns : ndarray, bool, shape (n, M)
    out : ndarray, shape (n, d_out)
    """
    ws, bs = as_layers(weights, biases)
    mean, cov = as_gaussian(mean, cov)
    n, rng = _check_n(n), numpy_rng(seed, "seed")
    x = np.concatenate(list(_sample(mean, cov, n, rng)))
    h = x
    for w, b in zip(ws[:-1], bs[:-1]):
        h = np.maximum(h @ w.T + b, 0)
    return x, network_patterns(ws, bs, x), h @ ws[-1].T + bs[-1]


def mc_network_pmf(weights, biases, mean, cov, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Monte Carlo pattern PMF of a whole network, in chunks of 10**6 draws (little memory for any ``n``).

    Parameters
    ----------
    weights, biases, mean, cov
        As in :func:`support_search`; at most 62 hidden units (codes are int64).
    n : int
    seed : int, numpy or torch Generator
        The same draws as :func:`mc_network` with the same seed.

    Returns
    -------
    codes : ndarray, int64, shape (K,)
        Distinct pattern codes :math:`\sum_i a_i 2^i` seen, ascending.
    freqs : ndarray, shape (K,)
        Their frequencies.
    """
    ws, bs = as_layers(weights, biases)
    mean, cov = as_gaussian(mean, cov)
    n, rng = _check_n(n), numpy_rng(seed, "seed")
    n_units = sum(w.shape[0] for w in ws[:-1])
    if n_units > 62:
        raise ValueError(f"weights have {n_units} hidden units; codes need <= 62 (use mc_network)")
    counts: dict[int, int] = {}
    for x in _sample(mean, cov, n, rng):
        codes, k = np.unique(pattern_codes(network_patterns(ws, bs, x)), return_counts=True)
        for code, count in zip(codes.tolist(), k.tolist()):
            counts[code] = counts.get(code, 0) + count
    codes = np.array(sorted(counts), dtype=np.int64)
    return codes, np.array([counts[c] for c in codes.tolist()]) / n


def mc_jacobian_singular_values(model: torch.nn.Module, mean, cov, n: int, seed: int) -> np.ndarray:
    """Monte Carlo reference: singular values of the input Jacobian at ``n`` Gaussian inputs (torch.func).

    Parameters
    ----------
    model : nn.Module
        Maps (d,) to (d_out,); evaluated in float64 on the device of its parameters (the draws are
        moved there; the result comes back to the CPU as numpy).
    mean, cov : array-like
    n : int
    seed : int, numpy or torch Generator

    Returns
    -------
    ndarray, shape (n, min(d_out, d))
    """
    mean, cov = as_gaussian(mean, cov)
    n, rng = _check_n(n), numpy_rng(seed, "seed")
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    device = next(iter(params.values())).device if params else torch.device("cpu")
    # the draws are made in numpy (the same as mc_network's) and moved explicitly to the model's device
    x = torch.from_numpy(np.concatenate(list(_sample(mean, cov, n, rng)))).to(device)

    def f(xi):
        return torch.func.functional_call(model, params, (xi,))

    jac = torch.vmap(torch.func.jacrev(f))(x)
    return torch.linalg.svdvals(jac).cpu().numpy()

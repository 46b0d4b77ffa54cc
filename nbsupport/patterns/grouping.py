r"""Grouping rows by their activation pattern, fast, for any width: codes, packing, groups.

A pattern of ``m`` units has the code :math:`\sum_i a_i 2^i` (unit ``i`` is bit ``i``), the one
convention of the package (:mod:`nbsupport.orthant` uses these functions for its codes).
:func:`pack_patterns` packs rows into int64 words in that order, :func:`unpack_codes` inverts it,
and :func:`group_by_pattern` finds the distinct rows by sorting the packed words.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import torch

from .._validate import integer

__all__ = ["group_by_pattern", "pack_patterns", "unpack_codes", "Groups", "WORD_BITS"]

#: Bits per packed word: 63, so that every word is a non-negative int64 and signed order is code order.
WORD_BITS = 63


def pack_patterns(gates: torch.Tensor) -> torch.Tensor:
    """Pack the rows of a bool matrix into int64 words, 63 bits per word.

    Parameters
    ----------
    gates : Tensor, bool, shape (N, m)

    Returns
    -------
    Tensor, int64, shape (N, ceil(m / 63))
        Word ``j`` holds units ``63 j ... 63 j + 62``, unit ``63 j + i`` as bit ``i``. Every word is
        non-negative, so comparing words as signed integers orders patterns by their code
        :math:`\\sum_i a_i 2^i` (most significant word last).
    """
    if not isinstance(gates, torch.Tensor) or gates.dtype != torch.bool or gates.ndim != 2:
        raise ValueError(f"gates must be a bool tensor of shape (N, m), got "
                         f"{getattr(gates, 'dtype', type(gates).__name__)} of shape {tuple(getattr(gates, 'shape', ()))}")
    n, m = gates.shape
    n_words = max(1, -(-m // WORD_BITS))
    out = torch.empty(n, n_words, dtype=torch.int64, device=gates.device)
    for start in range(0, n, _PACK_ROWS):  # row blocks: the byte buffers stay in cache
        out[start: start + _PACK_ROWS] = _pack_block(gates[start: start + _PACK_ROWS], n_words)
    return out


def unpack_codes(codes: torch.Tensor, m: int) -> torch.Tensor:
    """The patterns of ``m`` units with the given codes, the inverse of :func:`pack_patterns`.

    Parameters
    ----------
    codes : Tensor, integer, shape (N,)
        Codes :math:`\\sum_i a_i 2^i` in ``[0, 2**m)``.
    m : int
        Number of units, at most 62 (a code fits one non-negative int64).

    Returns
    -------
    Tensor, bool, shape (N, m)
        Row ``k`` has unit ``i`` on when bit ``i`` of ``codes[k]`` is set.
    """
    m = integer(m, "m", minimum=0)
    if m > WORD_BITS - 1:
        raise ValueError(f"m must be at most {WORD_BITS - 1} (one int64 code), got {m}")
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.ndim != 1:
        raise ValueError(f"codes must be a 1-D integer tensor, got {codes!r:.60}")
    codes = codes.to(torch.int64)
    if len(codes) and (codes.min() < 0 or codes.max() >= 2**m):
        raise ValueError(f"codes must lie in [0, 2**{m}), got values in "
                         f"[{int(codes.min())}, {int(codes.max())}]")
    shifts = torch.arange(m, device=codes.device)
    return ((codes[:, None] >> shifts) & 1).bool()


# Rows packed at a time by :func:`pack_patterns` (its buffers take 64 bytes per row and word).
_PACK_ROWS = 1 << 14


def _pack_block(gates: torch.Tensor, n_words: int) -> torch.Tensor:
    """:func:`pack_patterns` of a block of rows: bits to bytes by eight shifted ORs, bytes to words by a view."""
    n, m = gates.shape
    gates = gates.contiguous()
    if n_words == 1 and m % 8 == 0 and m > 0:
        bits = gates.view(torch.uint8).view(n, m // 8, 8)          # bool is one byte 0/1: no copy
    elif n_words == 1:
        bits = torch.zeros(n, -(-m // 8), 8, dtype=torch.uint8, device=gates.device)
        bits.view(n, -1)[:, :m] = gates
    else:  # word j: units 63 j ... 63 j + 62 in bits 0..62, bit 63 zero
        flat = torch.zeros(n, n_words * WORD_BITS, dtype=torch.uint8, device=gates.device)
        flat[:, :m] = gates
        bits = torch.zeros(n, n_words, 64, dtype=torch.uint8, device=gates.device)
        bits[:, :, :WORD_BITS] = flat.view(n, n_words, WORD_BITS)
        bits = bits.view(n, n_words * 8, 8)
    packed = bits[..., 0].clone()                                   # byte k: bits 8k ... 8k + 7
    for i in range(1, 8):
        packed |= bits[..., i] << i
    if packed.shape[1] < 8 * n_words:                               # one word, fewer than 8 bytes
        packed = torch.cat([packed, packed.new_zeros(n, 8 * n_words - packed.shape[1])], dim=1)
    if sys.byteorder == "big":                                      # the words' bytes, least significant first
        packed = packed.view(n, n_words, 8).flip(-1).contiguous()
    return packed.view(torch.int64).view(n, n_words)


class Groups(NamedTuple):
    """Distinct patterns, as :func:`group_by_pattern` returns them.

    Attributes
    ----------
    patterns : Tensor, bool, shape (G, m)
        The distinct rows, most frequent first; ties in order of increasing code.
    inverse : Tensor, long, shape (N,)
        ``patterns[inverse] == gates``.
    counts : Tensor, long, shape (G,)
        Rows per pattern, non-increasing.
    """

    patterns: torch.Tensor
    inverse: torch.Tensor
    counts: torch.Tensor


def group_by_pattern(gates: torch.Tensor) -> Groups:
    """Group the rows of a gate matrix by their pattern.

    Same contract as ``torch.unique(gates, dim=0, return_inverse=True, return_counts=True)``
    except for the order of the groups: by count, descending, ties broken by increasing code
    :math:`\\sum_i a_i 2^i`. Rows are packed into int64 words (:func:`pack_patterns`, eight units per
    byte operation), so the work is one sort of ``N`` integers per 63 units (two beyond the first),
    :math:`O(N \\log N)`, for any width ``m``.

    Parameters
    ----------
    gates : Tensor, bool, shape (N, m)
        One pattern per row, ``N >= 1``.

    Returns
    -------
    Groups
        ``(patterns [G, m] bool, inverse [N] long, counts [G] long)``.
    """
    words = pack_patterns(gates)
    if len(words) == 0:
        raise ValueError("gates must have at least one row")
    _, rank, counts = torch.unique(words[:, -1], return_inverse=True, return_counts=True)
    # beyond 63 units: dense ranks of the multi-word keys, most significant word first; every rank
    # is < N, so rank * N + next_rank fits in int64 for N < 3e9 (faster than a lexicographic sort)
    for j in range(words.shape[1] - 2, -1, -1):
        _, word_rank = torch.unique(words[:, j], return_inverse=True)
        _, rank, counts = torch.unique(rank * len(words) + word_rank, return_inverse=True, return_counts=True)
    n_groups = len(counts)
    order = torch.sort(counts, descending=True, stable=True).indices  # ranks already follow the code
    position = torch.empty_like(order)
    position[order] = torch.arange(n_groups, device=order.device)
    inverse = position[rank]
    first = torch.full((n_groups,), len(words), dtype=torch.long, device=words.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(words), device=words.device), reduce="amin")
    return Groups(gates[first], inverse, counts[order])

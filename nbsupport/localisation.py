r"""Localisation on mosaics: does a map put its relevance on the tiles of the class it explains?

The Focus metric of :cite:t:`arias2022focus`: a 2x2 *mosaic* is made of four images, two of the
target class and two of other classes, at random places (:func:`mosaics`); a map of the target
class should put its positive relevance on the two target tiles. :func:`focus` is the share it puts
there: 1 is perfect, and a map whose positive part is spread evenly over the mosaic scores 0.5.

A network built for one image of ``H x W`` reads a ``2H x 2W`` mosaic as the *tiled classifier*
(:func:`mosaic_logits`): the sum of its logits over the four tiles. Its map for a class is the four
tiles' maps side by side (:func:`tile_maps`), so every attribution method of the single-image
network applies unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._validate import check_input, check_target, integer, labels, numpy_rng

__all__ = ["Mosaics", "mosaics", "focus", "tiles", "untile", "mosaic_logits", "tile_maps"]


class Mosaics(NamedTuple):
    """Mosaics of :func:`mosaics`.

    Attributes
    ----------
    images : Tensor
        Shape ``(M, C, 2H, 2W)``; tiles in the order top-left, top-right, bottom-left,
        bottom-right.
    target : Tensor, long, shape (M,)
        The class of which two tiles are shown.
    target_tiles : Tensor
        Bool, shape ``(M, 4)``: which tiles show the target class (exactly two per mosaic).
    sources : Tensor
        Long, shape ``(M, 4)``: the index into ``x`` of each tile.
    """

    images: torch.Tensor
    target: torch.Tensor
    target_tiles: torch.Tensor
    sources: torch.Tensor


def mosaics(x: torch.Tensor, y, n: int, rng=0) -> Mosaics:
    """2x2 mosaics for the Focus metric :cite:p:`arias2022focus`.

    Each mosaic draws a target class uniformly among the classes that can fill it, two
    distinct images of it and one image each of two other, distinct classes (so that no other
    class fills two tiles and ties with the target), and places the four at a random
    permutation of the tiles.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
    y : Tensor, integer, shape (N,)
        Class labels; some class must have two images or more, and images of two other classes.
    n : int
        Number of mosaics, >= 1.
    rng : int or numpy.random.Generator

    Returns
    -------
    Mosaics
    """
    check_input(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    y = labels(y, len(x), "y").cpu().numpy()
    n = integer(n, "n", minimum=1)
    classes, counts = np.unique(y, return_counts=True)
    eligible = classes[counts >= 2] if len(classes) >= 3 else classes[:0]
    if len(eligible) == 0:
        raise ValueError("y must have a class with two images or more and images of two other classes")
    gen = numpy_rng(rng, "rng")
    sources = np.empty((n, 4), dtype=np.int64)
    is_target = np.empty((n, 4), dtype=bool)
    target = gen.choice(eligible, size=n)
    for m, c in enumerate(target):
        own = gen.choice(np.flatnonzero(y == c), 2, replace=False)
        pair = gen.choice(classes[classes != c], 2, replace=False)
        rest = [gen.choice(np.flatnonzero(y == d)) for d in pair]
        place = gen.permutation(4)
        sources[m, place] = np.concatenate([own, rest])
        is_target[m, place] = [True, True, False, False]
    idx = torch.from_numpy(sources).to(x.device)
    tiles = x[idx]  # (M, 4, C, H, W)
    top = torch.cat([tiles[:, 0], tiles[:, 1]], 3)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], 3)
    return Mosaics(torch.cat([top, bottom], 2), torch.from_numpy(target).to(x.device),
                   torch.from_numpy(is_target).to(x.device), idx)


def focus(attribution: torch.Tensor, target_tiles: torch.Tensor) -> torch.Tensor:
    r"""Focus :cite:p:`arias2022focus`: the share of a map's positive relevance on the target tiles.

    :math:`\sum_{i \in T} \max(a_i, 0) / \sum_i \max(a_i, 0)` over the entries of all channels,
    :math:`T` the target tiles (the quadrants of the map). As Quantus's ``Focus``
    :cite:p:`hedstrom2023quantus` without its normalisation (the share does not depend on the
    map's scale). A map with no positive entry points nowhere: it scores the target tiles' share
    of the area, as a constant map does (chance), not 0.

    Parameters
    ----------
    attribution : Tensor
        Shape ``(M, C, 2H, 2W)``.
    target_tiles : Tensor
        Bool, shape ``(M, 4)``: quadrants top-left, top-right, bottom-left, bottom-right (:attr:`Mosaics.target_tiles`).

    Returns
    -------
    Tensor, float64, shape (M,), on the map's device
    """
    if not isinstance(attribution, torch.Tensor) or not attribution.is_floating_point() \
            or attribution.ndim != 4 or attribution.shape[2] % 2 or attribution.shape[3] % 2:
        raise ValueError(f"attribution must be a floating tensor (M, C, 2H, 2W) with even sides, got "
                         f"{getattr(attribution, 'shape', type(attribution).__name__)}")
    m, _, h2, w2 = attribution.shape
    if not isinstance(target_tiles, torch.Tensor) or target_tiles.dtype != torch.bool \
            or target_tiles.shape != (m, 4):
        raise ValueError(f"target_tiles must be a bool tensor of shape ({m}, 4), got "
                         f"{getattr(target_tiles, 'shape', type(target_tiles).__name__)}")
    positive = attribution.double().clamp_min(0).sum(1)  # (M, 2H, 2W)
    quadrants = positive.reshape(m, 2, h2 // 2, 2, w2 // 2).sum((2, 4)).reshape(m, 4)
    total = quadrants.sum(1)
    inside = (quadrants * target_tiles.to(quadrants.device)).sum(1)
    chance = target_tiles.to(quadrants).sum(1) / 4
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1), chance)


def tiles(images: torch.Tensor) -> torch.Tensor:
    """The four tiles of each mosaic, as one batch.

    Parameters
    ----------
    images : Tensor
        Shape ``(M, C, 2H, 2W)``.

    Returns
    -------
    Tensor
        Shape ``(4M, C, H, W)``: mosaic ``m``'s tiles at rows ``4m`` to ``4m + 3``, in the order
        top-left, top-right, bottom-left, bottom-right (the inverse of :func:`untile`).
    """
    check_input(images, "images")
    if images.ndim != 4 or images.shape[2] % 2 or images.shape[3] % 2:
        raise ValueError(f"images must have shape (M, C, 2H, 2W) with even sides, got {tuple(images.shape)}")
    m, c, h2, w2 = images.shape
    split = images.reshape(m, c, 2, h2 // 2, 2, w2 // 2).permute(0, 2, 4, 1, 3, 5)
    return split.reshape(4 * m, c, h2 // 2, w2 // 2)


def untile(batch: torch.Tensor) -> torch.Tensor:
    """Mosaics from their tiles: the inverse of :func:`tiles`.

    Parameters
    ----------
    batch : Tensor
        Shape ``(4M, C, H, W)``, four consecutive rows per mosaic.

    Returns
    -------
    Tensor, shape (M, C, 2H, 2W)
    """
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or len(batch) % 4:
        raise ValueError(f"batch must be a tensor (4M, C, H, W), got "
                         f"{getattr(batch, 'shape', type(batch).__name__)}")
    n4, c, h, w = batch.shape
    grid = batch.reshape(n4 // 4, 2, 2, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n4 // 4, c, 2 * h, 2 * w)


def mosaic_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of the tiled classifier: the sum of ``model``'s logits over the four tiles.

    Parameters
    ----------
    model : nn.Module
        Takes ``(N, C, H, W)`` images, returns ``(N, K)`` logits.
    images : Tensor, shape (M, C, 2H, 2W)

    Returns
    -------
    Tensor, shape (M, K)
    """
    out = model(tiles(images))
    return out.reshape(len(images), 4, -1).sum(1)


def tile_maps(attribute, model: torch.nn.Module, images: torch.Tensor, target) -> torch.Tensor:
    """The tiled classifier's map of ``target``: each tile's map of ``target``, side by side.

    Exact for any map that is the derivative of the explained logit (gradient, pullback, their
    products with the input): the tiled logit is a sum over tiles, each term depending on its own
    tile only.

    Parameters
    ----------
    attribute : callable
        ``attribute(model, x, target) -> Tensor`` shaped like ``x``.
    model : nn.Module
    images : Tensor, shape (M, C, 2H, 2W)
    target : int or Tensor of shape (M,)

    Returns
    -------
    Tensor, shape (M, C, 2H, 2W)
    """
    if not callable(attribute):
        raise ValueError(f"attribute must be callable as attribute(model, x, target), got {attribute!r}")
    with torch.no_grad():
        n_classes = mosaic_logits(model, images[:1]).shape[1]
    target = check_target(target, len(images), n_classes, images.device)
    return untile(attribute(model, tiles(images), target.repeat_interleave(4)))

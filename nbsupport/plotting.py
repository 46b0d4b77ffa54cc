"""The book's one figure style, and drawing helpers shared by several chapters.

Every chapter calls :func:`set_style` once; figures are drawn inline and rebuilt on every build.
Conventions: analytic curves are lines, Monte Carlo results are markers or histograms, colours
come from the colour-blind-safe palette :data:`PALETTE`.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

__all__ = ["PALETTE", "ANALYTIC", "MONTE_CARLO", "set_style", "image_grid"]

#: Seaborn's colour-blind-safe qualitative palette (10 colours).
PALETTE = tuple(sns.color_palette("colorblind"))
#: Colour for analytic / numerically exact results.
ANALYTIC = PALETTE[0]
#: Colour for Monte Carlo estimates.
MONTE_CARLO = PALETTE[3]


def set_style(context: str = "notebook") -> None:
    """Apply the book's figure style (seaborn ``ticks`` theme, colour-blind palette, fixed sizes).

    Parameters
    ----------
    context : str
        A seaborn context (``"paper"``, ``"notebook"``, ``"talk"``, ``"poster"``).
    """
    if context not in ("paper", "notebook", "talk", "poster"):
        raise ValueError(f"context must be one of paper, notebook, talk, poster; got {context!r}")
    sns.set_theme(context=context, style="ticks", palette=list(PALETTE))
    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": "medium",
        "legend.frameon": False,
        "image.cmap": "viridis",
        "figure.constrained_layout.use": True,
    })


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 8, cmap: str = "gray_r",
               size: float = 1.2) -> plt.Figure:
    """Show images in a grid without axes.

    Parameters
    ----------
    images : array-like, shape (K, H, W) or (K, 1, H, W) or (K, H*W) with H*W a square
        Greyscale images (any range; each is shown with its own colour scale).
    titles : sequence of str, optional
        One title per image.
    ncols : int
        Images per row, >= 1.
    size : float
        Side of one image in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    images = np.asarray(images, dtype=float)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    elif images.ndim == 2:
        side = int(round(np.sqrt(images.shape[1])))
        if side * side != images.shape[1]:
            raise ValueError(f"images of shape {images.shape} are not square when unflattened")
        images = images.reshape(len(images), side, side)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"images must have shape (K, H, W), (K, 1, H, W) or (K, H*W), got {images.shape}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles must have one entry per image ({len(images)}), got {len(titles)}")
    if not (isinstance(ncols, int) and ncols >= 1):
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}")
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * (1.25 if titles else 1)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(images[k], cmap=cmap)
            if titles is not None:
                ax.set_title(titles[k], fontsize="small")
    return fig

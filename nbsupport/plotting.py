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
try:
    import seaborn as sns
except ImportError as err:  # an extra (pyproject.toml): say which
    raise ImportError("nbsupport.plotting needs seaborn: pip install 'nbsupport[plotting]'") from err
import torch
from matplotlib.patches import Ellipse

from ._validate import integer, module, real
from .patterns import activation_patterns, group_by_pattern
from .report import format_p

__all__ = ["PALETTE", "ANALYTIC", "MONTE_CARLO", "VERDICT_COLOURS", "MAX_WIDTH", "MIN_FONT_SIZE",
           "set_style", "image_grid", "pattern_regions", "covariance_ellipse", "forest"]

#: Seaborn's colour-blind-safe qualitative palette (10 colours).
PALETTE = tuple(sns.color_palette("colorblind"))
#: Colour for analytic / numerically exact results.
ANALYTIC = PALETTE[0]
#: Colour for Monte Carlo estimates.
MONTE_CARLO = PALETTE[3]
#: Widest figure in inches that the book's text column shows at >= 95 px per inch (about 670 px).
MAX_WIDTH = 7.0
#: Smallest font size in points of every text element the style sets.
MIN_FONT_SIZE = 9.0
#: Colour of each verdict label of :func:`nbsupport.stats.verdict` in :func:`forest`.
VERDICT_COLOURS = {"better": PALETTE[2], "worse": PALETTE[3], "equivalent": PALETTE[0],
                   "not separated": (0.45, 0.45, 0.45)}
_FONT_KEYS = ("font.size", "axes.labelsize", "axes.titlesize", "xtick.labelsize", "ytick.labelsize",
              "legend.fontsize", "legend.title_fontsize", "figure.titlesize")


def set_style(context: str = "notebook") -> None:
    """Apply the book's figure style (seaborn ``ticks`` theme, colour-blind palette, fixed sizes).

    Figures default to 6.4 x 4 in (at most :data:`MAX_WIDTH` wide), every font size the style sets
    is at least :data:`MIN_FONT_SIZE` points, and inside a Jupyter kernel figures are rendered as
    PNG at twice the figure's dpi with their size in the output's metadata ("retina"), so the book
    shows them sharp on high-density screens at their drawn size.

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
    for key in _FONT_KEYS:  # "paper" sets 8.8 pt ticks: raise every size to the floor
        size = mpl.font_manager.FontProperties(size=mpl.rcParams[key]).get_size_in_points()
        mpl.rcParams[key] = max(size, MIN_FONT_SIZE)
    _retina_inline()


def _retina_inline() -> None:
    """Inside an IPython kernel, render inline figures as 2x PNG (no-op elsewhere)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the book's extras
        return
    if get_ipython() is None:
        return
    from matplotlib_inline.backend_inline import set_matplotlib_formats
    set_matplotlib_formats("retina")


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
        Side of one image in inches; reduced so that the figure is at most :data:`MAX_WIDTH` wide.

    Returns
    -------
    matplotlib.figure.Figure
    """
    images = _numpy(images)
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
    ncols = min(integer(ncols, "ncols", minimum=1), len(images))
    nrows = -(-len(images) // ncols)
    size = min(real(size, "size", low=0), MAX_WIDTH / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * (1.25 if titles else 1)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(images[k], cmap=cmap)
            if titles is not None:
                ax.set_title(titles[k], fontsize=max(MIN_FONT_SIZE, mpl.rcParams["font.size"] * 0.8))
    return fig


def pattern_regions(ax: plt.Axes, model: torch.nn.Module, extent: Sequence[float], layers: Sequence[int] = (0,),
                    resolution: int = 400, alpha: float = 0.35) -> int:
    """Colour a 2-D input plane by activation pattern and draw the units' boundaries.

    Parameters
    ----------
    ax : matplotlib Axes
    model : nn.Module
        Takes inputs of shape (N, 2); its ``nn.ReLU`` modules define the patterns.
    extent : (x_min, x_max, y_min, y_max)
    layers : sequence of int
        Which ReLU layers (0 = first) make up the pattern; boundaries of their units are drawn.
    resolution : int
        Grid points per axis.
    alpha : float
        Opacity of the region colours.

    Returns
    -------
    int
        Number of distinct patterns (regions) visible in the plane.
    """
    module(model)
    try:
        x0, x1, y0, y1 = (real(v, "extent") for v in extent)
    except (TypeError, ValueError):
        raise ValueError(f"extent must be (x_min, x_max, y_min, y_max) with min < max, got {extent!r}") from None
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"extent must be (x_min, x_max, y_min, y_max) with min < max, got {extent!r}")
    weight = next(model.parameters())  # the grid is made where the model lives, drawn from the CPU
    gx, gy = torch.meshgrid(torch.linspace(x0, x1, resolution, dtype=weight.dtype, device=weight.device),
                            torch.linspace(y0, y1, resolution, dtype=weight.dtype, device=weight.device),
                            indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    gates = [g.cpu() for g in activation_patterns(model, grid)]
    gx, gy = gx.cpu(), gy.cpu()
    selected = torch.cat([gates[l] for l in layers], dim=1)
    groups = group_by_pattern(selected)
    colours = mpl.colors.ListedColormap(sns.color_palette("husl", 24))
    ids = groups.inverse.reshape(resolution, resolution).numpy()
    # a fixed scramble of group ids so that neighbouring regions rarely share a colour
    ax.imshow((ids * 7) % 24, extent=extent, origin="lower", cmap=colours, alpha=alpha, aspect="auto",
              interpolation="nearest", vmin=0, vmax=23)
    for l in layers:
        g = gates[l].reshape(resolution, resolution, -1).numpy().astype(float)
        for unit in range(g.shape[2]):
            if 0 < g[:, :, unit].mean() < 1:
                ax.contour(gx.numpy(), gy.numpy(), g[:, :, unit], levels=[0.5], colors="k", linewidths=0.5, alpha=0.6)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    return len(groups.counts)


def covariance_ellipse(ax: plt.Axes, mean, cov, n_std: float = 2.0, **kwargs) -> Ellipse:
    r"""Draw the ellipse :math:`(x-\mu)^\top \Sigma^{-1} (x-\mu) = n_{std}^2` of a 2-D Gaussian.

    Parameters
    ----------
    ax : matplotlib Axes
    mean : array-like, shape (2,)
    cov : array-like, shape (2, 2)
        Symmetric positive semi-definite.
    n_std : float
        Radius in standard deviations (> 0).
    **kwargs
        Passed to :class:`matplotlib.patches.Ellipse` (default: no fill).

    Returns
    -------
    matplotlib.patches.Ellipse
    """
    mean, cov = _numpy(mean), _numpy(cov)
    if mean.shape != (2,) or cov.shape != (2, 2):
        raise ValueError(f"mean must have shape (2,) and cov (2, 2), got {mean.shape} and {cov.shape}")
    n_std = real(n_std, "n_std", low=0)
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0, None)
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    kwargs.setdefault("fill", False)
    ellipse = Ellipse(mean, 2 * n_std * np.sqrt(values[1]), 2 * n_std * np.sqrt(values[0]), angle=angle, **kwargs)
    ax.add_patch(ellipse)
    return ellipse


_VERDICT_FIELDS = ("name", "estimate", "low", "high", "p_adjusted", "label")


def forest(verdicts, ax: plt.Axes | None = None, *, margin=None, xlabel: str = "difference (A - B)",
           annotate: bool = True, width: float = 6.4) -> plt.Axes:
    """Draw comparisons as a forest plot: one row per comparison, its estimate and interval.

    The rows keep the order of ``verdicts`` from top to bottom; a vertical line marks zero (no
    difference) and, given a ``margin``, a grey band marks the equivalence region. Points and
    intervals are coloured by the verdict's label (:data:`VERDICT_COLOURS`); with ``annotate`` the
    label and the adjusted p-value are written at the right of each row.

    Parameters
    ----------
    verdicts : sequence of nbsupport.stats.Verdict
        Each with fields ``name``, ``estimate``, ``low``, ``high``, ``p_adjusted`` and ``label``
        (further fields such as ``p`` and ``p_equivalence`` are ignored); ``low <= high``.
    ax : matplotlib Axes, optional
        Where to draw; by default a new figure ``width`` inches wide, 0.45 in per row.
    margin : float or dict of str to float, optional
        Equivalence margin (> 0): one for every row (a band over the whole height), or one per
        comparison name (a band behind each row; names absent from the dict get none).
    xlabel : str
        Label of the horizontal axis (the difference and its unit).
    annotate : bool
        Write each row's label and adjusted p-value at its right.
    width : float
        Width in inches of a new figure, at most :data:`MAX_WIDTH`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if isinstance(verdicts, (str, bytes)) or not hasattr(verdicts, "__iter__"):
        raise ValueError(f"verdicts must be a sequence of nbsupport.stats.Verdict, got {type(verdicts).__name__}")
    rows = list(verdicts)
    if not rows:
        raise ValueError("verdicts must hold at least one comparison, got none")
    for k, row in enumerate(rows):
        missing = [f for f in _VERDICT_FIELDS if not hasattr(row, f)]
        if missing:
            raise ValueError(f"verdicts[{k}] must be a Verdict with fields {', '.join(_VERDICT_FIELDS)}; "
                             f"missing {', '.join(missing)}")
        low, high = real(row.low, f"verdicts[{k}].low"), real(row.high, f"verdicts[{k}].high")
        estimate = real(row.estimate, f"verdicts[{k}].estimate")
        if not low <= estimate <= high:
            raise ValueError(f"verdicts[{k}] must have low <= estimate <= high, got "
                             f"{low!r}, {estimate!r}, {high!r}")
        if row.label not in VERDICT_COLOURS:
            raise ValueError(f"verdicts[{k}].label must be one of {', '.join(VERDICT_COLOURS)}; "
                             f"got {row.label!r}")
    if isinstance(margin, dict):
        margins = {name: real(m, f"margin[{name!r}]", low=0) for name, m in margin.items()}
    elif margin is not None:
        margins = {row.name: real(margin, "margin", low=0) for row in rows}
    else:
        margins = {}
    if ax is None:
        width = real(width, "width", low=0, high=MAX_WIDTH)
        _, ax = plt.subplots(figsize=(width, 0.8 + 0.45 * len(rows)))
    n = len(rows)
    ys = np.arange(n)[::-1].astype(float)  # first comparison on top
    if margin is not None and not isinstance(margin, dict):
        m = margins[rows[0].name]
        ax.axvspan(-m, m, color="0.88", zorder=0, lw=0, label=f"equivalence margin ±{m:g}")
    else:
        for y, row in zip(ys, rows):
            if row.name in margins:
                m = margins[row.name]
                ax.fill_betweenx([y - 0.4, y + 0.4], -m, m, color="0.88", zorder=0, lw=0)
    ax.axvline(0.0, color="k", lw=0.8, zorder=1)
    for y, row in zip(ys, rows):
        colour = VERDICT_COLOURS[row.label]
        ax.plot([float(row.low), float(row.high)], [y, y], color=colour, lw=2, solid_capstyle="butt",
                zorder=2)
        ax.plot([float(row.estimate)], [y], "o", color=colour, ms=6, zorder=3)
    ax.set_yticks(ys, [str(row.name) for row in rows])
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", length=0)
    if annotate:
        transform = mpl.transforms.blended_transform_factory(ax.transAxes, ax.transData)
        for y, row in zip(ys, rows):
            ax.text(1.02, y, f"{row.label}, p {format_p(row.p_adjusted)}", transform=transform,
                    va="center", ha="left", color=VERDICT_COLOURS[row.label],
                    fontsize=max(MIN_FONT_SIZE, mpl.rcParams["font.size"] * 0.8))
    return ax


def _numpy(values) -> np.ndarray:
    """A float64 NumPy copy of an array-like or a tensor on any device."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values, dtype=float)

"""nbsupport.plotting: the style is applied and the image grid lays out what it is given."""

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest

from nbsupport.plotting import PALETTE, image_grid, set_style


def test_set_style():
    set_style()
    assert mpl.rcParams["axes.spines.top"] is False
    colours = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    assert mpl.colors.to_rgb(colours[0]) == pytest.approx(PALETTE[0])
    with pytest.raises(ValueError, match="context"):
        set_style("huge")


@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 1, 28, 28), (5, 784)])
def test_image_grid_shapes(shape):
    images = np.random.default_rng(0).random(shape)
    fig = image_grid(images, titles=list("abcde"), ncols=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5  # 2 rows x 3 columns, the last one empty
    assert shown[0].images[0].get_array().shape == (28, 28)
    assert [ax.get_title() for ax in shown] == list("abcde")
    plt.close(fig)


def test_image_grid_bad_input():
    with pytest.raises(ValueError, match="square"):
        image_grid(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="titles"):
        image_grid(np.zeros((2, 4, 4)), titles=["a"])
    with pytest.raises(ValueError, match="ncols"):
        image_grid(np.zeros((2, 4, 4)), ncols=0)


def test_pattern_regions_counts_regions_of_a_known_arrangement():
    import torch
    from torch import nn

    from nbsupport.plotting import pattern_regions
    # three lines x = 0, y = 0, x + y = 0.5 cut the square [-1, 1]^2 into 7 regions
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, -0.5]))
    model = nn.Sequential(layer, nn.ReLU())
    fig, ax = plt.subplots()
    assert pattern_regions(ax, model, (-1, 1, -1, 1), resolution=101) == 7
    with pytest.raises(ValueError, match="extent"):
        pattern_regions(ax, model, (1, -1, -1, 1))
    plt.close(fig)


def test_covariance_ellipse_axes():
    from nbsupport.plotting import covariance_ellipse
    fig, ax = plt.subplots()
    # variance 4 along (1, 1)/sqrt 2 and 1 along (1, -1)/sqrt 2
    cov = np.array([[2.5, 1.5], [1.5, 2.5]])
    e = covariance_ellipse(ax, [1.0, 2.0], cov, n_std=1.0)
    assert e.width == pytest.approx(4.0) and e.height == pytest.approx(2.0)
    assert e.angle % 180 == pytest.approx(45.0)
    with pytest.raises(ValueError, match="cov"):
        covariance_ellipse(ax, [0, 0], np.eye(3))
    plt.close(fig)


def test_helpers_take_tensors_and_numpy_scalars():
    import torch

    from nbsupport.plotting import covariance_ellipse
    fig, ax = plt.subplots()
    cov = torch.tensor([[2.5, 1.5], [1.5, 2.5]], dtype=torch.float64, requires_grad=True)
    e = covariance_ellipse(ax, torch.tensor([1.0, 2.0]), cov, n_std=np.float64(1.0))
    assert e.width == pytest.approx(4.0)
    plt.close(fig)
    plt.close(image_grid(torch.rand(4, 1, 5, 5), ncols=np.int64(2)))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_pattern_regions_with_a_model_on_the_gpu():
    import torch
    from torch import nn

    from nbsupport.plotting import pattern_regions
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU()).cuda()
    fig, ax = plt.subplots()
    assert pattern_regions(ax, model, (-1, 1, -1, 1), resolution=51) >= 1
    plt.close(fig)


# A stand-in for nbsupport.stats.Verdict with the same fields, written out by hand.
Verdict = __import__("collections").namedtuple(
    "Verdict", "name estimate low high p p_adjusted p_equivalence label")
VERDICTS = [
    Verdict("pullback vs gradient", 0.30, 0.10, 0.50, 0.001, 0.002, 0.9, "better"),
    Verdict("pullback vs class mean", -0.02, -0.04, 0.01, 0.20, 0.40, 0.01, "equivalent"),
    Verdict("pullback vs noise", -0.25, -0.45, -0.05, 0.004, 0.008, 0.95, "worse"),
    Verdict("smoothgrad vs gradient", 0.05, -0.15, 0.20, 0.60, 0.60, 0.50, "not separated"),
]


def _intervals(ax):
    """The horizontal interval lines of a forest plot: (y, x_low, x_high, colour), top first."""
    found = []
    for line in ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        if len(x) == 2 and y[0] == y[1] and line.get_marker() in ("None", "", None):
            found.append((y[0], min(x), max(x), mpl.colors.to_rgb(line.get_color())))
    return sorted(found, key=lambda row: -row[0])


def test_forest_draws_each_interval_in_order_with_its_label_colour():
    from nbsupport.plotting import VERDICT_COLOURS, forest
    set_style()
    ax = forest(VERDICTS)
    rows = _intervals(ax)
    assert [(lo, hi) for _, lo, hi, _ in rows] == [(v.low, v.high) for v in VERDICTS]
    assert [c for *_, c in rows] == [mpl.colors.to_rgb(VERDICT_COLOURS[v.label]) for v in VERDICTS]
    assert [t.get_text() for t in ax.get_yticklabels()] == [v.name for v in VERDICTS]
    # each estimate is a marker on its own row, inside its interval
    points = sorted(((l.get_ydata()[0], l.get_xdata()[0]) for l in ax.get_lines() if l.get_marker() == "o"),
                    key=lambda p: -p[0])
    assert [x for _, x in points] == [v.estimate for v in VERDICTS]
    assert [y for y, _ in points] == [y for y, *_ in rows]
    # the zero line, and labels with adjusted p-values at the right
    assert any(list(l.get_xdata()) == [0, 0] for l in ax.get_lines())
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == "better, p = 0.002" and texts[1] == "equivalent, p = 0.4"
    assert ax.figure.get_figwidth() <= 7.0
    plt.close(ax.figure)


def test_forest_margin_band_covers_minus_to_plus_margin():
    from nbsupport.plotting import forest
    ax = forest(VERDICTS, margin=0.05)
    bands = [p for p in ax.patches]
    assert len(bands) == 1
    x0, x1 = bands[0].get_extents().x0, bands[0].get_extents().x1  # in display units
    to_data = ax.transData.inverted()
    assert to_data.transform((x0, 0))[0] == pytest.approx(-0.05, abs=1e-9)
    assert to_data.transform((x1, 0))[0] == pytest.approx(0.05, abs=1e-9)
    plt.close(ax.figure)
    # one margin per comparison: a band only behind the named rows
    fig, ax = plt.subplots()
    forest(VERDICTS, ax=ax, margin={"pullback vs class mean": 0.03, "pullback vs noise": 0.1})
    bands = ax.collections
    assert len(bands) == 2
    xs = sorted((round(p.get_paths()[0].vertices[:, 0].min(), 9), round(p.get_paths()[0].vertices[:, 0].max(), 9))
                for p in bands)
    assert xs == [(-0.1, 0.1), (-0.03, 0.03)]
    plt.close(fig)


def test_forest_bad_input():
    from nbsupport.plotting import forest
    with pytest.raises(ValueError, match="verdicts"):
        forest([])
    with pytest.raises(ValueError, match="low <= estimate <= high"):
        forest([VERDICTS[0]._replace(low=0.6)])
    with pytest.raises(ValueError, match="label"):
        forest([VERDICTS[0]._replace(label="maybe")])
    with pytest.raises(ValueError, match="fields"):
        forest([(0.1, 0.0, 0.2)])
    with pytest.raises(ValueError, match="margin"):
        forest(VERDICTS, margin=-0.1)
    with pytest.raises(ValueError, match="width"):
        forest(VERDICTS, width=12)


@pytest.mark.parametrize("context", ["paper", "notebook"])
def test_every_text_of_the_helpers_is_at_least_9_points(context):
    from nbsupport.plotting import MAX_WIDTH, forest
    set_style(context)
    for key in ("font.size", "xtick.labelsize", "ytick.labelsize", "legend.fontsize", "axes.titlesize"):
        size = mpl.font_manager.FontProperties(size=mpl.rcParams[key]).get_size_in_points()
        assert size >= 9, (context, key, size)
    assert mpl.rcParams["figure.figsize"][0] <= MAX_WIDTH
    fig = image_grid(np.zeros((16, 4, 4)), titles=[str(k) for k in range(16)], ncols=8)
    ax = forest(VERDICTS, margin=0.05)
    for figure in (fig, ax.figure):
        figure.canvas.draw()
        texts = [t for t in figure.findobj(mpl.text.Text) if t.get_text() and t.get_visible()]
        assert texts and min(t.get_fontsize() for t in texts) >= 9
        assert figure.get_figwidth() <= MAX_WIDTH
        plt.close(figure)
    set_style()


def test_set_style_renders_retina_inside_a_kernel():
    """Inside IPython, set_style makes the inline PNG twice the figure's dpi, with its size in metadata."""
    IPython = pytest.importorskip("IPython")
    from IPython.testing.globalipapp import get_ipython
    shell = get_ipython()
    set_style()
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.plot([0, 1])
    # a terminal shell shows text only: ask the PNG formatter a kernel would use
    data, metadata = shell.display_formatter.formatters["image/png"].lookup(fig)(fig)
    png = __import__("base64").b64decode(data)
    width = int.from_bytes(png[16:20], "big")  # IHDR width
    assert metadata["width"] == pytest.approx(width / 2, abs=1)
    assert width > 1.9 * fig.dpi * 4  # 2x the drawn size (bbox 'tight' trims a little)
    plt.close(fig)


def test_forest_draws_the_verdicts_of_nbsupport_stats():
    """The real Verdict type: clear gain, clear loss, a null difference within a margin."""
    from nbsupport.plotting import VERDICT_COLOURS, forest
    from nbsupport.stats import verdict
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(0, 0.05, (8, 32))
    comparisons = {"gain": 0.5 + noise(), "loss": -0.5 + noise(), "none": noise()}
    verdicts = verdict(comparisons, margin=0.2, n_boot=400, rng=1)
    assert [v.label for v in verdicts] == ["better", "worse", "equivalent"]
    ax = forest(verdicts, margin=0.2)
    rows = _intervals(ax)
    assert [(lo, hi) for _, lo, hi, _ in rows] == [(v.low, v.high) for v in verdicts]
    assert [c for *_, c in rows] == [mpl.colors.to_rgb(VERDICT_COLOURS[v.label]) for v in verdicts]
    plt.close(ax.figure)

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

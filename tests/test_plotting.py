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

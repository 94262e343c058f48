"""Figures of the Inspect page: mosaics, the strip, the rectangle and its padding."""

import numpy as np
import torch

from explorer import inspect_charts as ic
from explorer.inspect import run_image
from explorer.inspect_rf import Rect
from explorer.models import build
from explorer.registry import get_preset


def test_mosaic_lays_tiles_out_row_by_row_with_gaps():
    tiles = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    z, index = ic.mosaic(tiles, cols=2, gap=1)
    # Two tiles side by side (2 + 1 + 2 columns), then the third under the first.
    assert z.shape == (5, 5)
    assert np.array_equal(z[0:2, 0:2], tiles[0]) and np.array_equal(z[0:2, 3:5], tiles[1])
    assert np.array_equal(z[3:5, 0:2], tiles[2])
    assert np.isnan(z[2]).all() and np.isnan(z[:, 2]).all() and np.isnan(z[3:5, 3:5]).all()
    assert index[4, 1] == 2 and index[0, 4] == 1 and index[2, 2] == -1


def test_the_rectangle_is_drawn_round_pixel_edges_with_padding_bands():
    rect = Rect(-2, 3, 2, 7, 10, 10)  # rows −2 … 2 (two in the padding), columns 3 … 7
    fig = ic.receptive_field_figure(torch.zeros(1, 10, 10), rect, "t")
    shapes = {s.name: s for s in fig.layout.shapes if s.name != "padding"}
    assert (shapes["rf"].y0, shapes["rf"].y1, shapes["rf"].x0, shapes["rf"].x1) == \
        (-2.5, 2.5, 2.5, 7.5)
    on = shapes["rf-on-image"]
    assert (on.y0, on.y1, on.x0, on.x1) == (-0.5, 2.5, 2.5, 7.5)
    bands = [s for s in fig.layout.shapes if s.name == "padding"]
    assert len(bands) == 1 and (bands[0].y0, bands[0].y1) == (-2.5, -0.5)
    # The axes reach half a pixel past the rectangle (top edge −2.5) and the image (9.5).
    assert fig.layout.yaxis.range == (10, -3)


def test_the_strip_runs_from_input_to_output():
    spec = get_preset("course_resnet18").spec
    model = build(spec)
    fwd = run_image(model, torch.randn(*spec.input_shape))
    layers = ic.strip_layers(fwd)
    assert len(layers) == 12 and layers[0] == "stem.conv" and layers[-1] == "head.pool"
    fig = ic.feature_strip(fwd, layers, [str(i) for i in range(10)])
    assert len(fig.data) == 14  # input, 12 layers, output
    assert np.allclose(np.asarray(fig.data[-1].z).ravel(), fwd.probs.numpy())


def test_probabilities_mark_the_top_and_the_true_class():
    fig = ic.probabilities_figure(torch.tensor([0.1, 0.7, 0.2]), ["a", "b", "c"], true_class=2)
    assert list(fig.data[0].marker.color) == ["#9ecae1", ic.RF_COLOR, "#2ca02c"]
    assert fig.layout.title.text == "Prediction: b (70.0%), true class: c"

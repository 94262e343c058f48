"""The Batch norm page's figures carry the numbers they are given, where a reader looks for them."""

import math

import numpy as np
import pandas as pd
import pytest

from explorer import bn, bn_charts


def test_heatmap_puts_channels_on_rows_and_steps_on_columns():
    steps = [1, 50, 100]
    values = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, -5.0]])  # steps × channels
    fig = bn_charts.stat_heatmap(steps, values, "bn1: batch mean", "mean", diverging=True)
    hm = fig.data[0]
    # Row c is channel c across the steps: channel 1 reads 1, 3, -5.
    assert np.asarray(hm.z).tolist() == [[0.0, 2.0, 4.0], [1.0, 3.0, -5.0]]
    assert list(hm.x) == steps and list(hm.y) == [0, 1]
    assert hm.zmid == 0 and fig.layout.title.text == "bn1: batch mean"
    seq = bn_charts.stat_heatmap(steps, values, "std", "std").data[0]
    assert seq.zmid is None


def test_running_vs_batch_pairs_dots_and_lines_per_channel():
    steps = np.array([1, 2, 3])
    bm = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]])
    rm = bm * 0.1
    bv, rv = bm + 100, rm + 100
    fig = bn_charts.running_vs_batch(steps, bm, rm, bv, rv, [1])
    # Channel 1: a dot trace and a line trace in each of the two panels.
    assert len(fig.data) == 4
    dots_mean, line_mean, dots_var, line_var = fig.data
    assert dots_mean.mode == "markers" and list(dots_mean.y) == [10.0, 11.0, 12.0]
    assert line_mean.mode == "lines" and list(line_mean.y) == pytest.approx([1.0, 1.1, 1.2])
    assert list(dots_var.y) == [110.0, 111.0, 112.0] and dots_var.xaxis == "x2"
    assert list(line_var.y) == pytest.approx([101.0, 101.1, 101.2])
    assert line_mean.line.color == dots_mean.marker.color  # one colour per channel
    assert [t.showlegend for t in fig.data].count(True) == 1


def test_gamma_beta_bars_and_their_starting_values():
    fig = bn_charts.gamma_beta_bars(np.array([1.2, 0.8]), np.array([-0.1, 0.3]), 150)
    assert list(fig.data[0].y) == [1.2, 0.8] and list(fig.data[1].y) == [-0.1, 0.3]
    assert sorted(s.y0 for s in fig.layout.shapes) == [0, 1]  # γ starts at 1, β at 0
    assert "step 150" in fig.layout.title.text


def test_histogram_bars_sit_between_their_edges():
    hist = {"in_edges": np.array([0.0, 1.0, 3.0]), "in_counts": np.array([5, 7]),
            "out_edges": np.array([-1.0, 0.0, 1.0]), "out_counts": np.array([4, 8]),
            "in_mean": 1.5, "in_std": 0.9, "out_mean": 0.0, "out_std": 1.0,
            "shape": (64, 6, 24, 24)}
    fig = bn_charts.activation_histograms(hist, "features.bn1", "after epoch 1")
    before, after = fig.data
    # Centres and widths from the edges by hand: bins [0,1] and [1,3] → centres 0.5 and 2.
    assert list(before.x) == [0.5, 2.0] and list(before.width) == [1.0, 2.0]
    assert list(before.y) == [5, 7] and list(after.x) == [-0.5, 0.5]
    titles = [a.text for a in fig.layout.annotations]
    assert "mean 1.50, std 0.90" in titles[0] and "mean 0.00, std 1.00" in titles[1]
    assert "64×6×24×24" in fig.layout.title.text


def test_batch_noise_reference_line_is_one_over_root_batch():
    rows = [{"batch_size": b, "mean_std": 2.0 / math.sqrt(b), "var_std": 1.0 / b}
            for b in (1, 4, 16)]
    fig = bn_charts.batch_noise({"fc": rows, "conv": rows[:2]})
    ref = next(t for t in fig.data if t.name == "1/√batch size")
    # Through the first point (batch 1, spread 2): 2/√1, 2/√4, 2/√16.
    assert list(ref.y) == pytest.approx([2.0, 1.0, 0.5])
    fc_mean = next(t for t in fig.data if t.name == "fc" and t.xaxis == "x")
    assert list(fc_mean.x) == [1, 4, 16]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_norm_axes_picture_colours_the_sets():
    axes = bn.norm_axes((2, 4, 1, 1), groups=2)
    fig = bn_charts.norm_axes_picture(axes)
    z = {k: np.asarray(t.z).tolist() for k, t in zip(axes, fig.data, strict=True)}
    # By hand for N=2, C=4, G=2: batch norm shares per channel, layer norm per example,
    # instance norm per (example, channel), group norm per (example, pair of channels).
    assert z["batch"] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert z["layer"] == [[0, 0, 0, 0], [1, 1, 1, 1]]
    assert z["instance"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert z["group"] == [[0, 0, 1, 1], [2, 2, 3, 3]]
    assert "over N, H, W" in fig.layout.annotations[0].text


def test_experiment_curves_with_chance_lines():
    steps = pd.DataFrame({"step": [1, 2], "loss": [2.3, 1.0]})
    plain = pd.DataFrame({"step": [1, 2], "loss": [2.4, 2.3]})
    epochs = pd.DataFrame({"epoch": [1], "test_acc": [0.9]})
    none = pd.DataFrame(columns=["epoch", "test_acc"])
    fig = bn_charts.experiment_curves(steps, plain, epochs, none)
    names = [(t.name, t.xaxis) for t in fig.data]
    assert names == [("with BN", "x"), ("with BN", "x2"), ("without BN", "x")]
    lines = sorted(s.y0 for s in fig.layout.shapes)
    assert lines == pytest.approx([0.1, math.log(10)])  # chance accuracy and ln 10

"""The Build and Train pages' figures: the numbers they draw, from hand counts."""

import pandas as pd
import pytest

from explorer import charts
from explorer.analysis import analyze
from explorer.models import build
from explorer.registry import get_preset


def test_group_totals_of_the_classic_lenet_by_hand():
    table = analyze(get_preset("course_lenet").spec).table
    groups = charts.group_totals(table).set_index("group")
    # features: conv(6,5) 156 + conv(16,5) 2416; head: 30840 + 10164 + 850.
    assert groups.loc["features", "params"] == 156 + 2416
    assert groups.loc["head", "params"] == 30840 + 10164 + 850
    # Lecture MACs of the convs: 6·24·24·25 = 86,400 and 16·8·8·(6·25) = 153,600.
    assert groups.loc["features", "macs_lecture"] == 86_400 + 153_600
    fig = charts.params_macs_by_group(table)
    assert list(fig.data[0].y) == [2572, 41854]


def test_diagram_of_resnet18_has_its_blocks_and_skips():
    nodes = charts.diagram_nodes(build(get_preset("course_resnet18").spec, device="meta"))
    kinds = [n.kind for n in nodes]
    assert kinds == ["stem"] + ["residual"] * 8 + ["head"]
    # The first block of stages 2, 3 and 4 halves the map and needs a 1×1 conv shortcut.
    assert [n.skip for n in nodes[1:9]] == ["identity", "identity", "1×1 conv", "identity",
                                           "1×1 conv", "identity", "1×1 conv", "identity"]


@pytest.mark.parametrize("preset, kind, count, concat", [
    ("course_googlenet", "inception", 9, 4),  # 2 + 5 + 2 Inception blocks, 4 branches each
    ("course_densenet", "dense", 4, 4),  # 4 dense blocks of 4 convs
])
def test_diagram_marks_concatenations(preset, kind, count, concat):
    nodes = charts.diagram_nodes(build(get_preset(preset).spec, device="meta"))
    blocks = [n for n in nodes if n.kind == kind]
    assert len(blocks) == count and {n.concat for n in blocks} == {concat}


def test_vgg_diagram_is_one_box_per_block():
    nodes = charts.diagram_nodes(build(get_preset("course_vgg11").spec, device="meta"))
    assert [n.name for n in nodes] == ["block1", "block2", "block3", "block4", "block5", "head"]
    assert "2× conv 3×3, 512" in nodes[4].label


def test_smoothing_is_a_bias_corrected_moving_average():
    # weight 0.5: a1 = 0.5·1 = 0.5 → 0.5 / (1 - 0.5) = 1; a2 = 0.5·0.5 + 0.5·0 = 0.25 → 0.25 /
    # (1 - 0.25) = 1/3.
    assert charts.smooth([1.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3])


def test_training_figures_carry_the_metrics():
    steps = pd.DataFrame({"step": [5, 10], "loss": [2.0, 1.0], "lr": [0.1, 0.05]})
    epochs = pd.DataFrame({"epoch": [1], "train_acc": [0.5], "test_acc": [0.6]})
    assert list(charts.loss_figure(steps).data[0].y) == [2.0, 1.0]
    assert charts.loss_figure(steps.iloc[:1]).data[1].mode == "lines+markers"  # one point shows
    assert [t.name for t in charts.accuracy_figure(epochs).data] == ["train", "test"]
    assert list(charts.lr_figure(steps).data[0].y) == [0.1, 0.05]
    overlay = charts.overlay_figure({"a": epochs, "b": epochs.iloc[0:0]}, "test_acc", "epoch",
                                    "t")
    assert [t.name for t in overlay.data] == ["a"]  # a run without that metric is left out
    # Accuracy stays on its 0–1 scale even for one epoch; the legend sits under the plot.
    assert tuple(overlay.layout.yaxis.range) == (0, 1.02)
    assert overlay.layout.legend.y < 0 and overlay.layout.legend.yanchor == "top"
    assert overlay.layout.xaxis.dtick == 1  # epochs are whole numbers
    # A run missing from one chart (no epoch yet) leaves the others' colours as they are.
    runs = {"a": epochs, "b": epochs.iloc[0:0], "c": epochs}
    acc = charts.overlay_figure(runs, "test_acc", "epoch", "t")
    loss = charts.overlay_figure({k: steps for k in runs}, "loss", "step", "l")
    colors = {tr.name: tr.line.color for tr in loss.data}
    assert {tr.name: tr.line.color for tr in acc.data} == {k: colors[k] for k in ("a", "c")}
    assert len(set(colors.values())) == 3

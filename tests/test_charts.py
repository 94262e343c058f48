"""The Build and Train pages' figures: the numbers they draw, from hand counts."""

import numpy as np
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
    assert overlay.layout.legend.yref == "container" and overlay.layout.legend.yanchor == "bottom"
    assert overlay.layout.xaxis.dtick == 1  # epochs are whole numbers
    # A run missing from one chart (no epoch yet) leaves the others' colours as they are.
    runs = {"a": epochs, "b": epochs.iloc[0:0], "c": epochs}
    acc = charts.overlay_figure(runs, "test_acc", "epoch", "t")
    loss = charts.overlay_figure({k: steps for k in runs}, "loss", "step", "l")
    colors = {tr.name: tr.line.color for tr in loss.data}
    assert {tr.name: tr.line.color for tr in acc.data} == {k: colors[k] for k in ("a", "c")}
    assert len(set(colors.values())) == 3


def _diagram(preset: str):
    return charts.architecture_diagram(build(get_preset(preset).spec, device="meta"))


def _texts(fig) -> str:
    texts = [a.text or "" for a in fig.layout.annotations]
    texts += [t for tr in fig.data for t in (tr.text or [])]
    return " ".join(texts) + (fig.layout.title.text or "")


@pytest.mark.parametrize("preset", ["course_googlenet", "course_densenet"])
def test_concatenations_are_not_drawn_as_additions(preset):
    text = _texts(_diagram(preset))
    assert "⊕" not in text  # ⊕ reads as addition; these blocks concatenate channels
    assert "concatenated" in text and "‖" in text
    assert "skip" not in text and "arc" not in text  # neither network has a skip connection


def test_resnet_diagram_keeps_its_arrows_and_skips_across_rows():
    fig = _diagram("course_resnet18")
    # stem + 8 basic blocks + head = 10 boxes; 6 a row → 2 rows, so 9 links: 8 arrows within
    # rows, and the wrap (a path down and back) ending in the 9th arrow.
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 9
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    paths = [s for s in fig.layout.shapes if s.type == "path"]
    assert len(rects) == 10
    skips = [p for p in paths if p.line.color == charts.SKIP_ORANGE]
    assert len(skips) == 8 and len(paths) - len(skips) == 1  # one arc a block, one wrap
    text = _texts(fig)
    assert "skip connections" in text and "concatenated" not in text
    # Every label sits at the centre of its box.
    tx, ty = fig.data[0].x, fig.data[0].y
    for x, y, r in zip(tx, ty, rects, strict=True):
        assert r.x0 < x < r.x1 and r.y0 < y < r.y1


def test_densenet_diagram_shows_the_concatenated_width():
    nodes = charts.diagram_nodes(build(get_preset("course_densenet").spec, device="meta"))
    dense = [n.label for n in nodes if n.kind == "dense"]
    # 64 stem channels + 4 layers × 32 = 192; the transition halves it (compression 0.5) to
    # 96, + 128 = 224; then 112 + 128 = 240, 120 + 128 = 248.
    assert [lab.split("<br>")[1] for lab in dense] == [
        "64 → 192", "96 → 224", "112 → 240", "120 → 248"]


def test_shape_flow_shows_concatenated_widths_on_whole_number_axes():
    table = analyze(get_preset("course_densenet").spec).table
    pts = charts.shape_flow_points(table)
    block1 = pts[pts["name"].str.startswith("denseblock1.")]
    assert list(block1["channels"]) == [64 + 32, 64 + 64, 64 + 96, 64 + 128]
    g = charts.shape_flow_points(analyze(get_preset("course_googlenet").spec).table)
    # Inception 3a (Szegedy et al. 2015, table 1): 64 + 128 + 32 + 32 = 256 channels.
    assert g.set_index("name").loc["stage3.inception3a ‖", "channels"] == 256
    fig = charts.shape_flow(table)
    ticks = list(fig.layout.yaxis.tickvals)
    assert all(t == 2 ** round(np.log2(t)) for t in ticks)  # powers of two, no "2, 3, 9, 10"
    assert ticks[-1] >= max(pts["channels"]) / 2 and fig.layout.yaxis.type == "log"
    # Heights 48 down to 1: a whole-number step (about six ticks), from zero.
    assert fig.layout.yaxis2.dtick == 10 and fig.layout.yaxis2.range[0] == 0


def test_training_charts_wait_for_data_and_keep_points_inside():
    empty = charts.loss_figure([])
    assert not empty.data and "No loss yet" in empty.layout.annotations[0].text
    assert empty.layout.xaxis.showticklabels is False  # no guessed axis numbers
    assert not charts.accuracy_figure([]).data
    steps = pd.DataFrame({"step": [5, 10], "loss": [2.3, 1.0]})
    loss = charts.loss_figure(steps)
    assert loss.layout.yaxis.range[1] > 2.3  # the first, highest point inside the plot
    one = charts.accuracy_figure(pd.DataFrame({"epoch": [1], "train_acc": [1.0],
                                               "test_acc": [0.9]}))
    lo, hi = one.layout.xaxis.range
    assert lo < 1 < hi and one.layout.xaxis.dtick == 1  # epoch 1, never 0.5 or 1.5
    assert one.layout.yaxis.range[1] > 1.0  # a 100 % marker drawn whole

"""The Batch norm page's figures: arrays and tables in, Plotly figures out (no streamlit).

Large fonts, few colours, readable on a projector at 1280×720 (the style of ``explorer.charts``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.charts import _layout as _base_layout

# One colour per selected channel (Tableau 10: distinct on a projector and for most colour-blind
# viewers); the input/output and with/without pairs get two of them.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f")
IN_COLOR, OUT_COLOR = "#7f7f7f", "#1f77b4"
BN_COLOR, PLAIN_COLOR = "#2ca02c", "#d62728"
NORM_TITLES = {"batch": "Batch norm", "layer": "Layer norm", "instance": "Instance norm",
               "group": "Group norm"}


def _subplot_titles(fig: go.Figure, size: int = 15) -> None:
    fig.update_annotations(font_size=size)


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    # Tick labels default to 12 px, too small at the back of a lecture hall.
    fig.update_xaxes(tickfont_size=14)
    fig.update_yaxes(tickfont_size=14)
    return _base_layout(fig, title, height)


# --------------------------------------------------------------------------------------------
# Statistics during training
# --------------------------------------------------------------------------------------------


def stat_heatmap(steps: Sequence[int], values: np.ndarray, title: str, colorbar: str,
                 diverging: bool = False, height: int = 330) -> go.Figure:
    """Channel × step heatmap of one recorded quantity (``values``: steps × channels).

    ``diverging`` centres a red-blue scale on 0 (for means); otherwise a sequential scale (for
    standard deviations). Channels are rows, so a channel drifting over training is a streak.
    """
    z = np.asarray(values, dtype=float).T
    steps = list(np.asarray(steps).tolist())
    fig = go.Figure(go.Heatmap(
        z=z, x=steps, y=list(range(z.shape[0])),
        colorscale="RdBu_r" if diverging else "Viridis", zmid=0 if diverging else None,
        colorbar={"title": {"text": colorbar, "side": "right"}, "thickness": 14},
        hovertemplate="step %{x}, channel %{y}: %{z:.3f}<extra></extra>"))
    # One column per recorded step, labelled with it: a numeric axis around two or three
    # recorded steps spans half a cell either side, and so read "step −5".
    fig.update_xaxes(title_text="training step", type="category")
    fig.update_yaxes(title_text="channel", autorange="reversed",
                     dtick=None if z.shape[0] > 16 else 1)
    return _layout(fig, title, height)


def running_vs_batch(steps: Sequence[int], batch_mean: np.ndarray, running_mean: np.ndarray,
                     batch_var: np.ndarray, running_var: np.ndarray,
                     channels: Sequence[int]) -> go.Figure:
    """Batch mean and variance (dots) of a few channels against their running averages (lines).

    The running averages follow the batch values with a lag: momentum 0.1 averages roughly the
    last ten recorded batches when every step is recorded.
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("Mean: batch (dots) and running (line)",
                                        "Variance: batch (dots) and running (line)"))
    x = np.asarray(steps)
    for i, ch in enumerate(channels):
        color = PALETTE[i % len(PALETTE)]
        for col, batch, running in ((1, batch_mean, running_mean), (2, batch_var, running_var)):
            fig.add_scatter(x=x, y=batch[:, ch], mode="markers", row=1, col=col,
                            marker={"color": color, "size": 7},  # at 55 %: 2-3:1 in dark mode
                            name=f"channel {ch}", legendgroup=str(ch), showlegend=False,
                            hovertemplate=f"channel {ch}, step %{{x}}: batch %{{y:.3f}}"
                                          "<extra></extra>")
            fig.add_scatter(x=x, y=running[:, ch], mode="lines", row=1, col=col,
                            line={"color": color, "width": 3}, name=f"channel {ch}",
                            legendgroup=str(ch), showlegend=col == 1,
                            hovertemplate=f"channel {ch}, step %{{x}}: running %{{y:.3f}}"
                                          "<extra></extra>")
    fig.update_xaxes(title_text="training step")
    _subplot_titles(fig)
    fig = _layout(fig, "", 360)
    fig.update_layout(margin={"t": 70}, legend={"y": 1.12})
    return fig


def gamma_beta_bars(gamma: np.ndarray, beta: np.ndarray, step: int) -> go.Figure:
    """γ and β of every channel at one recorded step; dashed lines mark their start (1 and 0)."""
    ch = list(range(len(gamma)))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("γ (scale), starts at 1", "β (shift), starts at 0"))
    fig.add_bar(x=ch, y=gamma, marker_color=PALETTE[0], name="γ", row=1, col=1,
                hovertemplate="channel %{x}: γ = %{y:.3f}<extra></extra>")
    fig.add_bar(x=ch, y=beta, marker_color=PALETTE[1], name="β", row=1, col=2,
                hovertemplate="channel %{x}: β = %{y:.3f}<extra></extra>")
    fig.add_hline(y=1, line={"dash": "dash", "color": "#333"}, row=1, col=1)
    fig.add_hline(y=0, line={"dash": "dash", "color": "#333"}, row=1, col=2)
    fig.update_xaxes(title_text="channel")
    fig.update_layout(showlegend=False, bargap=0.15)
    _subplot_titles(fig)
    return _layout(fig, f"γ and β per channel at step {step}", 340)


def activation_histograms(hist: Mapping[str, Any], layer: str, when: str) -> go.Figure:
    """What enters a BN layer (left) and what leaves it (right) for one batch, as histograms.

    ``hist`` is one layer of ``bn_lab.layer_histograms``. Separate x axes: the input's range
    can be far from the normalised output's.
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=(
        f"input (before BN): mean {hist['in_mean']:.2f}, std {hist['in_std']:.2f}",
        f"output (after BN): mean {hist['out_mean']:.2f}, std {hist['out_std']:.2f}"))
    for col, key, color in ((1, "in", IN_COLOR), (2, "out", OUT_COLOR)):
        edges = np.asarray(hist[f"{key}_edges"], dtype=float)
        counts = np.asarray(hist[f"{key}_counts"])
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                    marker_color=color, row=1, col=col, showlegend=False,
                    hovertemplate="%{x:.2f}: %{y:,} values<extra></extra>")
    fig.update_xaxes(title_text="activation value")
    fig.update_yaxes(title_text="values", col=1)
    fig.update_layout(bargap=0)
    _subplot_titles(fig)
    shape = "×".join(str(s) for s in hist["shape"])
    return _layout(fig, f"{layer}, {when}: one batch ({shape})", 340)


# --------------------------------------------------------------------------------------------
# Understanding the layer
# --------------------------------------------------------------------------------------------


def train_vs_eval_scores(result: Mapping[str, Any], example: int,
                         label: int | None = None) -> go.Figure:
    """One example's class scores: eval mode against training mode (inside its batch)."""
    ev = np.asarray(result["eval_output"][example])
    tr = np.asarray(result["train_output"][example])
    classes = list(range(len(ev)))
    fig = go.Figure()
    fig.add_bar(x=classes, y=ev, name="eval mode (running averages)", marker_color=PALETTE[0],
                hovertemplate="class %{x}: %{y:.2f}<extra></extra>")
    fig.add_bar(x=classes, y=tr, name="training mode (this batch's statistics)",
                marker_color=PALETTE[1], hovertemplate="class %{x}: %{y:.2f}<extra></extra>")
    fig.update_xaxes(title_text="class", dtick=1)
    fig.update_yaxes(title_text="score (logit)")
    fig.update_layout(barmode="group")
    truth = f" (true class {label})" if label is not None else ""
    fig = _layout(fig, f"Example {example}{truth}: the same image, two modes", 390)
    # The legend under the axis: above the plot its two long names ran over the title.
    return fig.update_layout(legend={"yanchor": "top", "y": -0.25, "x": 0, "xanchor": "left"},
                             margin={"b": 100})


def batch_noise(curves: Mapping[str, Sequence[Mapping[str, float]]]) -> go.Figure:
    """Spread of the batch mean (left, log-log) and variance (right) against batch size.

    ``curves``: label → rows with batch_size, mean_std and var_std, in units of the
    population's standard deviation and variance (``bn.batch_stat_noise``), so layers of
    different scales compare. The dotted line is 1/√(batch size) through the first curve's
    first point: the spread of an average of independent values.
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "Spread of the batch mean", "Spread of the batch variance"))
    for i, (label, rows) in enumerate(curves.items()):
        df = pd.DataFrame(list(rows))
        color = PALETTE[i % len(PALETTE)]
        for col, key in ((1, "mean_std"), (2, "var_std")):
            fig.add_scatter(x=df["batch_size"], y=df[key].clip(lower=1e-6), row=1, col=col,
                            mode="lines+markers", line={"color": color, "width": 3},
                            name=label, legendgroup=label, showlegend=col == 1,
                            hovertemplate=f"{label}, batch %{{x}}: %{{y:.4f}}<extra></extra>")
    first = pd.DataFrame(list(next(iter(curves.values()))))
    ref = first["mean_std"].iloc[0] * np.sqrt(first["batch_size"].iloc[0] / first["batch_size"])
    fig.add_scatter(x=first["batch_size"], y=ref, mode="lines", row=1, col=1,
                    line={"color": "#333", "dash": "dot", "width": 2}, name="1/√batch size",
                    hoverinfo="skip")
    fig.update_xaxes(type="log", title_text="batch size", dtick=math.log10(2),
                     tickformat="d")
    fig.update_yaxes(type="log", dtick=1, title_text="spread ÷ population value", col=1)
    fig.update_yaxes(rangemode="tozero", col=2)
    _subplot_titles(fig)
    fig = _layout(fig, "", 380)
    fig.update_layout(margin={"t": 80}, legend={"y": 1.13})
    return fig


def norm_axes_picture(axes: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Which values share one mean and variance, for batch, layer, instance and group norm.

    One panel per kind (``bn.norm_axes``): rows are examples n, columns channels c; every H×W
    position of a cell shares its colour, and one colour is one normalisation set.
    """
    kinds = list(axes)
    fig = make_subplots(rows=1, cols=len(kinds), horizontal_spacing=0.04, subplot_titles=[
        f"{NORM_TITLES.get(k, k)}<br>over {', '.join(axes[k]['over'])}" for k in kinds])
    for i, kind in enumerate(kinds, 1):
        ids = np.asarray(axes[kind]["set_id"])[:, :, 0, 0]
        n_sets = int(axes[kind]["n_sets"])
        # Evenly spaced hues, repeated every 12 sets, so neighbouring sets always differ.
        hues = [f"hsl({(37 * k) % 360}, 65%, {62 if k % 2 else 74}%)" for k in range(n_sets)]
        scale = [[k / max(n_sets - 1, 1), hues[k]] for k in range(n_sets)] if n_sets > 1 else \
            [[0, hues[0]], [1, hues[0]]]
        fig.add_heatmap(z=ids, x=[f"c{c}" for c in range(ids.shape[1])],
                        y=[f"n{n}" for n in range(ids.shape[0])], colorscale=scale,
                        showscale=False, text=ids, texttemplate="%{text}",
                        textfont={"size": 14, "color": "black"}, xgap=2, ygap=2, row=1, col=i,
                        hovertemplate="example %{y}, channel %{x}: set %{z}<extra></extra>")
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=True, row=1, col=1)
    _subplot_titles(fig, 15)
    fig = _layout(fig, "", 330)
    fig.update_layout(margin={"t": 80, "l": 40})
    return fig


def experiment_curves(bn_steps: pd.DataFrame, plain_steps: pd.DataFrame,
                      bn_epochs: pd.DataFrame, plain_epochs: pd.DataFrame,
                      num_classes: int = 10) -> go.Figure:
    """LeNet with and without BN: training loss per step and test accuracy per epoch."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("Training loss", "Test accuracy after each epoch"))
    for label, steps, epochs, color in (("with BN", bn_steps, bn_epochs, BN_COLOR),
                                        ("without BN", plain_steps, plain_epochs, PLAIN_COLOR)):
        if len(steps) and "loss" in steps:
            fig.add_scatter(x=steps["step"], y=steps["loss"], mode="lines", name=label,
                            line={"color": color, "width": 3}, legendgroup=label, row=1, col=1,
                            hovertemplate=f"{label}, step %{{x}}: loss %{{y:.3f}}<extra></extra>")
        if len(epochs) and "test_acc" in epochs and epochs["test_acc"].notna().any():
            fig.add_scatter(x=epochs["epoch"], y=epochs["test_acc"], mode="lines+markers",
                            name=label, line={"color": color, "width": 3}, legendgroup=label,
                            showlegend=False, row=1, col=2,
                            hovertemplate=f"{label}, epoch %{{x}}: %{{y:.1%}}<extra></extra>")
    chance = math.log(num_classes)
    fig.add_hline(y=chance, line={"dash": "dot", "color": "#333"}, row=1, col=1,
                  annotation_text=f"uniform guess: ln {num_classes} = {chance:.2f}",
                  annotation_position="bottom left", annotation_font_size=13)
    fig.add_hline(y=1 / num_classes, line={"dash": "dot", "color": "#333"}, row=1, col=2,
                  annotation_text=f"chance: {1 / num_classes:.0%}",
                  annotation_position="top left", annotation_font_size=13)
    fig.update_xaxes(title_text="step", col=1)
    fig.update_xaxes(title_text="epoch", dtick=1, col=2)
    fig.update_yaxes(rangemode="tozero", col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", col=2)
    _subplot_titles(fig)
    fig = _layout(fig, "", 380)
    fig.update_layout(margin={"t": 80}, legend={"y": 1.13})
    return fig

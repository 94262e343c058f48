"""Figures of the Inspect page: tensors in, Plotly figures out (no streamlit).

Pixel (row r, column c) is drawn at x = c, y = r with the y axis reversed, so an image reads as it
does on paper, and a receptive-field rectangle is drawn around pixel edges (±0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from explorer.inspect import Forward
from explorer.inspect_rf import Rect

FONT = {"size": 15}
RF_COLOR = "#d62728"  # the theoretical receptive field
PAD_COLOR = "rgba(127,127,127,0.25)"  # padding: outside the image
CLICK_LIMIT = 16_384  # above this many units a map gets no clickable overlay (browser load)


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, font=FONT, height=height,
                      margin={"l": 40, "r": 20, "t": 60, "b": 40}, showlegend=False)
    return fig


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _image_axes(fig: go.Figure, row: int | None = None, col: int | None = None) -> None:
    kw = {} if row is None else {"row": row, "col": col}
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain",
                     **kw)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed",
                     scaleanchor="x" if row is None else None, constrain="domain", **kw)


def _picture(img: np.ndarray) -> go.BaseTraceType:
    """A C×H×W image: grey as a heatmap, RGB (min-max scaled) as an image."""
    if img.shape[0] == 3:
        lo, hi = float(img.min()), float(img.max())
        rgb = (img - lo) / (hi - lo if hi > lo else 1.0) * 255
        return go.Image(z=rgb.transpose(1, 2, 0).astype(np.uint8), hoverinfo="skip")
    return go.Heatmap(z=img[0], colorscale="gray", showscale=False,
                      hovertemplate="row %{y}, column %{x}: %{z:.2f}<extra></extra>")


def probabilities_figure(probs: torch.Tensor, classes: Sequence[str],
                         true_class: int | None = None) -> go.Figure:
    """Horizontal bars of the class probabilities; the top class in red, the true one in green."""
    p = _np(probs)
    names = [str(c) for c in classes][:len(p)] + [f"output {i}" for i in range(len(classes),
                                                                                len(p))]
    top = int(p.argmax())
    colors = ["#2ca02c" if i == true_class else RF_COLOR if i == top else "#9ecae1"
              for i in range(len(p))]
    fig = go.Figure(go.Bar(x=p, y=names, orientation="h", marker_color=colors,
                           text=[f"{v:.1%}" for v in p], textposition="auto",
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(autorange="reversed", type="category")
    title = f"Prediction: {names[top]} ({p[top]:.1%})"
    if true_class is not None:
        title += f", true class: {names[true_class]}"
    return _layout(fig, title, height=max(300, 28 * len(p) + 100))


def strip_layers(forward: Forward, depth: int = 2, limit: int = 12) -> list[str]:
    """Layers for the input-to-output strip: spatial outputs at most ``depth`` names deep."""
    names = [n for n in forward.spatial_layers() if n.count(".") < depth and "@" not in n]
    if len(names) > limit:  # keep the first and last, thin the middle evenly
        keep = np.linspace(0, len(names) - 1, limit).round().astype(int)
        names = [names[i] for i in sorted(set(keep))]
    return names


def feature_strip(forward: Forward, layers: Sequence[str], classes: Sequence[str]) -> go.Figure:
    """Input, then each layer's mean |activation| over its channels, then the probabilities."""
    n = len(layers) + 2
    titles = ["input"] + [f"{name}<br>{'×'.join(map(str, forward.maps[name].shape))}"
                          for name in layers] + ["output"]
    # Alternate rows of titles so that neighbours' names do not overlap.
    titles = [t if i % 2 == 0 else f"<br><br>{t}" for i, t in enumerate(titles)]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.01)
    fig.add_trace(_picture(_np(forward.input)), row=1, col=1)
    for i, name in enumerate(layers, 2):
        m = _np(forward.maps[name])
        fig.add_trace(go.Heatmap(z=np.abs(m).mean(0), colorscale="Viridis", showscale=False,
                                 hovertemplate=f"{name}<br>row %{{y}}, column %{{x}}: "
                                               f"%{{z:.3f}}<extra></extra>"), row=1, col=i)
    p = _np(forward.probs)
    names = [str(c) for c in classes][:len(p)] + [str(i) for i in range(len(classes), len(p))]
    fig.add_trace(go.Heatmap(z=p[:, None], y=names, colorscale="Reds", zmin=0, zmax=1,
                             showscale=False, hovertemplate="%{y}: %{z:.2%}<extra></extra>"),
                  row=1, col=n)
    for c in range(1, n + 1):
        _image_axes(fig, 1, c)
    fig.update_yaxes(type="category", row=1, col=n)
    fig.update_annotations(font_size=11)
    # Two lines: one runs past the chart on a projector (783 px of title in 632 px).
    fig = _layout(fig, "From input to output: each layer's mean |activation|<br>over its "
                       "channels (the last column: the class probabilities)", height=320)
    fig.update_layout(margin={"t": 130})
    return fig


def mosaic(tiles: np.ndarray, cols: int, gap: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """N×h×w tiles laid out in a grid with NaN gaps (one heatmap draws far faster than N
    subplots); returns the picture and, per pixel, the tile index (-1 in the gaps)."""
    n, h, w = tiles.shape
    rows = math.ceil(n / cols)
    z = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    index = np.full(z.shape, -1, dtype=np.int32)
    for i in range(n):
        r, c = divmod(i, cols)
        z[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[i]
        index[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = i
    return z, index


def _mosaic_figure(tiles: np.ndarray, what: str, title: str, width_px: int = 700,
                   **heatmap: object) -> go.Figure:
    n, h, w = tiles.shape
    cols = min(8, n)
    gap = max(1, max(h, w) // 8)
    z, index = mosaic(tiles, cols, gap=gap)
    fig = go.Figure(go.Heatmap(z=z, customdata=index, hoverongaps=False,
                               hovertemplate=f"{what} %{{customdata}}: %{{z:.3f}}<extra></extra>",
                               **heatmap))
    _image_axes(fig)
    # Square pixels: the mosaic's height follows from the width it is drawn at.
    height = int(width_px * z.shape[0] / z.shape[1]) + 100
    return _layout(fig, title, height=min(900, max(220, height)))


def channel_grid(t: torch.Tensor, layer: str, max_channels: int = 64) -> go.Figure:
    """One layer's channels as a grid on one colour scale, with the layer's value range."""
    m = _np(t)
    lo, hi = float(m.min()), float(m.max())
    if m.ndim == 1:
        fig = go.Figure(go.Bar(x=list(range(len(m))), y=m,
                               hovertemplate="unit %{x}: %{y:.3f}<extra></extra>"))
        return _layout(fig, f"{layer}: {len(m)} values from {lo:.3g} to {hi:.3g}")
    c = m.shape[0]
    shown = min(c, max_channels)
    more = f" (first {shown} of {c})" if shown < c else ""
    return _mosaic_figure(m[:shown], "channel",
                          f"{layer}: {c} channels{more}, values from {lo:.3g} to {hi:.3g}",
                          zmin=lo, zmax=hi, colorscale="Viridis")


def filters_figure(weight: torch.Tensor, name: str, max_filters: int = 64) -> go.Figure:
    """The first conv layer's filters on one colour scale (the mean over input channels)."""
    w = _np(weight)
    shown = min(w.shape[0], max_filters)
    bound = float(np.abs(w).max()) or 1.0
    k = "×".join(map(str, w.shape[2:]))
    what = ("blue positive, red negative" if w.shape[1] == 1 else
            f"mean over {w.shape[1]} input channels; blue positive, red negative")
    fig = _mosaic_figure(w[:shown].mean(1), "filter", f"{name}: {w.shape[0]} filters of {k}",
                         width_px=300, zmin=-bound, zmax=bound, zmid=0, colorscale="RdBu")
    fig.add_annotation(text=what, showarrow=False, xref="paper", yref="paper", x=0, y=1.02,
                       xanchor="left", yanchor="bottom", font={"size": 12})
    return fig


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], accuracy: float) -> go.Figure:
    """Counts of true (rows) against predicted (columns) classes."""
    names = [str(c) for c in classes][:matrix.shape[0]]
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, colorscale="Blues",
                               text=matrix, texttemplate="%{text}", showscale=False,
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_xaxes(title="predicted", type="category")
    fig.update_yaxes(title="true", autorange="reversed", type="category")
    return _layout(fig, f"Confusion matrix of {int(matrix.sum()):,} test images "
                        f"(accuracy {accuracy:.1%})", height=460)


def images_grid(images: Sequence[torch.Tensor], captions: Sequence[str], title: str,
                cols: int = 8) -> go.Figure:
    """Small dataset images (uint8 C×H×W) with a caption each."""
    n = max(len(images), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(captions) or [""],
                        horizontal_spacing=0.01, vertical_spacing=0.08)
    for i, img in enumerate(images):
        fig.add_trace(_picture(_np(img)), row=i // cols + 1, col=i % cols + 1)
        _image_axes(fig, i // cols + 1, i % cols + 1)
    fig.update_annotations(font_size=11)
    return _layout(fig, title, height=130 * rows + 70)


def _rect_shapes(rect: Rect) -> list[dict]:
    """Padding bands, the whole field dashed and its part on the image solid."""
    h, w = rect.image_h, rect.image_w
    shapes: list[dict] = []
    top, bottom = rect.top - 0.5, rect.bottom + 0.5
    left, right = rect.left - 0.5, rect.right + 0.5
    bands = [(left, top, right, -0.5), (left, h - 0.5, right, bottom),
             (left, -0.5, -0.5, h - 0.5), (w - 0.5, -0.5, right, h - 0.5)]
    for x0, y0, x1, y1 in bands:
        if x1 > x0 and y1 > y0:
            shapes.append({"type": "rect", "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                           "fillcolor": PAD_COLOR, "line": {"width": 0}, "layer": "below",
                           "name": "padding"})
    shapes.append({"type": "rect", "x0": left, "y0": top, "x1": right, "y1": bottom,
                   "line": {"color": RF_COLOR, "width": 2, "dash": "dash"}, "name": "rf"})
    c = rect.clipped()
    shapes.append({"type": "rect", "x0": c.left - 0.5, "y0": c.top - 0.5, "x1": c.right + 0.5,
                   "y1": c.bottom + 0.5, "line": {"color": RF_COLOR, "width": 3},
                   "name": "rf-on-image"})
    return shapes


def _rf_axes(fig: go.Figure, rect: Rect) -> None:
    h, w = rect.image_h, rect.image_w
    x0, x1 = min(rect.left, 0) - 1, max(rect.right, w - 1) + 1
    y0, y1 = min(rect.top, 0) - 1, max(rect.bottom, h - 1) + 1
    fig.update_xaxes(range=[x0, x1], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(range=[y1, y0], showticklabels=False, showgrid=False, zeroline=False,
                     scaleanchor="x")


def receptive_field_figure(image: torch.Tensor, rect: Rect, title: str) -> go.Figure:
    """The input with the unit's theoretical receptive field; grey bands are padding."""
    fig = go.Figure(_picture(_np(image)))
    for s in _rect_shapes(rect):
        fig.add_shape(**s)
    _rf_axes(fig, rect)
    return _layout(fig, title, height=420)


def erf_figure(erf: torch.Tensor, rect: Rect, title: str) -> go.Figure:
    """|∂unit/∂input| as a heatmap, with the theoretical field's rectangle."""
    fig = go.Figure(go.Heatmap(z=_np(erf), colorscale="Hot", reversescale=True,
                               showscale=True, colorbar={"thickness": 12},
                               hovertemplate="row %{y}, column %{x}: %{z:.3g}<extra></extra>"))
    for s in _rect_shapes(rect):
        fig.add_shape(**s)
    _rf_axes(fig, rect)
    return _layout(fig, title, height=420)


def _click_layer(h: int, w: int, name: str) -> go.Scatter:
    """Invisible markers on every cell, so that a click (or a box) selects cells."""
    ys, xs = np.mgrid[0:h, 0:w]
    return go.Scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", name=name,
                      marker={"size": max(4, min(18, 400 // max(h, w))), "opacity": 0.01,
                              "color": "white"},
                      hovertemplate="row %{y}, column %{x}<extra></extra>")


def unit_map_figure(channel_map: torch.Tensor, layer: str, channel: int,
                    selected: tuple[int, int] | None) -> go.Figure:
    """One channel of a layer; click a cell to choose that unit (a cross marks the chosen one)."""
    m = _np(channel_map)
    h, w = m.shape
    fig = go.Figure(go.Heatmap(z=m, colorscale="Viridis", showscale=False, hoverinfo="skip"))
    if h * w <= CLICK_LIMIT:
        fig.add_trace(_click_layer(h, w, "units"))
    if selected is not None:
        fig.add_trace(go.Scatter(x=[selected[1]], y=[selected[0]], mode="markers",
                                 marker={"symbol": "x", "size": 14, "color": RF_COLOR},
                                 hoverinfo="skip"))
    _image_axes(fig)
    # No dragmode: Streamlit then pans on drag and selects the clicked point.
    return _layout(fig, f"{layer}, channel {channel}: click a unit", height=380)


def drawing_figure(canvas: np.ndarray) -> go.Figure:
    """A grid to draw a digit on: select cells (click, box or lasso) to paint them."""
    h, w = canvas.shape
    fig = go.Figure(go.Heatmap(z=canvas, colorscale="gray", zmin=0, zmax=255, showscale=False,
                               hoverinfo="skip"))
    fig.add_trace(_click_layer(h, w, "pixels"))
    _image_axes(fig)
    fig.update_layout(dragmode="lasso")
    return _layout(fig, "Draw: drag a lasso or a box over the cells to paint them", height=420)


__all__ = ["CLICK_LIMIT", "channel_grid", "confusion_figure", "drawing_figure", "erf_figure",
           "feature_strip", "filters_figure", "images_grid", "mosaic", "probabilities_figure",
           "receptive_field_figure", "strip_layers", "unit_map_figure"]

"""Side-by-side comparison of networks, the course-vs-torchvision alignment, and the figures of the
Compare and Conv arithmetic pages. Pure functions: specs and tables in, frames and Plotly out.

Layer facts for the alignment and the all-preset scatter come from one pass on PyTorch's meta
device (no weights, no arithmetic); the counting rules are the lecture's (LECTURES.md, "Layer
arithmetic") and torchinfo's, the same as ``explorer.analysis``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.analysis import Analysis
from explorer.charts import _layout, group_totals
from explorer.errors import ConfigError
from explorer.formatting import fmt_bytes, fmt_count, shape_text
from explorer.layers import Layer, MetaPass, meta_pass, pair_text
from explorer.receptive import rf_text
from explorer.registry import PRESETS
from explorer.specs import SpecBase

# Colours that stay distinct on a projector, one per compared model (at most 4).
MODEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
WHERE_COLORS = {"conv": "#1f77b4", "first fully connected": "#d62728",
                "other fully connected": "#ff9896", "batch norm": "#2ca02c", "other": "#7f7f7f"}



# ----------------------------------------------------------------------------------------------
# The totals table


TOTAL_ROWS: tuple[tuple[str, str, str], ...] = (
    # (label, key in Analysis.totals, how to show it)
    ("Input", "input_shape", "shape"),
    ("Classes", "output_shape", "classes"),
    ("Parameters", "total_params", "count"),
    ("Multiply-adds (torchinfo, bias counted)", "total_macs", "count"),
    ("Multiply-adds (lecture, no bias)", "total_macs_lecture", "count"),
    ("Receptive field (px, last spatial map)", "receptive_field", "rf"),
    ("Activation memory (1 image)", "activation_bytes", "bytes"),
    ("Parameter memory (float32)", "param_bytes", "bytes"),
    ("Depth (conv + linear on the longest path)", "depth", "int"),
    ("Conv layers", "n_conv", "int"),
    ("Linear layers", "n_linear", "int"),
    ("Batch-norm layers", "n_bn", "int"),
)


def totals_table(analyses: Mapping[str, Analysis], formatted: bool = True) -> pd.DataFrame:
    """One row per quantity, one column per model: the comparison's side-by-side totals.

    ``formatted=False`` keeps the raw numbers (ints, shapes as tuples) for tests and CSV.
    """
    rows = []
    for label, key, kind in TOTAL_ROWS:
        row: dict[str, Any] = {"quantity": label}
        for name, analysis in analyses.items():
            value = analysis.totals.get(key)
            if kind == "classes":
                value = int(value[0]) if value else None
            if kind == "rf" and formatted:  # height×width when they differ
                value = rf_text(analysis.totals).removesuffix(" px")
            elif formatted:
                value = {"shape": shape_text, "count": lambda v: f"{fmt_count(v)}  ({v:,})",
                         "bytes": fmt_bytes,
                         "int": lambda v: "—" if v is None else f"{int(v):,}",
                         "classes": lambda v: "—" if v is None else f"{v:,}"}[kind](value)
            row[name] = value
        rows.append(row)
    return pd.DataFrame(rows)


def preset_points(names: Sequence[str] | None = None) -> pd.DataFrame:
    """Parameters and multiply-adds of every preset, for the scatter (meta device: fast).

    Columns: name, group, family, input, params, macs (torchinfo), macs_lecture.
    """
    rows = []
    for name in names if names is not None else list(PRESETS):
        preset = PRESETS[name]
        mp = meta_pass(preset.spec)
        rows.append({"name": name, "group": preset.group, "family": preset.family,
                     "input": shape_text(preset.spec.input_shape), "params": mp.params,
                     "macs": mp.macs, "macs_lecture": mp.macs_lecture})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Where the parameters live


WHERE = ("conv", "first fully connected", "other fully connected", "batch norm", "other")


def param_location(table: pd.DataFrame) -> dict[str, int]:
    """Parameters of conv, first FC, other FC, BN and other layers (an analysis table's leaves)."""
    leaves = table[table["is_leaf"] & ~table["is_repeat"].astype(bool)]
    out = dict.fromkeys(WHERE, 0)
    first_fc = True
    for typ, params in zip(leaves["type"], leaves["params"], strict=True):
        if "Conv" in typ:
            out["conv"] += int(params)
        elif typ == "Linear":
            out["first fully connected" if first_fc else "other fully connected"] += int(params)
            first_fc = False
        elif "BatchNorm" in typ:
            out["batch norm"] += int(params)
        else:
            out["other"] += int(params)
    return out


def param_location_figure(tables: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Stacked bars, one per model: the share of parameters in conv, FC and BN layers."""
    names = list(tables)[::-1]  # the first model on top
    shares = {n: param_location(t) for n, t in tables.items()}
    fig = go.Figure()
    for part in WHERE:
        values = [shares[n][part] for n in names]
        if not any(values):
            continue
        totals = [max(sum(shares[n].values()), 1) for n in names]
        pct = [100 * v / t for v, t in zip(values, totals, strict=True)]
        fig.add_bar(y=names, x=pct, orientation="h", name=part,
                    marker_color=WHERE_COLORS[part],
                    text=[f"{p:.0f}%" if p >= 6 else "" for p in pct], textposition="inside",
                    insidetextanchor="middle", textfont={"size": 16},
                    customdata=[fmt_count(v) for v in values],
                    hovertemplate="%{y}: %{x:.1f}% in " + part
                                  + " (%{customdata} parameters)<extra></extra>")
    fig.update_layout(barmode="stack", legend_traceorder="normal")
    fig.update_xaxes(title_text="share of the parameters (%)", range=[0, 100])
    fig.update_yaxes(automargin=True)
    return _layout(fig, "Where the parameters live", 120 + 60 * len(names))


def params_per_stage_figure(tables: Mapping[str, pd.DataFrame], log: bool = False) -> go.Figure:
    """Parameters per stage (stem, stages, head, ...) of every model on one axis."""
    fig = go.Figure()
    for i, (name, table) in enumerate(tables.items()):
        g = group_totals(table, 1)
        fig.add_bar(x=g["group"], y=g["params"], name=name,
                    marker_color=MODEL_COLORS[i % len(MODEL_COLORS)],
                    customdata=[fmt_count(v) for v in g["params"]],
                    hovertemplate=name + " · %{x}: %{customdata} parameters<extra></extra>")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="parameters" + (" (log scale)" if log else ""),
                     type="log" if log else "linear")
    fig.update_xaxes(tickangle=-30)
    return _layout(fig, "Parameters per stage", 420)


def macs_params_scatter(points: pd.DataFrame, highlight: Sequence[str] = (),
                        extra: pd.DataFrame | None = None) -> go.Figure:
    """Multiply-adds against parameters for every preset (log-log), the chosen models marked.

    ``extra`` adds models that are not presets (name, params, macs) as highlighted points.
    """
    fig = go.Figure()
    for group, color in (("course", "#9ecae1"), ("torchvision", "#fdae6b")):
        rows = points[points["group"] == group]
        fig.add_scatter(x=rows["params"], y=rows["macs"], mode="markers", name=group,
                        marker={"size": 11, "color": color, "line": {"color": "#555",
                                                                      "width": 1}},
                        text=rows["name"], customdata=rows["input"],
                        hovertemplate="%{text} on %{customdata}: %{x:.3s} parameters, "
                                      "%{y:.3s} MACs<extra></extra>")
    chosen = points[points["name"].isin(list(highlight))][["name", "params", "macs"]]
    if extra is not None and len(extra):
        chosen = pd.concat([chosen, extra[["name", "params", "macs"]]], ignore_index=True)
    order = {n: i for i, n in enumerate(highlight)}
    chosen = chosen.assign(o=[order.get(n, 99) for n in chosen["name"]]).sort_values("o")
    # Alternate the labels above and below so that neighbours (vgg11, course_vgg11) stay legible.
    positions = ["top center" if i % 2 == 0 else "bottom center" for i in range(len(chosen))]
    fig.add_scatter(x=chosen["params"], y=chosen["macs"], mode="markers+text", name="compared",
                    text=chosen["name"], textposition=positions, textfont={"size": 15},
                    marker={"size": 18, "symbol": "star",
                            "color": [MODEL_COLORS[i % 4] for i in range(len(chosen))],
                            "line": {"color": "#000", "width": 1.5}},
                    hovertemplate="%{text}: %{x:,} parameters, %{y:,} MACs<extra></extra>")
    fig.update_xaxes(type="log", title_text="parameters")
    fig.update_yaxes(type="log", title_text="multiply-adds per image (torchinfo)")
    return _layout(fig, "Compute against size: every preset at its own input", 460)


# ----------------------------------------------------------------------------------------------
# Layer-by-layer alignment (course vs torchvision, or any two models)


CATEGORY_TITLES = {
    "input_channels": "Input channels", "input_size": "Input size", "classes": "Number of classes",
    "bias": "Biases", "shortcut_bn": "BN on the shortcut", "bn": "Batch norm",
    "bottleneck": "Bottleneck blocks", "stride": "Stride placement", "kernel": "Kernel size",
    "padding": "Padding", "dilation": "Dilation", "groups": "Groups",
    "filters": "Number of filters", "channels": "Channels (follows an earlier change)",
    "classifier_input": "Classifier input", "width": "Hidden width", "pool": "Pooling",
    "depth": "Blocks per stage", "layer": "Extra layers",
}


def _pair_score(a: Layer, b: Layer) -> float:
    """How alike two layers are; only layers of one kind pair up (−inf otherwise)."""
    if a.kind != b.kind:
        return -math.inf
    score = 1.0 + (a.name == b.name) + (a.stage == b.stage)
    ca, cb = a.config, b.config
    for key, weight in (("kernel", 1.0), ("out", 1.0), ("features", 1.0), ("op", 1.0),
                        ("stride", 0.5)):
        if key in ca and ca.get(key) == cb.get(key):
            score += weight
    return score


def _align_sequences(left: list[Layer], right: list[Layer]) -> list[tuple[Layer | None,
                                                                          Layer | None]]:
    """Order-preserving alignment that maximises the summed pair scores (gaps cost nothing).

    Needleman-Wunsch: a layer pairs with the most alike layer of the same kind, and names only
    break ties, so a course 3×3 conv pairs with torchvision's 3×3 conv, not its 1×1 bottleneck.
    """
    n, m = len(left), len(right)
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = best[i], best[i + 1]
        for j in range(m - 1, -1, -1):
            s = _pair_score(left[i], right[j])
            row[j] = max(below[j], row[j + 1], below[j + 1] + s if s > -math.inf else -math.inf)
    pairs: list[tuple[Layer | None, Layer | None]] = []
    i = j = 0
    while i < n and j < m:
        s = _pair_score(left[i], right[j])
        if s > -math.inf and math.isclose(best[i][j], best[i + 1][j + 1] + s):
            pairs.append((left[i], right[j]))
            i, j = i + 1, j + 1
        elif math.isclose(best[i][j], best[i + 1][j]):
            pairs.append((left[i], None))
            i += 1
        else:
            pairs.append((None, right[j]))
            j += 1
    pairs += [(x, None) for x in left[i:]] + [(None, y) for y in right[j:]]
    return pairs


def _differences(a: Layer, b: Layer, la: str, lb: str) -> list[tuple[str, str]]:
    """(category, sentence) for every configuration difference of two paired layers."""
    ca, cb = a.config, b.config
    out: list[tuple[str, str]] = []
    if a.kind in ("conv", "linear") and ca["bias"] != cb["bias"]:
        x, y, lx = (la, lb, a) if ca["bias"] else (lb, la, b)
        why = (", because the batch norm right after it has its own shift β"
               if (b if ca["bias"] else a).followed_by_bn else "")
        out.append(("bias", f"{x} gives this layer a bias (+{lx.config['out']:,} parameters); "
                            f"{y} has none{why}."))
    if a.kind == "conv":
        if ca["in"] != cb["in"]:
            if a.first and b.first:
                grey = " (grey against RGB)" if {ca["in"], cb["in"]} == {1, 3} else ""
                out.append(("input_channels", f"The input image has {_n(ca['in'], 'channel')} "
                                              f"in {la} and {cb['in']} in {lb}{grey}."))
            else:
                out.append(("channels", f"It reads {ca['in']} channels in {la} and {cb['in']} in "
                                        f"{lb}, because an earlier layer has another width."))
        if ca["out"] != cb["out"]:
            out.append(("filters", f"{la} uses {ca['out']} filters here, {lb} {cb['out']}."))
        for key, cat, what in (("kernel", "kernel", "the kernel"), ("groups", "groups", "groups"),
                               ("dilation", "dilation", "the dilation")):
            if ca[key] != cb[key]:
                fa, fb = ((pair_text(ca[key]), pair_text(cb[key])) if key == "kernel"
                          else (ca[key] if key == "groups" else ca[key][0],
                                cb[key] if key == "groups" else cb[key][0]))
                out.append((cat, f"{_cap(what)} is {fa} in {la} and {fb} in {lb}."))
    if a.kind in ("conv", "pool") and "stride" in ca and "stride" in cb:
        if ca["stride"] != cb["stride"]:
            out.append(("stride", f"{la} strides by {ca['stride'][0]} here and {lb} by "
                                  f"{cb['stride'][0]}: the downsampling sits on another layer."))
        if ca["padding"] != cb["padding"]:
            out.append(("padding", f"The padding is {ca['padding'][0]} in {la} and "
                                   f"{cb['padding'][0]} in {lb}."))
    if a.kind == "linear":
        if ca["in"] != cb["in"]:
            out.append(("classifier_input" if a.first and b.first else "width",
                        f"The layer reads {ca['in']:,} features in {la}"
                        f"{_from(a)} and {cb['in']:,} in {lb}{_from(b)}."))
        if ca["out"] != cb["out"]:
            if a.last and b.last:
                out.append(("classes", f"{la} classifies into {ca['out']:,} classes, {lb} into "
                                       f"{cb['out']:,}."))
            else:
                out.append(("width", f"The hidden layer is {ca['out']:,} wide in {la} and "
                                     f"{cb['out']:,} in {lb}."))
    if a.kind == "bn" and ca["features"] != cb["features"]:
        out.append(("channels", f"It normalises {ca['features']} channels in {la} and "
                                f"{cb['features']} in {lb}, the width of the layer before it."))
    if a.kind == "pool":
        if ca["op"] != cb["op"]:
            out.append(("pool", f"{la} uses {ca['op']} pooling here, {lb} {cb['op']}."))
        elif ca["op"].startswith("adaptive"):
            if ca["output_size"] != cb["output_size"]:
                out.append(("pool", f"The adaptive pool outputs {pair_text(ca['output_size'])} "
                                    f"in {la} and {pair_text(cb['output_size'])} in {lb}."))
        else:
            if ca["kernel"] != cb["kernel"]:
                out.append(("pool", f"The pooling window is {pair_text(ca['kernel'])} in {la} and "
                                    f"{pair_text(cb['kernel'])} in {lb}."))
            if ca["ceil_mode"] != cb["ceil_mode"]:
                x = la if ca["ceil_mode"] else lb
                out.append(("pool", f"{x} rounds this pool's output size up (ceil mode), the "
                                    f"other down."))
    return out


def _from(layer: Layer) -> str:
    return f" (a {shape_text(layer.flat_from)} map)" if layer.first and layer.flat_from else ""


def _only(x: Layer, side: list[Layer], other: list[Layer], lx: str, ly: str,
          unpaired: set[int]) -> tuple[str, str]:
    """(category, sentence) for a layer that only one of the two models has."""
    c = x.config
    prev = side[x.index - 1] if x.index > 0 else None
    if x.kind == "bn" and "shortcut" in x.name:
        return "shortcut_bn", (f"Only {lx} puts batch norm on the 1×1 projection shortcut; "
                               f"{ly}'s shortcut is a bare conv.")
    block = x.name.rsplit(".", 1)[0]
    if "." in x.name and any(o.stage == x.stage for o in other) and not any(
            o.name.startswith(block + ".") for o in other):
        return "depth", (f"{lx} has more layers in {x.stage}: {block} has no counterpart in "
                         f"{ly}.")
    if x.kind == "bn":
        if not any(o.kind == "bn" for o in other):
            return "bn", f"{lx} puts batch norm after its convs; {ly} has no batch norm at all."
        if prev is not None and prev.kind == "conv" and prev.index in unpaired:
            return "bottleneck", f"The batch norm of {lx}'s extra 1×1 bottleneck conv."
        return "bn", f"Only {lx} has a batch norm here."
    if x.kind == "conv":
        if "shortcut" in x.name:
            return "layer", f"Only {lx} has a 1×1 projection shortcut here."
        if c["kernel"] == (1, 1):
            return "bottleneck", (f"{lx} first maps the input to {c['out']} channels with a 1×1 "
                                  f"conv (a bottleneck) before the 3×3 conv; {ly} does not.")
        return "layer", f"Only {lx} has this conv."
    if x.kind == "pool":
        if c["op"].startswith("adaptive"):
            return "pool", (f"{lx} adds an adaptive pool to {pair_text(c['output_size'])}, so "
                            f"any input size reaches the classifier with the same shape.")
        return "pool", f"Only {lx} pools here ({x.describe()})."
    return "layer", f"Only {lx} has this fully connected layer."


def align(left: SpecBase, right: SpecBase, left_label: str = "left",
          right_label: str = "right") -> pd.DataFrame:
    """Line two networks up layer by layer (conv, linear, BN, pooling), with the reasons.

    Layers pair up in forward order when they have the same kind (an order-preserving alignment
    that prefers alike kernels, widths and names, see ``_align_sequences``). Each row's status is
    "same", "size" (same layer, other map size), "differs", "left" or "right" (only one side);
    ``reason`` says why in a sentence, ``categories`` names the kinds of difference.
    """
    pa, pb = meta_pass(left), meta_pass(right)
    a_layers, b_layers = pa.layers, pb.layers
    pairs = _align_sequences(a_layers, b_layers)
    un_a = {x.index for x, y in pairs if x is not None and y is None}
    un_b = {y.index for x, y in pairs if y is not None and x is None}
    input_differs = pa.input_shape[1:] != pb.input_shape[1:]
    rows = []
    for x, y in pairs:
        cats: list[str] = []
        diffs: list[tuple[str, str]] = []
        if x is not None and y is not None:
            diffs = _differences(x, y, left_label, right_label)
            cats = [c for c, _ in diffs]
            if diffs:
                status, reason = "differs", " ".join(s for _, s in diffs)
            elif x.output_shape[1:] != y.output_shape[1:]:
                status = "size"
                cause = (f"the inputs are {shape_text(pa.input_shape)} and "
                         f"{shape_text(pb.input_shape)}" if input_differs
                         else "an earlier layer changes the size")
                reason = (f"Same layer; its output is {shape_text(x.output_shape)} in "
                          f"{left_label} and {shape_text(y.output_shape)} in {right_label} "
                          f"because {cause}.")
                cats = ["input_size"] if input_differs else []
                diffs = [("input_size", reason)] if input_differs else []
            else:
                status, reason = "same", ""
        elif x is not None:
            cat, sentence = _only(x, a_layers, b_layers, left_label, right_label, un_a)
            status, reason, cats, diffs = "left", sentence, [cat], [(cat, sentence)]
        else:
            assert y is not None
            cat, sentence = _only(y, b_layers, a_layers, right_label, left_label, un_b)
            status, reason, cats, diffs = "right", sentence, [cat], [(cat, sentence)]
        rows.append({
            "stage": (x or y).stage,  # type: ignore[union-attr]
            "left_name": x.name if x else "", "left_layer": x.describe() if x else "—",
            "left_output": shape_text(x.output_shape) if x else "",
            "left_params": x.params if x else 0,
            "right_name": y.name if y else "", "right_layer": y.describe() if y else "—",
            "right_output": shape_text(y.output_shape) if y else "",
            "right_params": y.params if y else 0,
            "status": status, "reason": reason, "categories": ",".join(dict.fromkeys(cats)),
            "parts": diffs,
        })
    return pd.DataFrame(rows, columns=[
        "stage", "left_name", "left_layer", "left_output", "left_params", "right_name",
        "right_layer", "right_output", "right_params", "status", "reason", "categories",
        "parts"])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def differences_summary(aligned: pd.DataFrame) -> pd.DataFrame:
    """One row per kind of difference: its title, how many rows, and one example sentence."""
    rows: dict[str, dict[str, Any]] = {}
    for parts in aligned["parts"]:
        for cat in dict.fromkeys(c for c, _ in parts):
            example = next(s for c, s in parts if c == cat)
            entry = rows.setdefault(cat, {"difference": CATEGORY_TITLES.get(cat, cat), "rows": 0,
                                          "example": example})
            entry["rows"] += 1
    return pd.DataFrame(list(rows.values()), columns=["difference", "rows", "example"])


# ----------------------------------------------------------------------------------------------
# Conv arithmetic figures: the sliding window, stacking, groups


def window_cells(out_row: int, out_col: int, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int] = (1, 1)) -> list[tuple[int, int]]:
    """Cells of the padded input (row, col) that output pixel (out_row, out_col) reads."""
    r0, c0 = out_row * stride[0], out_col * stride[1]
    return [(r0 + i * dilation[0], c0 + j * dilation[1])
            for i in range(kernel[0]) for j in range(kernel[1])]


def sliding_window_figure(height: int, width: int, kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int],
                          dilation: tuple[int, int] = (1, 1), position: int = 0,
                          title: str | None = None) -> go.Figure:
    """The padded input (grey border = zero padding) with the window that one output pixel
    reads, beside the output map with that pixel marked. ``position`` counts output pixels
    row by row."""
    ph, pw = padding
    hp, wp = height + 2 * ph, width + 2 * pw
    span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    ho = (hp - span[0]) // stride[0] + 1
    wo = (wp - span[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"the {span[0]}×{span[1]} window does not fit the padded "
                          f"{hp}×{wp} input; use a smaller kernel or more padding.")
    position = min(max(int(position), 0), ho * wo - 1)
    orow, ocol = divmod(position, wo)
    # 0 padding, 1 input, 2 the window's span, 3 the cells the kernel actually reads
    grid = [[1 if ph <= r < ph + height and pw <= c < pw + width else 0 for c in range(wp)]
            for r in range(hp)]
    r0, c0 = orow * stride[0], ocol * stride[1]
    for r in range(r0, r0 + span[0]):
        for c in range(c0, c0 + span[1]):
            grid[r][c] = 2
    for r, c in window_cells(orow, ocol, kernel, stride, dilation):
        grid[r][c] = 3
    scale = [[0.0, "#bdbdbd"], [0.25, "#bdbdbd"], [0.25, "#eeeeee"], [0.5, "#eeeeee"],
             [0.5, "#9ecae1"], [0.75, "#9ecae1"], [0.75, "#fd8d3c"], [1.0, "#fd8d3c"]]
    out_grid = [[1 if (r, c) == (orow, ocol) else 0 for c in range(wo)] for r in range(ho)]
    fig = make_subplots(rows=1, cols=2, column_widths=[wp / (wp + wo), wo / (wp + wo)],
                        horizontal_spacing=0.08,
                        subplot_titles=(f"padded input {hp}×{wp} (grey = padding {ph})",
                                        f"output {ho}×{wo}"))
    labels = [["0" if v == 0 else "" for v in row] for row in grid]
    fig.add_heatmap(z=grid, zmin=0, zmax=3, colorscale=scale, showscale=False, xgap=2, ygap=2,
                    text=labels, texttemplate="%{text}" if max(hp, wp) <= 16 else None,
                    hovertemplate="row %{y}, column %{x}<extra></extra>", row=1, col=1)
    fig.add_heatmap(z=out_grid, zmin=0, zmax=1, showscale=False, xgap=2, ygap=2,
                    colorscale=[[0, "#eeeeee"], [1, "#fd8d3c"]],
                    hovertemplate="output row %{y}, column %{x}<extra></extra>", row=1, col=2)
    tick = 1 if max(hp, wp) <= 16 else None
    for col, anchor in ((1, "x"), (2, "x2")):
        fig.update_yaxes(autorange="reversed", scaleanchor=anchor, constrain="domain",
                         showgrid=False, zeroline=False, dtick=tick, row=1, col=col)
        fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain", dtick=tick,
                         row=1, col=col)
    text = title or (f"output pixel ({orow}, {ocol}) reads rows {r0}–{r0 + span[0] - 1}, "
                     f"columns {c0}–{c0 + span[1] - 1} of the padded input")
    return _layout(fig, text, 460)


def groups_figure(c_in: int, c_out: int, kernel: tuple[int, int], groups: int) -> go.Figure:
    """Weights per output pixel, C_in·C_out·K_h·K_w / g, for every g that divides both widths."""
    options = [g for g in range(1, min(c_in, c_out) + 1) if c_in % g == 0 and c_out % g == 0]
    if len(options) > 16:  # keep the axis readable: the powers of two and the chosen g
        options = sorted({g for g in options if g & (g - 1) == 0} | ({groups, options[-1]}
                         & set(options)))
    kh, kw = kernel
    weights = [c_in * c_out * kh * kw // g for g in options]
    fig = go.Figure()
    fig.add_bar(x=[str(g) for g in options], y=weights,
                marker_color=["#fd8d3c" if g == groups else "#9ecae1" for g in options],
                text=[fmt_count(w) for w in weights], textposition="outside",
                textfont={"size": 15},
                hovertemplate="g = %{x}: %{y:,} weights<extra></extra>")
    fig.update_xaxes(title_text="groups g", type="category")
    fig.update_yaxes(title_text="weights (C_in·C_out·K_h·K_w / g)")
    return _layout(fig, f"Grouped conv: {c_in}·{c_out}·{kh}·{kw} / g weights", 380)


__all__ = ["CATEGORY_TITLES", "Layer", "MetaPass", "TOTAL_ROWS", "align",
           "differences_summary", "groups_figure", "macs_params_scatter", "meta_pass",
           "param_location", "param_location_figure", "params_per_stage_figure",
           "preset_points", "sliding_window_figure",
           "totals_table", "window_cells"]

"""Pure chart functions: analysis tables and metrics in, Plotly figures out (no streamlit).

Large fonts and few colours: the figures are read on a projector at 1280×720.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import nn

# The diagram's box is defined with the family registry (a family describes its own blocks).
from explorer.families.base import DiagramNode

FONT = {"size": 15}
# Plotly's own qualitative palette, by run: the overlay charts give a run the same colour.
RUN_COLORS = tuple(plotly.colors.qualitative.Plotly)
COLORS = {"params": "#1f77b4", "macs": "#ff7f0e", "channels": "#2ca02c", "size": "#d62728",
          "rf": "#9467bd", "input": "#7f7f7f"}
# Light fills so that black labels stay readable on a projector.
KIND_COLORS = {"conv": "#a6cee3", "pool": "#d9d9d9", "residual": "#fdbf6f", "inception": "#b2df8a",
               "dense": "#fb9a99", "transition": "#fddbc7", "fc": "#cab2d6", "head": "#cab2d6",
               "stem": "#8dd3c7", "block": "#a6cee3", "other": "#eeeeee"}


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    # No template: Streamlit's own theme styles the figure (light or dark), and validating
    # plotly's templates costs more than drawing the figure.
    fig.update_layout(title={"text": title, "x": 0.01}, font=FONT, height=height,
                      margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1,
                              "xanchor": "right"})
    return fig


def group_totals(table: pd.DataFrame, level: int = 1) -> pd.DataFrame:
    """Params and MACs per module at ``level`` (1 = stem, stages, head), in forward order."""
    leaves = table[table["is_leaf"] & ~table.get("is_repeat", False)]
    keys = leaves["name"].str.split(".").str[:level].str.join(".")
    grouped = leaves.assign(group=keys).groupby("group", sort=False)[
        ["params", "macs", "macs_lecture"]].sum()
    return grouped.reset_index()


def params_macs_by_group(table: pd.DataFrame, level: int = 1) -> go.Figure:
    """Two bar charts side by side: parameters and multiply-adds per stage (or per block)."""
    g = group_totals(table, level)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Parameters", "Multiply-adds (torchinfo)"))
    fig.add_bar(x=g["group"], y=g["params"], marker_color=COLORS["params"], name="parameters",
                row=1, col=1, hovertemplate="%{x}: %{y:,} parameters<extra></extra>")
    fig.add_bar(x=g["group"], y=g["macs"], marker_color=COLORS["macs"], name="multiply-adds",
                row=1, col=2, hovertemplate="%{x}: %{y:,} MACs<extra></extra>")
    fig.update_layout(showlegend=False)
    return _layout(fig, "Where the parameters and the compute live")


def concat_blocks() -> dict[str, str]:
    """Block class name → "block" or "layers", from the family registry (``Family.concat``).

    Their outputs are concatenations along the channels (Inception's branches: "block"; a dense
    layer's new features onto its input: "layers"), so their leaves' widths are not the map's.
    """
    from explorer.families import families

    return {name: how for f in families() for name, how in f.concat.items()}


CONCAT_TYPES = tuple(concat_blocks())


def shape_flow_points(table: pd.DataFrame) -> pd.DataFrame:
    """The shape-flow chart's points in forward order: name, channels, height.

    Every conv, pool, linear and flatten outside a concatenating block; one point per Inception
    block (its concatenated output) and one per dense layer (its input with its new features
    concatenated, so DenseNet's width is seen growing).
    """
    how = concat_blocks()
    blocks = table[table["type"].isin(list(how))]
    owner = {n: how[t] for n, t in zip(blocks["name"], blocks["type"], strict=True)}
    points: list[tuple[str, int, int]] = []
    for row in table.itertuples(index=False):
        parent = row.name.rpartition(".")[0]
        inside = any(row.name.startswith(b + ".") for b in owner)
        out = row.output_shape
        if out is None or not len(out):
            continue
        height = out[1] if len(out) == 3 else 1
        if owner.get(row.name) == "block":
            points.append((f"{row.name} ‖", out[0], height))
        elif owner.get(parent) == "layers":
            points.append((f"{row.name} ‖", row.input_shape[0] + out[0], height))
        elif (not inside and row.is_leaf
              and any(k in row.type for k in ("Conv", "Pool", "Linear", "Flatten"))):
            points.append((row.name, out[0], height))
    return pd.DataFrame(points, columns=["name", "channels", "height"])


def _count_ticks(top: float, n: int = 6) -> float:
    """A whole-number tick step (1, 2, 5 × 10^k) that puts about ``n`` ticks up to ``top``."""
    step = 1
    while top / step > n:
        for m in (2, 5 / 2, 2):  # 1 → 2 → 5 → 10 → 20 → …
            step = round(step * m)
            if top / step <= n:
                break
    return step


def shape_flow(table: pd.DataFrame) -> go.Figure:
    """Channels (bars) and spatial size (line) layer by layer: size shrinks, channels grow.

    Concatenations show their concatenated width (marked ‖). Both axes carry whole numbers
    only: the channel axis is logarithmic with ticks at powers of two, the height axis linear.
    """
    rows = shape_flow_points(table)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=rows["name"], y=rows["channels"], name="channels (features)",
                marker_color=COLORS["channels"],
                hovertemplate="%{x}: %{y} channels<extra></extra>")
    fig.add_scatter(x=rows["name"], y=rows["height"], name="height (pixels)",
                    mode="lines+markers", line={"color": COLORS["size"], "width": 3},
                    secondary_y=True, hovertemplate="%{x}: %{y} px<extra></extra>")
    top_c = int(rows["channels"].max()) if len(rows) else 1
    powers = [2**k for k in range(top_c.bit_length() + 1)]
    if len(powers) > 9:  # every other power of two on a tall axis: 1, 4, 16, 64, …
        powers = powers[::2]
    fig.update_yaxes(title_text="channels", type="log", tickvals=powers,
                     ticktext=[str(p) for p in powers], secondary_y=False)
    top_h = int(rows["height"].max()) if len(rows) else 1
    fig.update_yaxes(title_text="height", secondary_y=True, range=[0, top_h * 1.08],
                     tick0=0, dtick=_count_ticks(top_h), tickformat="d", showgrid=False)
    fig.update_xaxes(showticklabels=len(rows) <= 30, tickangle=-45)
    return _layout(fig, "Shape flow: spatial size shrinks while channels grow", 420)


def receptive_field_points(table: pd.DataFrame) -> pd.DataFrame:
    """The RF chart's points: every conv and pool that outputs a map, then the whole network.

    Layers past the last spatial feature map (global pool, flatten, classifier) have no
    receptive field; the last point is the network's, the number the CLI, the Build metric and
    the table's whole-network row give (``explorer.receptive``). Columns: name, receptive_field,
    receptive_field_w, jump, jump_w.
    """
    cols = ["name", "receptive_field", "receptive_field_w", "jump", "jump_w"]
    rows = table[table["is_leaf"] & table["type"].str.contains("Conv|Pool")
                 & table["receptive_field"].notna()][cols]
    whole = table[table["depth"] == 0][cols]
    if not whole.empty and pd.notna(whole["receptive_field"].iloc[0]):
        last = rows.iloc[-1] if len(rows) else None
        if last is None or (last["receptive_field"], last["receptive_field_w"]) != (
                whole["receptive_field"].iloc[0], whole["receptive_field_w"].iloc[0]):
            rows = pd.concat([rows, whole.assign(name="whole network")])
    return rows.reset_index(drop=True)


def receptive_field_chart(table: pd.DataFrame, input_size: int) -> go.Figure:
    """Receptive field of every conv/pool layer up to the last spatial map, against the input."""
    rows = receptive_field_points(table)
    sizes = [f"{h}×{w}" if h != w else f"{h}" for h, w in
             zip(rows["receptive_field"], rows["receptive_field_w"], strict=True)]
    fig = go.Figure()
    fig.add_scatter(x=rows["name"], y=rows["receptive_field"], mode="lines+markers",
                    name="receptive field", line={"color": COLORS["rf"], "width": 3},
                    customdata=list(zip(sizes, rows["jump"], strict=True)),
                    hovertemplate="%{x}: sees %{customdata[0]} px, jump %{customdata[1]}"
                                  "<extra></extra>")
    fig.add_hline(y=input_size, line={"color": COLORS["input"], "dash": "dash"},
                  annotation_text=f"input {input_size} px", annotation_position="top left")
    fig.update_yaxes(title_text="pixels of the input (height)", rangemode="tozero")
    fig.update_xaxes(showticklabels=len(rows) <= 30, tickangle=-45)
    return _layout(fig, "Receptive field per layer, up to the last spatial feature map", 380)


# ----------------------------------------------------------------------------------------------
# Architecture diagram: the blocks in order, skip connections as arcs, concatenations marked ‖.


def _conv_label(m: nn.Conv2d) -> str:
    k, s = m.kernel_size[0], m.stride[0]
    g = f", g{m.groups}" if m.groups > 1 else ""
    return f"conv {k}×{k}{'/' + str(s) if s > 1 else ''}<br>{m.out_channels}{g}"


def _leaf_node(name: str, m: nn.Module) -> DiagramNode | None:
    if isinstance(m, nn.Conv2d):
        return DiagramNode(name, "conv", _conv_label(m))
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        s = m.stride if isinstance(m.stride, int) else m.stride[0]
        kind = "max" if isinstance(m, nn.MaxPool2d) else "avg"
        return DiagramNode(name, "pool", f"{kind} pool<br>{k}×{k}/{s}")
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return DiagramNode(name, "pool", f"adaptive avg<br>{m.output_size}")
    if isinstance(m, nn.Linear):
        return DiagramNode(name, "fc", f"FC<br>{m.out_features}")
    return None


def diagram_nodes(model: nn.Module) -> list[DiagramNode]:
    """The model as a chain of blocks: stems, residual/Inception/dense blocks, pools, head."""
    from explorer.families import families

    describers = list(dict.fromkeys(f.diagram for f in families() if f.diagram is not None))
    nodes: list[DiagramNode] = []

    def block_node(name: str, m: nn.Module) -> DiagramNode | None:
        """The box a family draws for one of its own blocks (``Family.diagram``), or None."""
        for describe in describers:
            node = describe(name, m)
            if node is not None:
                return node
        return None

    def sequential_node(name: str, m: nn.Sequential, kind: str, title: str) -> DiagramNode:
        convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
        detail = f"<br>{convs[-1].out_channels}" if convs else ""
        return DiagramNode(name, kind, f"{title}{detail}")

    for name, child in model.named_children():
        node = block_node(name, child)
        if node:
            nodes.append(node)
        elif name == "head":
            fcs = [x for x in child.modules() if isinstance(x, nn.Linear)]
            convs = [x for x in child.modules() if isinstance(x, nn.Conv2d)]
            pooled = any(isinstance(x, nn.AdaptiveAvgPool2d) for x in child.modules())
            widths = " → ".join(str(f.out_features) for f in fcs) if fcs else (
                f"conv → {convs[-1].out_channels}" if convs else "")
            nodes.append(DiagramNode(name, "head",
                                     f"head<br>{'GAP → ' if pooled else ''}{widths}"))
        elif name == "stem" or name.startswith("transition"):
            nodes.append(sequential_node(name, child, "stem" if name == "stem" else
                                         "transition", name.rstrip("0123456789")))
        elif isinstance(child, nn.Sequential) and any(block_node("", c) for c in child.children()):
            for sub, grandchild in child.named_children():
                nodes.append(block_node(f"{name}.{sub}", grandchild)
                             or DiagramNode(f"{name}.{sub}", "other", sub))
        elif isinstance(child, nn.Sequential) and all(not list(c.children())
                                                      for c in child.children()):
            if name.startswith("block"):  # VGG and NiN blocks
                convs = [x for x in child if isinstance(x, nn.Conv2d)]
                nodes.append(DiagramNode(name, "block", f"{name}<br>{len(convs)}× conv "
                                                        f"{convs[0].kernel_size[0]}×"
                                                        f"{convs[0].kernel_size[0]}, "
                                                        f"{convs[-1].out_channels}"))
            else:  # LeNet/AlexNet features: one box per conv and pool
                nodes += [n for sub, leaf in child.named_children()
                          if (n := _leaf_node(f"{name}.{sub}", leaf))]
        else:
            leaf = _leaf_node(name, child)
            if leaf:
                nodes.append(leaf)
    return nodes


# Greys and an orange that read on a white and on a near-black background alike (the page's
# theme, light or dark, shows through the figure).
LINE_GREY = "#8c8c8c"
SKIP_ORANGE = "#f58518"


def _arrow(fig: go.Figure, x0: float, y0: float, x1: float, y1: float) -> None:
    fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y",
                       showarrow=True, arrowhead=2, arrowwidth=2, arrowcolor=LINE_GREY, text="")


def diagram_caption(nodes: list[DiagramNode]) -> str:
    """What the diagram's marks mean, naming only the marks it draws."""
    parts = []
    if any(n.skip for n in nodes):
        dotted = any(n.skip and n.skip != "identity" for n in nodes)
        parts.append("arcs: skip connections, added to the block's output"
                     + (" (dotted: through a 1×1 conv)" if dotted else ""))
    if any(n.concat for n in nodes):
        parts.append("‖: outputs concatenated along the channels (not added)")
    return "; ".join(parts)


def architecture_diagram(model_or_nodes: nn.Module | list[DiagramNode], per_row: int = 6
                         ) -> go.Figure:
    """Boxes in forward order, wrapping into rows joined by an arrow; arcs above residual blocks
    for the skip connection (dotted when it is a 1×1 conv); concatenations marked ‖ inside
    their boxes (Inception branches, dense layers), never ⊕, which reads as addition."""
    nodes = (diagram_nodes(model_or_nodes) if isinstance(model_or_nodes, nn.Module)
             else model_or_nodes)
    fig = go.Figure()
    w, h, gap_x, gap_y = 1.5, 0.9, 0.35, 1.2
    xs, ys = [], []
    for i, node in enumerate(nodes):
        r, c = divmod(i, per_row)
        x0, y0 = c * (w + gap_x), -r * (h + gap_y)
        xs.append(x0 + w / 2)
        ys.append(y0 + h / 2)
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x0 + w, y1=y0 + h,
                      fillcolor=KIND_COLORS.get(node.kind, KIND_COLORS["other"]),
                      line={"color": LINE_GREY, "width": 1}, layer="below")
        if i + 1 < len(nodes) and (i + 1) % per_row:
            _arrow(fig, x0 + w, y0 + h / 2, x0 + w + gap_x, y0 + h / 2)
        elif i + 1 < len(nodes):  # the row wraps: down, back to the left, down into the next
            mid = y0 - gap_y / 2
            fig.add_shape(type="path", path=f"M {x0 + w / 2},{y0} L {x0 + w / 2},{mid} "
                                            f"L {w / 2},{mid} L {w / 2},{mid - gap_y / 4}",
                          line={"color": LINE_GREY, "width": 2}, layer="below")
            _arrow(fig, w / 2, mid - gap_y / 4, w / 2, y0 - gap_y)
        if node.skip:
            dash = "dot" if node.skip != "identity" else "solid"
            # From the incoming arrow over the box's top to the outgoing one.
            fig.add_shape(type="path", path=f"M {x0 - gap_x / 2},{y0 + h / 2} "
                                            f"C {x0 - gap_x / 2},{y0 + h + 0.5} "
                                            f"{x0 + w + gap_x / 2},{y0 + h + 0.5} "
                                            f"{x0 + w + gap_x / 2},{y0 + h / 2}",
                          line={"color": SKIP_ORANGE, "width": 2.5, "dash": dash}, layer="below")
    labels = [n.label + (f"<br>‖ {n.concat} {'branches' if n.kind == 'inception' else 'layers'}"
                         if n.concat else "") for n in nodes]
    fig.add_scatter(x=xs, y=ys, mode="text", text=labels,
                    textfont={"size": 12, "color": "black"},
                    hovertext=[f"{n.name}{' (skip: ' + n.skip + ')' if n.skip else ''}"
                               f"{f' (concatenates {n.concat})' if n.concat else ''}"
                               for n in nodes], hoverinfo="text", showlegend=False)
    rows = (len(nodes) - 1) // per_row + 1
    fig.update_xaxes(visible=False, range=[-0.3, per_row * (w + gap_x) - gap_x + 0.3],
                     fixedrange=True)
    fig.update_yaxes(visible=False, range=[-(rows - 1) * (h + gap_y) - 0.2, h + 0.8],
                     fixedrange=True)
    caption = diagram_caption(nodes)
    fig = _layout(fig, "Architecture: blocks in order", 110 + rows * 160)
    fig.update_layout(showlegend=False, margin={"l": 10, "r": 10, "t": 50, "b": 40})
    if caption:  # under the boxes, where Plotly's toolbar does not cover it
        fig.add_annotation(text=caption, xref="paper", yref="paper", x=0, y=0, xanchor="left",
                           yanchor="top", yshift=-8, showarrow=False, font={"size": 13})
    return fig


def spec_diagram(spec: object) -> go.Figure:
    """``architecture_diagram`` of a spec, built on the meta device (no weights allocated)."""
    from explorer.models import meta_model

    return architecture_diagram(meta_model(spec))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Training curves: metric rows (dicts or a DataFrame) in, figures out.


def _frame(rows: object) -> pd.DataFrame:
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))  # type: ignore


def smooth(values: list[float] | pd.Series, weight: float = 0.8) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * float(v)
        out.append(avg / (1 - weight**i))
    return out


def _waiting(fig: go.Figure, what: str) -> go.Figure:
    """No points yet: say so instead of drawing axes whose numbers Plotly would guess."""
    # Three short lines: one line, and then two, ran past a chart a quarter of a laptop's screen
    # wide (Train's live panel at 1366 px), over its axis title.
    fig.add_annotation(text=f"No {what} yet:<br>the chart fills in<br>as the run reports.",
                       xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font={"size": 15})
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _legend_below(fig: go.Figure, rows: int | None = None) -> go.Figure:
    """The legend under the plot: ``rows`` entries one per row (long run names), else one row.

    Beside the title it ran into the title of a chart a quarter of a laptop's screen wide
    (Train's live panel at 1366 px: "Accuracy per epoch" under its "train" entry). It hangs
    from the figure's bottom edge (yref "container"), not from a fraction of the plot's height:
    bigger type (presentation mode) pushes the axis title down, and a legend placed at y=-0.18
    of the plot ran into it.
    """
    lines = rows or 1
    fig.update_layout(height=fig.layout.height + 22 * lines,
                      legend={"orientation": "v" if rows else "h", "yref": "container",
                              "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
                      margin={"l": 60, "r": 20, "t": 60, "b": 80 + 22 * lines})
    return fig


def _whole_steps(fig: go.Figure, values: pd.Series) -> None:
    """An x axis of steps or epochs: whole numbers only, the points off the plot's edges."""
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.5, (hi - lo) * 0.03)
    fig.update_xaxes(range=[max(0, lo - pad), hi + pad], tickformat="d",
                     dtick=_count_ticks(hi - lo + 1, 8))


def _zero_to_top(fig: go.Figure, values: pd.Series) -> None:
    """A y axis from zero to just above the highest finite value (the first, highest points of a
    falling curve stay inside the plot); autoscaled when there is none."""
    finite = pd.to_numeric(values, errors="coerce").replace([float("inf"), float("-inf")], None)
    top = finite.max()
    if pd.notna(top) and top > 0:
        fig.update_yaxes(range=[0, float(top) * 1.08])


def loss_figure(step_rows: object, weight: float = 0.8) -> go.Figure:
    """Training loss per reported step: raw (thin) and smoothed (thick)."""
    df = _frame(step_rows)
    fig = go.Figure()
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss")
    if df.empty or not {"step", "loss"} <= set(df) or df["loss"].isna().all():
        return _layout(_waiting(fig, "loss"), "Training loss", 340)  # an import may lack it
    # Grey at full strength, not a faded blue: 4.5:1 against a dark chart and 4.0:1 against a
    # light one, where the blue at 45 % read at 1.7:1 in dark mode (WCAG asks 3:1).
    fig.add_scatter(x=df["step"], y=df["loss"], mode="lines", name="loss",
                    line={"color": COLORS["input"], "width": 1.5})
    # One report so far (a big model's first step): a line needs two points, so mark it.
    fig.add_scatter(x=df["step"], y=smooth(pd.to_numeric(df["loss"], errors="coerce"), weight),
                    mode="lines+markers" if len(df) == 1 else "lines",
                    name="smoothed", line={"color": COLORS["params"], "width": 3})
    _whole_steps(fig, df["step"])
    _zero_to_top(fig, df["loss"])
    return _legend_below(_layout(fig, "Training loss", 340))


def accuracy_figure(epoch_rows: object) -> go.Figure:
    """Train and test accuracy per epoch."""
    df = _frame(epoch_rows)
    fig = go.Figure()
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="accuracy")
    for col, name, color in (("train_acc", "train", COLORS["macs"]),
                             ("test_acc", "test", COLORS["channels"])):
        # An imported run may lack a column, or hold only nulls in it.
        if "epoch" in df and col in df and df[col].notna().any():
            fig.add_scatter(x=df["epoch"], y=df[col], mode="lines+markers", name=name,
                            line={"color": color, "width": 3})
    if not fig.data:
        return _layout(_waiting(fig, "finished epoch"), "Accuracy per epoch", 340)
    _whole_steps(fig, df["epoch"])
    # Up to 1.05: a marker at 100 % is drawn whole, inside the plot.
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return _legend_below(_layout(fig, "Accuracy per epoch", 340))


def lr_figure(step_rows: object) -> go.Figure:
    """The learning rate the schedule set at each reported step."""
    df = _frame(step_rows)
    fig = go.Figure()
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="learning rate")
    if df.empty or not {"step", "lr"} <= set(df) or df["lr"].isna().all():
        return _layout(_waiting(fig, "learning rate"), "Learning rate", 260)
    fig.add_scatter(x=df["step"], y=df["lr"], mode="lines", name="learning rate",
                    line={"color": COLORS["rf"], "width": 3})
    _whole_steps(fig, df["step"])
    _zero_to_top(fig, df["lr"])
    return _layout(fig, "Learning rate", 260)


def overlay_figure(runs: dict[str, pd.DataFrame], metric: str, x: str, title: str) -> go.Figure:
    """One line per run (label → its metric rows) for side-by-side comparison."""
    fig = go.Figure()
    for i, (label, df) in enumerate(runs.items()):
        if df.empty or metric not in df or df[metric].isna().all():
            continue
        y = smooth(df[metric].fillna(0), 0.8) if x == "step" else df[metric]
        # The colour follows the run's place among those selected, not among those drawn: a
        # run left out here (no epoch yet) must not shift the others' colours between charts.
        # Plotly renders a subset of HTML in legend text (<a href>, <b>); a run's name may come
        # from an imported file, so it is shown as text.
        fig.add_scatter(x=df[x], y=y, mode="lines" if x == "step" else "lines+markers",
                        name=html.escape(label), line={"width": 3,
                                                       "color": RUN_COLORS[i % len(RUN_COLORS)]})
    fig.update_xaxes(title_text=x)
    last = max((df[x].max() for df in runs.values() if not df.empty), default=0)
    if x == "epoch" and last <= 20:  # whole epochs only, never 1.5
        fig.update_xaxes(tick0=1, dtick=1)
    fig.update_yaxes(title_text=metric.replace("_", " "))
    if metric.endswith("_acc"):  # a single epoch would otherwise autoscale to −0.5…1.5
        fig.update_yaxes(range=[0, 1.02])
    # Up to 8 long run names: one row per run, under the plot, where it covers neither the
    # curves nor Plotly's toolbar.
    return _legend_below(_layout(fig, title, 360), rows=len(fig.data))

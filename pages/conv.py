"""Conv arithmetic: one conv or pooling layer at a time, with the lecture's formulas filled in."""

from __future__ import annotations

import html
import re

import streamlit as st

from explorer.compare import groups_figure, sliding_window_figure
from explorer.convmath import (
    conv_layer,
    pool_layer,
    stacked_receptive_field_hw,
    stacked_vs_single,
    stacking_rows,
)
from explorer.errors import ConfigError
from explorer.formatting import fmt_count, shape_text
from explorer.forms import md_escape
from pages.common import bound, one_of, refuse_unreadable_params, use_app_navigation, whole

use_app_navigation()  # before anything is drawn (see pages.common)

state = st.session_state

# Every control, its default and range: the keys are both session-state keys and URL parameters
# (each widget is bound to its parameter, so the address reopens the page as it is).
INTS: dict[str, tuple[int, int, int]] = {
    "conv_c": (1, 1, 4096), "conv_h": (28, 1, 4096), "conv_w": (28, 1, 4096),
    "conv_out": (6, 1, 4096), "conv_kh": (5, 1, 64), "conv_kw": (5, 1, 64),
    "conv_s": (1, 1, 64), "conv_p": (2, 0, 64), "conv_d": (1, 1, 16), "conv_g": (1, 1, 4096),
    "conv_pk": (2, 1, 64), "conv_ps": (2, 1, 64), "conv_pp": (0, 0, 32),
    "conv_layers": (2, 1, 12),
}
# Bound widgets write the label they show into the URL, so the options are the labels.
CHOICES: dict[str, tuple[str, ...]] = {"conv_mode": ("Convolution", "Pooling"),
                                       "conv_pool": ("max", "avg")}
TABS = ("Sliding window", "Stacking layers", "Groups")
DEMO_MAX = 16  # inputs up to 16×16 are drawn as they are; larger ones as a small stand-in


def _bool(raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ValueError(raw)
    return raw.lower() == "true"


def _cell(raw: str) -> str:
    """The output pixel's label, as the bound slider writes it: '(row, column)'."""
    if not re.fullmatch(r"\(\d{1,5}, \d{1,5}\)", raw):
        raise ValueError(raw)
    return raw


READERS = ({k: whole(lo, hi) for k, (_, lo, hi) in INTS.items()}
           | {k: one_of(v) for k, v in CHOICES.items()}
           | {"conv_bias": _bool, "conv_pos": _cell, "conv_tab": one_of(TABS)})
HOW = {**{k: f"a whole number from {lo} to {hi}" for k, (_, lo, hi) in INTS.items()},
       **{k: f"one of {', '.join(v)}" for k, v in CHOICES.items()},
       "conv_bias": "true or false", "conv_pos": "an output pixel such as (1, 2)",
       "conv_tab": "one of " + ", ".join(TABS)}


def num(col, label: str, key: str, help: str | None = None) -> None:
    value, lo, hi = INTS[key]
    col.number_input(label, lo, hi, value=value, step=1, help=help, **bound(key))


def working(lines: list[str]) -> None:
    """The formulas with numbers, in a large monospace font (read from the back of the room)."""
    body = "<br>".join(html.escape(line) for line in lines)
    # Styled by assets/style.css with the theme's colours (readable in light and dark mode).
    st.markdown(f'<div class="working-box">{body}</div>', unsafe_allow_html=True)


def demo_size(size: int, span: int, pad: int) -> int:
    """The size drawn: the real one when small, else a stand-in the window still fits."""
    return size if size <= DEMO_MAX else max(min(size, 12), span - 2 * pad, 1)


def sliding_window_tab(mode: str) -> None:
    """The window over the (padded) input, one output pixel at a time."""
    if mode == "conv":
        k, s, p, d = ((state["conv_kh"], state["conv_kw"]), state["conv_s"], state["conv_p"],
                      state["conv_d"])
    else:
        k, s, p, d = (state["conv_pk"],) * 2, state["conv_ps"], state["conv_pp"], 1
    span = (d * (k[0] - 1) + 1, d * (k[1] - 1) + 1)
    h = demo_size(state["conv_h"], span[0], p)
    w = demo_size(state["conv_w"], span[1], p)
    if max(h, w) + 2 * p > 48:
        st.info("The padded input is too large to draw cell by cell; use a smaller kernel or "
                "padding to see the window slide.")
    else:
        ho = (h + 2 * p - span[0]) // s + 1
        wo = (w + 2 * p - span[1]) // s + 1
        if ho < 1 or wo < 1:
            st.info("The window does not fit the padded input, so there is nothing to draw.")
        else:
            if state.get("conv_pos", 0) > ho * wo - 1:  # the window left a smaller map
                state["conv_pos"] = ho * wo - 1
            pos = st.select_slider("Output pixel (row, column): slide it to move the window",
                                   options=list(range(ho * wo)), value=0,
                                   format_func=lambda i: f"({i // wo}, {i % wo})",
                                   **bound("conv_pos"))
            if (h, w) != (state["conv_h"], state["conv_w"]):
                st.caption(f"Drawn on a {h}×{w} input with the same kernel, stride and "
                           f"padding (yours is {state['conv_h']}×{state['conv_w']}, too many "
                           f"cells to read on a projector).")
            st.plotly_chart(sliding_window_figure(h, w, k, (s, s), (p, p), (d, d),
                                                  pos), width="stretch")
            st.caption("Orange: the cells the kernel multiplies; blue: the rest of its span "
                       "(dilation); grey: zero padding.")


def stacking_tab() -> None:
    """What L stacked convs see, and what they cost against one large kernel."""
    kh, kw = state["conv_kh"], state["conv_kw"]
    layers = st.slider("Stack L such layers", 1, 12, value=INTS["conv_layers"][0],
                       **bound("conv_layers"))
    rh, rw = stacked_receptive_field_hw((kh, kw), layers, state["conv_s"],
                                        state["conv_d"])
    if state["conv_s"] == 1 and state["conv_d"] == 1:
        if kh == kw:
            st.markdown(f"### {layers} stacked {kh}×{kw} convs see 1 + L(K−1) = 1 + "
                        f"{layers}·({kh}−1) = **{rh}×{rw}** pixels")
        else:
            st.markdown(f"### {layers} stacked {kh}×{kw} convs see **{rh}×{rw}** "
                        f"pixels")
            st.markdown(f"1 + L(K−1) on each side: height 1 + {layers}·({kh}−1) = "
                        f"{rh}, width 1 + {layers}·({kw}−1) = {rw}.")
    else:
        st.markdown(f"### {layers} stacked {kh}×{kw} convs see **{rh}×{rw}** pixels")
        st.caption("Each layer adds d(K−1) × jump pixels to the height (K = K_h) and "
                   "to the width (K = K_w); the jump (the product of the strides so far) "
                   "grows with every stride.")
    c = state["conv_out"]
    two = stacked_vs_single(3, 2, c)
    st.markdown(f"**Two 3×3 convs against one 5×5** (c = {c} channels in and out): "
                f"2·9·c² = {two['stacked_weights']:,} weights against 25·c² = "
                f"{two['single_weights']:,}, i.e. **{100 * two['ratio']:.0f}%**, for the "
                f"same 5×5 view and one more non-linearity.")
    st.dataframe(stacking_rows((kh, kw), layers, state["conv_s"], state["conv_d"], c),
                 hide_index=True, width="stretch",
                 column_config={"weights of the stack": st.column_config.NumberColumn(
                     format="localized")})


def groups_tab() -> None:
    """Weights per kernel position with groups, and who connects to whom."""
    cin, cout, g = state["conv_c"], state["conv_out"], state["conv_g"]
    if cin % g == 0 and cout % g == 0:
        st.markdown(f"### {g} group{'s' if g > 1 else ''}: C_in·C_out/g = {cin}·{cout}/"
                    f"{g} = **{cin * cout // g:,}** weights per kernel position")
        st.caption(f"Each group connects {cin // g} input channels to {cout // g} "
                   f"filters; without groups it would be {cin * cout:,}.")
    else:
        st.markdown(f"### {g} groups do not divide {cin} input channels and {cout} "
                    f"filters")
    st.plotly_chart(groups_figure(cin, cout, (state["conv_kh"], state["conv_kw"]), g),
                    width="stretch")



# ------------------------------------------------------------------------------------------------
if bad := refuse_unreadable_params(READERS):
    st.warning("The link's settings " + "; ".join(
        f"{key}={md_escape(raw)} ({HOW[key]})" for key, raw in bad.items())
        + " could not be used; the defaults are shown instead.")

st.title("Conv arithmetic")
top = st.container()
# The keyed container lets assets/style.css put the results under the editors on a narrow screen.
left, right = st.container(key="editor_results").columns([1, 2.3], gap="medium")

with left:
    mode = st.segmented_control("Layer", CHOICES["conv_mode"], default="Convolution",
                                required=True, **bound("conv_mode"))
    st.markdown("**Input** C × H × W")
    a, b, c = st.columns(3)
    num(a, "Channels C", "conv_c")
    num(b, "Height H", "conv_h")
    num(c, "Width W", "conv_w")
    if mode == "Convolution":
        num(st, "Filters (output channels)", "conv_out")
        a, b = st.columns(2)
        num(a, "Kernel height", "conv_kh")
        num(b, "Kernel width", "conv_kw")
        a, b, c = st.columns(3)
        num(a, "Stride", "conv_s")
        num(b, "Padding", "conv_p", "zero rows/columns added on each side")
        num(c, "Dilation", "conv_d", "spacing between kernel taps; the kernel spans d(K-1)+1")
        a, b = st.columns(2)
        num(a, "Groups", "conv_g", "must divide both C and the number of filters")
        b.toggle("Bias", value=True, **bound("conv_bias"))
    else:
        st.radio("Pooling", CHOICES["conv_pool"], horizontal=True, help="max or average",
                 **bound("conv_pool"))
        a, b, c = st.columns(3)
        num(a, "Window", "conv_pk")
        num(b, "Stride", "conv_ps")
        num(c, "Padding", "conv_pp")

mode = "conv" if mode == "Convolution" else "pool"
shape = (state["conv_c"], state["conv_h"], state["conv_w"])
result, error = None, None
try:
    if mode == "conv":
        result = conv_layer(shape, state["conv_out"], (state["conv_kh"], state["conv_kw"]),
                            state["conv_s"], state["conv_p"], state["conv_d"], state["conv_g"],
                            state["conv_bias"])
    else:
        result = pool_layer(shape, state["conv_pool"], state["conv_pk"], state["conv_ps"],
                            state["conv_pp"])
except ConfigError as exc:
    error = str(exc)

with top:
    cols = st.columns(4)
    if result is not None:
        cols[0].metric("Output shape", shape_text(result.output_shape),
                       help=f"from the input {shape_text(result.input_shape)}")
        cols[1].metric("Parameters", fmt_count(result.params), help=f"{result.params:,}")
        cols[2].metric("Multiply-adds (lecture)", fmt_count(result.macs),
                       help=f"{result.macs:,}: the bias is not a multiply-add")
        cols[3].metric("Multiply-adds (torchinfo)", fmt_count(result.macs_torchinfo),
                       help=f"{result.macs_torchinfo:,}: torchinfo also multiplies the bias by "
                            f"H'×W'")
    else:
        cols[0].metric("Output shape", "—")

with right:
    if error:
        st.error(f"This layer cannot be built: {md_escape(error)}")
    else:
        st.markdown("#### The working (lecture convention, torchinfo's beside it)")
        working(result.explain())
    # Lazy tabs: only the open one runs (on_change="rerun"); the open tab is in the URL too.
    tabs = st.tabs(TABS if mode == "conv" else TABS[:1], key="conv_tab", on_change="rerun",
                   bind=None if "conv_tab" in bad else "query-params")
    for tab, draw in zip(tabs, (lambda: sliding_window_tab(mode), stacking_tab, groups_tab),
                         strict=False):
        if tab.open:
            with tab:
                draw()

"""Conv arithmetic: one conv or pooling layer at a time, with the lecture's formulas filled in."""

from __future__ import annotations

import html

import streamlit as st

from explorer.bounded import shown
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
from pages.common import (
    drawn,
    restore_widgets,
    save_widgets,
    use_app_navigation,
)

use_app_navigation()  # before anything is drawn (see pages.common)

state = st.session_state

# Every control, its default and range: the keys are both session-state keys and URL parameters.
INTS: dict[str, tuple[int, int, int]] = {
    "conv_c": (1, 1, 4096), "conv_h": (28, 1, 4096), "conv_w": (28, 1, 4096),
    "conv_out": (6, 1, 4096), "conv_kh": (5, 1, 64), "conv_kw": (5, 1, 64),
    "conv_s": (1, 1, 64), "conv_p": (2, 0, 64), "conv_d": (1, 1, 16), "conv_g": (1, 1, 4096),
    "conv_pk": (2, 1, 64), "conv_ps": (2, 1, 64), "conv_pp": (0, 0, 32),
    "conv_layers": (2, 1, 12), "conv_pos": (0, 0, 100_000),
}
CHOICES: dict[str, tuple[str, ...]] = {"conv_mode": ("conv", "pool"), "conv_pool": ("max", "avg")}
BOOLS: dict[str, bool] = {"conv_bias": True}
KEYS = (*INTS, *CHOICES, *BOOLS)
WRITTEN = "conv_url_written"  # the URL this page wrote last: a different one is a new link
# Streamlit forgets a widget's value when a run does not draw it (another page, or the pooling
# mode hiding the conv inputs); a plain copy made at the end of every run brings it back.
SAVED = "conv_saved"
DEMO_MAX = 16  # inputs up to 16×16 are drawn as they are; larger ones as a small stand-in


def _encode(key: str, value) -> str:
    return ("1" if value else "0") if key in BOOLS else str(value)


def read_url() -> list[str]:
    """Copy the conv_* URL parameters into the widgets' state; returns sentences for bad ones."""
    params = st.query_params.to_dict()
    problems = []
    for key in KEYS:
        default = INTS[key][0] if key in INTS else CHOICES[key][0] if key in CHOICES else \
            BOOLS[key]
        raw = params.get(key)
        value = default
        if raw is not None:
            if key in INTS:
                lo, hi = INTS[key][1:]
                try:
                    value = int(raw)
                    if not lo <= value <= hi:
                        raise ValueError
                except ValueError:
                    problems.append(f"{key}={md_escape(shown(raw, 40))} (a whole number from "
                                    f"{lo} to {hi})")
                    value = default
            elif key in CHOICES:
                if raw in CHOICES[key]:
                    value = raw
                else:
                    problems.append(f"{key}={md_escape(shown(raw, 40))} (one of "
                                    f"{', '.join(CHOICES[key])})")
            else:
                if raw in ("0", "1", "true", "false"):
                    value = raw in ("1", "true")
                else:
                    problems.append(f"{key}={md_escape(shown(raw, 40))} (0 or 1)")
        state[key] = value
    return problems


def write_url() -> None:
    """Put every control into the URL (only this page's keys) so that a link reopens it."""
    wanted = {key: _encode(key, state[key]) for key in KEYS}
    if {k: st.query_params.get(k) for k in KEYS} != wanted:
        for key, value in wanted.items():
            st.query_params[key] = value
    state[WRITTEN] = wanted
    save_widgets(SAVED, KEYS)


def _url_is_new() -> bool:
    url = {k: st.query_params.get(k) for k in KEYS}
    return any(v is not None for v in url.values()) and url != state.get(WRITTEN)


def num(col, label: str, key: str, help: str | None = None) -> None:
    _, lo, hi = INTS[key]
    col.number_input(label, lo, hi, key=drawn(SAVED, key), step=1, help=help)


def working(lines: list[str]) -> None:
    """The formulas with numbers, in a large monospace font (read from the back of the room)."""
    body = "<br>".join(html.escape(line) for line in lines)
    # Styled by assets/style.css with the theme's colours (readable in light and dark mode).
    st.markdown(f'<div class="working-box">{body}</div>', unsafe_allow_html=True)


def demo_size(size: int, span: int, pad: int) -> int:
    """The size drawn: the real one when small, else a stand-in the window still fits."""
    return size if size <= DEMO_MAX else max(min(size, 12), span - 2 * pad, 1)


# ------------------------------------------------------------------------------------------------
if _url_is_new() or not restore_widgets(SAVED):
    bad = read_url()
    if bad:
        st.warning("The link's settings " + "; ".join(bad) + " could not be used; the defaults "
                   "are shown instead.")

st.title("Conv arithmetic")
top = st.container()
# The keyed container lets assets/style.css put the results under the editors on a narrow screen.
left, right = st.container(key="editor_results").columns([1, 2.3], gap="medium")

with left:
    st.segmented_control("Layer", CHOICES["conv_mode"], key=drawn(SAVED, "conv_mode"),
                         required=True, format_func={"conv": "Convolution", "pool": "Pooling"}.get)
    st.markdown("**Input** C × H × W")
    a, b, c = st.columns(3)
    num(a, "Channels C", "conv_c")
    num(b, "Height H", "conv_h")
    num(c, "Width W", "conv_w")
    if state["conv_mode"] == "conv":
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
        b.toggle("Bias", key=drawn(SAVED, "conv_bias"))
    else:
        st.radio("Pooling", CHOICES["conv_pool"], key=drawn(SAVED, "conv_pool"), horizontal=True,
                 format_func={"max": "max", "avg": "average"}.get)
        a, b, c = st.columns(3)
        num(a, "Window", "conv_pk")
        num(b, "Stride", "conv_ps")
        num(c, "Padding", "conv_pp")

mode = state["conv_mode"]
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
    tabs = st.tabs(["Sliding window", "Stacking layers", "Groups"] if mode == "conv"
                   else ["Sliding window"])
    with tabs[0]:
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
                state["conv_pos"] = min(state["conv_pos"], ho * wo - 1)
                st.select_slider("Output pixel (row, column): slide it to move the window",
                                 options=list(range(ho * wo)), key=drawn(SAVED, "conv_pos"),
                                 format_func=lambda i: f"({i // wo}, {i % wo})")
                if (h, w) != (state["conv_h"], state["conv_w"]):
                    st.caption(f"Drawn on a {h}×{w} input with the same kernel, stride and "
                               f"padding (yours is {state['conv_h']}×{state['conv_w']}, too many "
                               f"cells to read on a projector).")
                st.plotly_chart(sliding_window_figure(h, w, k, (s, s), (p, p), (d, d),
                                                      state["conv_pos"]), width="stretch")
                st.caption("Orange: the cells the kernel multiplies; blue: the rest of its span "
                           "(dilation); grey: zero padding.")
    if mode == "conv":
        with tabs[1]:
            kh, kw, layers = state["conv_kh"], state["conv_kw"], state["conv_layers"]
            st.slider("Stack L such layers", 1, 12, key=drawn(SAVED, "conv_layers"))
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
        with tabs[2]:
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

write_url()

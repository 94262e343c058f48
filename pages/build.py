"""Build: assemble a variant from widgets and read every layer (shapes, params, MACs, RF)."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from explorer import charts
from explorer.bounded import literal
from explorer.errors import ConfigError
from explorer.export import table_csv, to_onnx_bytes, to_pytorch_source
from explorer.families import get_family, side_table
from explorer.formatting import fmt_bytes, fmt_count, shape_text
from explorer.forms import (
    BOOK_ORDER_NOTE,
    book_notation,
    code_span,
    form_fields,
    frame_to_rows,
    md_escape,
    rows_to_frame,
)
from explorer.models import build, meta_model
from explorer.notes import FAMILY_NOTES
from explorer.receptive import rf_caption, rf_help, rf_text
from explorer.registry import DEFAULT_PRESET, PRESETS, get_preset
from explorer.specs import (
    FAMILIES,
    SPEC_TYPES,
    coerce_field,
    default_spec,
    spec_from_dict,
    spec_from_json,
    spec_from_query,
)
from pages.common import (
    SPEC_KEY,
    SPEC_QUERY_KEYS,
    analysis_for,
    use_app_navigation,
)

use_app_navigation()  # before anything is drawn (see pages.common)

state = st.session_state
VIEWS = ["Layers", "Charts", "Diagram", "Share & export", "About"]
# How the model is shown (not part of the spec): bound to the URL, so that a link opens the same
# view, and kept by Streamlit while another page or view is shown. The keys are URL parameters.
VIEW = {"key": "build_view", "bind": "query-params", "persist_state": "session"}
LEVELS = {"key": "build_levels", "bind": "query-params", "persist_state": "session"}
GROUP = {"key": "build_group", "bind": "query-params", "persist_state": "session"}
DEFAULT_LEVEL = 2  # stages and their blocks
MAX_TABLE_ROWS = 60  # the layer table shows this many rows before it scrolls inside itself
MAX_PASTE_CHARS = 4_000  # VGG-19's arch tuple is 50 characters, GoogLeNet's stages 400


def load(spec, preset: str | None = None) -> None:
    """Put a spec into the widgets (called before they are drawn, or from a callback)."""
    state["build_family"] = spec.family
    state["build_preset"] = preset
    state["build_loaded_preset"] = preset
    for f in form_fields(type(spec)):
        value = getattr(spec, f.name)
        if f.kind == "shape":
            state["f_in_c"], state["f_in_h"], state["f_in_w"] = value
        elif f.kind == "triple":
            for i, v in enumerate(value):
                state[f"f_{f.name}_{i}"] = v
        elif f.kind in ("rows", "list", "stages"):
            state[f"t_{f.name}"] = value
        else:
            state[f"f_{f.name}"] = value
    state["build_version"] = state.get("build_version", 0) + 1
    state[SPEC_KEY] = spec.to_json(None)


BUILD_QUERY_KEYS = SPEC_QUERY_KEYS | {"preset"}


def sync_query(new: dict[str, str]) -> None:
    """Write the spec into the URL, keeping the other pages' parameters (a run id, say)."""
    for key in [k for k in st.query_params if k in BUILD_QUERY_KEYS and k not in new]:
        del st.query_params[key]
    changed = {k: v for k, v in new.items() if st.query_params.get(k) != v}
    if changed:
        st.query_params.update(changed)


def on_preset(name: str | None = None) -> None:
    """Load the preset chosen in the box (or ``name``: the Reset button's)."""
    name = name or state.get("build_preset")
    if name:
        load(get_preset(name).spec, name)


def on_family() -> None:
    load(default_spec(state["build_family"]))


def initial_load() -> None:
    """First run of a session: the spec in the URL, else the default preset."""
    params = st.query_params.to_dict()
    try:
        if "family" in params:
            spec = spec_from_query(params)
            # A spec that parses can still be too large to build; there is no earlier model
            # to fall back on yet, so check it now (cached: the page reuses the result).
            analysis_for(spec.to_json(None))
            # A preset of another family (a hand-made link) would caption the wrong model.
            preset = params.get("preset")
            load(spec, preset if preset in PRESETS and PRESETS[preset].spec.family == spec.family
                 else None)
            return
        if "preset" in params:
            name = params["preset"][:64]  # no preset name is longer; an error echoes only this
            load(get_preset(name).spec, name)
            return
    except ConfigError as exc:
        state["build_url_error"] = f"The link's model could not be read: {md_escape(str(exc))}"
    load(get_preset(DEFAULT_PRESET).spec, DEFAULT_PRESET)


def number(f, key: str, disabled: bool = False) -> None:
    is_int = f.kind == "int"
    st.number_input(f.label, key=key, help=f.help, disabled=disabled,
                    min_value=int(f.lo) if is_int and f.lo is not None else f.lo,
                    max_value=int(f.hi) if is_int and f.hi is not None else f.hi,
                    step=1 if is_int else 0.05, format=None if is_int else "%.2f")


def column_width(label: str) -> int:
    """Pixels for an editor column: its header in full, and no wider (the form column is narrow,
    and the grid's automatic widths cut the last header, e.g. RegNet's "group width")."""
    return max(52, 8 * len(str(label)) + 30)


def table_widget(f, value) -> object:
    """An editable table with named columns, and the tuple in the book's notation below it."""
    frame = rows_to_frame(f, value)
    edited = st.data_editor(frame, key=f"ed_{f.name}_{state['build_version']}",
                            num_rows="dynamic", hide_index=True, width="stretch",
                            column_config={c: {"width": column_width(c)} for c in frame.columns})
    note = BOOK_ORDER_NOTE.get(f.row_type, "") if f.row_type else ""
    try:
        rows = frame_to_rows(f, edited)
    except ConfigError as exc:
        state["build_table_error"] = md_escape(str(exc))
        return value
    key = f"txt_{f.name}"
    kept = state.get("build_paste_kept")
    if kept and kept[0] == f.name:  # a paste that failed stays in the box, to be fixed there
        state[key] = state.pop("build_paste_kept")[1]
    else:
        state[key] = book_notation(rows)
    st.text_input(f"As a tuple{' ' + note if note else ''}: copy it, or paste one and press "
                  f"Enter", key=key, on_change=on_paste, args=(f.name,))
    return rows


def on_paste(name: str) -> None:
    """Read a pasted tuple (Python literal syntax only, never eval) into the table."""
    text = state.get(f"txt_{name}", "")
    cls = SPEC_TYPES[state["build_family"]]
    example = code_span("((1, 64), (2, 128))")
    try:
        # Length, depth and digits are checked on the text, and the number of rows before any
        # row is converted: a pasted million rows is refused at once.
        value = literal(text, "the pasted tuple", MAX_PASTE_CHARS)
        state[f"t_{name}"] = coerce_field(cls, name, value)
    except ConfigError as exc:
        if not text.strip():
            state["build_paste_error"] = f"The box is empty; write a tuple like {example}."
        elif "not a tuple" in str(exc):
            shown = text if len(text) <= 80 else text[:79] + "…"
            state["build_paste_error"] = (f"Could not read {code_span(shown)} as a tuple; write "
                                          f"it like {example}.")
        else:
            state["build_paste_error"] = f"The pasted tuple does not fit: {md_escape(str(exc))}"
    else:
        state["build_version"] += 1
        return
    state["build_paste_kept"] = (name, text)


def spec_widgets(cls) -> dict:
    """Draw a widget per field; return the JSON-like dict they describe."""
    data: dict = {"family": cls.family}
    fields = form_fields(cls)
    tables = [f for f in fields if f.kind in ("rows", "list", "stages")]
    others = [f for f in fields if f not in tables]
    for f in tables:
        st.markdown(f"**{f.label}** · {f.help}")
        data[f.name] = table_widget(f, state.get(f"t_{f.name}", getattr(cls(), f.name)))
    c, h, w = st.columns(3)
    c.number_input("Input channels", 1, 64, key="f_in_c", help="1 grey, 3 colour")
    h.number_input("Height", 1, 2048, key="f_in_h")
    w.number_input("Width", 1, 2048, key="f_in_w")
    data["input_shape"] = [state["f_in_c"], state["f_in_h"], state["f_in_w"]]
    with st.expander("More settings", expanded=get_family(cls.family).open_settings):
        for f in others:
            key = f"f_{f.name}"
            if f.kind == "shape":
                continue
            if f.kind in ("int", "float"):
                number(f, key)
            elif f.kind == "bool":
                st.toggle(f.label, key=key, help=f.help)
            elif f.kind == "choice":
                st.selectbox(f.label, f.choices, key=key, help=f.help)
            elif f.kind == "triple":
                cols = st.columns(3)
                for i, col in enumerate(cols):
                    col.number_input(f"{f.label} {i + 1}", 1, 4096, key=f"{key}_{i}",
                                     help=f.help)
                data[f.name] = [state[f"{key}_{i}"] for i in range(3)]
                continue
            data[f.name] = state[key]
    return data


def family_table(spec) -> None:
    """The family's table beside the form (ResNeXt's groups in both readings, RegNet's groups)."""
    found = side_table(spec)
    if found:
        caption, rows = found
        st.markdown(caption)
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def headline(analysis) -> None:
    t = analysis.totals
    cols = st.columns(6)
    cols[0].metric("Parameters", fmt_count(t["total_params"]), help=f"{t['total_params']:,}")
    cols[1].metric("Multiply-adds", fmt_count(t["total_macs"]),
                   help=f"{t['total_macs']:,} in torchinfo's convention (bias counted); "
                        f"{t['total_macs_lecture']:,} in the lecture's (bias not counted).")
    cols[2].metric("Receptive field", rf_text(t), help=rf_help(t))
    cols[3].metric("Activations", fmt_bytes(t["activation_bytes"]),
                   help="float32 outputs of every layer for one image (batch 1)")
    cols[4].metric("Param memory", fmt_bytes(t["param_bytes"]), help="float32 weights")
    cols[5].metric("Depth", t["depth"], help="conv and linear layers on the longest path")
    if caption := rf_caption(t):  # a receptive field larger than the image: what it means
        st.caption(caption)


def layer_table(analysis, name: str) -> None:
    table = analysis.table
    max_depth = int(table["depth"].max())
    levels = list(range(1, max_depth + 1))
    if state.get("build_levels", 1) not in levels:  # a level the shallower model lacks
        state["build_levels"] = max_depth
    level = st.select_slider("Show levels", options=levels, value=min(DEFAULT_LEVEL, max_depth),
                             help="1 = stages, deeper levels = blocks, then layers", **LEVELS)
    rows = table[(table["depth"] >= 1) & (table["depth"] <= level)]
    view = rows.assign(
        layer=["    " * (int(d) - 1) + n for n, d in zip(rows["name"], rows["depth"],
                                                         strict=True)],
        output=[shape_text(s) for s in rows["output_shape"]])
    view = view[["layer", "type", "output", "params", "macs", "macs_lecture", "receptive_field",
                 "jump"]].rename(columns={"macs": "MACs", "macs_lecture": "MACs lecture",
                                          "receptive_field": "RF"})
    # A dash where no spatial map is left (after the global pool, flatten or the classifier):
    # "not applicable", where an empty number cell would read "None".
    for col in ("RF", "jump"):
        view[col] = ["—" if pd.isna(v) else f"{int(v):,}" for v in view[col]]
    # Every row at once (the page scrolls, as a reader expects), up to 60 rows; a deeper
    # table scrolls inside a box of 60 rows (35 px each and the header) rather than grow a page
    # of thousands of pixels.
    st.dataframe(view, hide_index=True, width="stretch",
                 height="content" if len(view) <= MAX_TABLE_ROWS else 38 + 35 * MAX_TABLE_ROWS,
                 column_config={"params": st.column_config.NumberColumn(format="localized"),
                                "MACs": st.column_config.NumberColumn(
                                    format="localized", help="torchinfo's count (bias included)"),
                                "MACs lecture": st.column_config.NumberColumn(
                                    format="localized", help="the lecture's count (no bias)"),
                                "RF": st.column_config.TextColumn(
                                    help="receptive field in input pixels (— : no map is left)",
                                    alignment="right"),
                                "jump": st.column_config.TextColumn(
                                    help="effective stride in input pixels", alignment="right")})
    st.caption(analysis.totals["macs_note"])
    # Written when clicked: not on every rerun, and not kept in each session's media files.
    st.download_button("Download the table (CSV)", lambda: table_csv(table), f"{name}-layers.csv",
                       "text/csv")


@st.cache_data(max_entries=128, show_spinner=False)
def figures_for(spec_json: str, level: int) -> dict[str, dict]:
    """The Charts view's Plotly figures as plain dicts, cached by spec (building is slow)."""
    spec = spec_from_json(spec_json)
    table = analysis_for(spec_json).table
    return {"by_group": charts.params_macs_by_group(table, level).to_dict(),
            "shape_flow": charts.shape_flow(table).to_dict(),
            "receptive_field": charts.receptive_field_chart(table, spec.input_shape[1]).to_dict()}


@st.cache_data(max_entries=128, show_spinner=False)
def diagram_for(spec_json: str) -> dict:
    return charts.spec_diagram(spec_from_json(spec_json)).to_dict()


@st.cache_data(max_entries=64, show_spinner=False)
def source_for(spec_json: str, name: str) -> str:
    """The standalone PyTorch file; the module tree is built on the meta device (no weights)."""
    spec = spec_from_json(spec_json)
    model = meta_model(spec)
    return to_pytorch_source(model, spec.input_shape, f"{name}: built with CNN Explorer",
                             spec_json)


def share_link(spec, view: str) -> str:
    """This page's address with the model, the preset's name while unedited, and how it is
    shown (the bound widgets' parameters, left out at their defaults as Streamlit does)."""
    base = st.context.url.split("?")[0] if st.context.url else ""
    query = spec.to_query()
    if (preset := state.get("build_preset")) and spec == PRESETS[preset].spec:
        query["preset"] = preset
    if view != VIEWS[0]:
        query["build_view"] = view
    if state.get("build_levels", DEFAULT_LEVEL) != DEFAULT_LEVEL:
        query["build_levels"] = str(state["build_levels"])
    if state.get("build_group", "stage") != "stage":
        query["build_group"] = state["build_group"]
    return f"{base}?{urlencode(query)}"


def share_and_export(spec, spec_json: str, name: str) -> None:
    st.markdown("**Link to this model** (opening it rebuilds the same network; the copy "
                "button is at the right of the box):")
    opens = st.selectbox("The link opens on", [v for v in VIEWS if v != "Share & export"],
                         key="build_share_view", format_func=lambda v: f"the {v} view",
                         help="with the level of detail and the grouping you chose")
    st.code(share_link(spec, opens), language=None, wrap_lines=True)
    cols = st.columns(3)
    cols[0].download_button("PyTorch source (.py)", source_for(spec_json, name),
                            f"{name}.py", "text/x-python",
                            help="A standalone file that needs only torch")
    cols[1].download_button("Spec (.json)", spec.to_json(), f"{name}.json", "application/json")
    # Exported when clicked, not kept: a vgg19 file is 550 MB, and held in each session that
    # asked for one it was never given back. One export per visitor at a time.
    lock = state.setdefault("_onnx_lock", threading.Lock())

    def onnx_bytes() -> bytes:
        with lock:
            return to_onnx_bytes(build(spec), spec.input_shape)

    cols[2].download_button("ONNX (for Netron)", onnx_bytes, f"{name}.onnx",
                            "application/octet-stream",
                            help="Exported when you click; a large model takes a few seconds")


# ------------------------------------------------------------------------------------------------
if "build_version" not in state:
    initial_load()
elif "build_family" not in state:
    # Streamlit drops the state of widgets that a run did not draw (another page ran): put
    # the last model back into the widgets.
    load(spec_from_json(state.get("build_good") or state[SPEC_KEY]),
         state.get("build_loaded_preset"))
if "build_url_error" in state:
    st.warning(state.pop("build_url_error"))

st.title("Build a network")
top = st.container()
# The keyed container lets assets/style.css put the results under the editors on a narrow screen.
left, right = st.container(key="editor_results").columns([1, 2.3], gap="medium")

with left:
    # Drawn once the model is known, so that the box and the title agree on whether the model
    # shown is still the preset.
    preset_box = st.container()
    loaded = state.get("build_loaded_preset")
    st.selectbox("Family", FAMILIES, key="build_family", on_change=on_family,
                 format_func=lambda f: SPEC_TYPES[f].title)
    cls = SPEC_TYPES[state["build_family"]]
    state.pop("build_table_error", None)
    data = spec_widgets(cls)
    state.pop("build_paste_kept", None)  # a table that could not be read drew no text box

# Both are popped, so that neither outlives this run.
table_error, paste_error = (state.pop(k, None) for k in ("build_table_error", "build_paste_error"))
error = table_error or paste_error
spec = None
if error is None:
    try:
        spec = spec_from_dict(data)
        spec_json = spec.to_json(None)
        analysis = analysis_for(spec_json)
    except ConfigError as exc:
        error, spec = md_escape(str(exc)), None

if spec is not None:
    state[SPEC_KEY] = state["build_good"] = spec_json
else:
    spec_json = state.get("build_good") or state[SPEC_KEY]
    spec = spec_from_json(spec_json)
    analysis = analysis_for(spec_json)
# The preset's name stays only while the model shown is unchanged; edits make it "your variant".
preset = loaded if loaded and spec == PRESETS[loaded].spec else None
state["build_preset"] = preset  # an edited preset is "your variant" in the box, as in the title
with preset_box:
    st.selectbox("Preset", list(PRESETS), key="build_preset", index=None, on_change=on_preset,
                 placeholder=f"{loaded}, edited" if loaded else "Your own variant",
                 help="Choose a preset to load it; choose it again to undo your edits")
    if preset:
        st.caption(PRESETS[preset].description)
    elif loaded:
        st.caption(f"Your variant of {loaded}: the title and the files say {loaded}_edited.")
if not error:
    sync_query(spec.to_query() | ({"preset": preset} if preset else {}))

with top:
    headline(analysis)

with right:
    name = preset or (f"{loaded}_edited" if loaded else f"my_{spec.family}")
    if error:
        st.error(f"{error} The last model that worked is shown below.")
    st.markdown(f"#### {name} · {cls.title} on {shape_text(spec.input_shape)}")
    # An absolute path: st.page_link matches it against st.navigation's pages wherever the
    # entry script lives.
    st.page_link(Path(__file__).resolve().parent / "inspect.py", label="Inspect it on an image",
                 icon=":material/visibility:")
    # A radio rather than st.tabs: only the view on screen is computed, which keeps every
    # widget change quick.
    # No format_func: a bound widget writes the label it shows into the URL.
    view = st.radio("View", VIEWS, horizontal=True, label_visibility="collapsed", **VIEW)
    if view == "Layers":
        layer_table(analysis, name)
    elif view == "Charts":
        level = st.radio("Group by", ["stage", "block"], horizontal=True, **GROUP)
        figs = figures_for(spec_json, 1 if level == "stage" else 2)
        for key in ("by_group", "shape_flow", "receptive_field"):
            st.plotly_chart(figs[key], width="stretch")
    elif view == "Diagram":
        st.plotly_chart(diagram_for(spec_json), width="stretch")
    elif view == "Share & export":
        share_and_export(spec, spec_json, name)
    else:
        st.markdown(FAMILY_NOTES[spec.family])
        if loaded and PRESETS[loaded].note:
            st.info(PRESETS[loaded].note)

with left:
    family_table(spec)
    if loaded and (preset is None or error):
        st.button(f"Reset to {loaded}", on_click=on_preset, args=(loaded,))

"""Compare: two to four networks side by side, and course versions against torchvision's."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import charts
from explorer import compare as cmp
from explorer.bounded import shown
from explorer.errors import ConfigError
from explorer.formatting import fmt_count
from explorer.forms import md_escape
from explorer.io import read_spec, read_specs, safe_name, spec_from_link, specs_to_json
from explorer.registry import COURSE_PAIRS, PRESETS
from explorer.specs import spec_from_json
from pages.common import (
    analysis_for,
    bound,
    current_spec,
    get_manager,
    one_of,
    refuse_unreadable_params,
    use_app_navigation,
    write_query,
)

use_app_navigation()  # before anything is drawn (see pages.common)

state = st.session_state

MAX_MODELS = 4
MAX_RUNS_PER_MODEL = 4
DEFAULT_MODELS = ["course_resnet18", "resnet18"]
SPEC_PARAM = "cmp_spec_"  # + label: the JSON of a model that is not a preset
# Bound to their URL parameters by Streamlit (a bound widget writes the label it shows, so the
# view's options are its labels); the models, their specs and the pair are written by the page.
FLAGS = ("cmp_log", "cmp_details", "cmp_diff")  # toggles: true/false in the URL
VIEWS = ("Totals", "Charts", "Layer by layer", "Training runs")
ALLOWED = {"cmp_view": VIEWS} | {k: ("true", "false") for k in FLAGS}  # their URL values
BOUND = tuple(ALLOWED)
WRITTEN = "cmp_url_written"  # the URL this page wrote last: a different one is a new link
KEEP = "session"  # Streamlit keeps a widget's value while another page or view is shown
# Row tints laid over the theme's background, so that the theme's text reads on them in the
# light and in the dark theme (a fixed light colour under dark mode's light text did not);
# identical rows keep the plain background.
ROW_COLORS = {"differs": "rgba(255, 140, 0, 0.30)", "left": "rgba(230, 40, 40, 0.30)",
              "right": "rgba(230, 40, 40, 0.30)", "size": "rgba(60, 130, 240, 0.25)"}


# ---- the models: presets by name, everything else as spec JSON under its own label ----------

def custom() -> dict[str, str]:
    return state.setdefault("cmp_custom", {})


def spec_of(label: str):
    return PRESETS[label].spec if label in PRESETS else spec_from_json(custom()[label])


def add_model(label: str, spec) -> None:
    """Add a model to the comparison (a preset when the spec is one; never a fifth model)."""
    chosen = list(state.get("cmp_models", []))
    label = next((n for n, p in PRESETS.items() if p.spec == spec), None) or safe_name(label)
    if label not in PRESETS:
        text, base, k = spec.to_json(None), label, 2
        while label in PRESETS or (label in custom() and custom()[label] != text):
            label, k = f"{base}_{k}", k + 1
        custom()[label] = text
    if label in chosen:
        state["cmp_note"] = f"{label} is already in the comparison."
    elif len(chosen) >= MAX_MODELS:
        state["cmp_problem"] = (f"Four models are the most one comparison shows; remove one "
                                f"before adding {label}.")
    else:
        state["cmp_models"] = [*chosen, label]


def on_add_build() -> None:
    spec = current_spec()
    add_model(f"build_{spec.family}", spec)


def on_link() -> None:
    text = state.get("cmp_link", "")
    state["cmp_link"] = ""
    if not text.strip():
        return
    try:
        name, spec = spec_from_link(text)
    except ConfigError as exc:
        state["cmp_problem"] = f"{exc}"
        return
    add_model(name, spec)


def on_upload() -> None:
    key = f"cmp_upload_{state.get('cmp_upload_n', 0)}"
    upload = state.get(key)
    if upload is None:
        return
    try:
        specs = read_specs(upload.getvalue(), upload.name)
    except ConfigError as exc:  # nothing stored is touched
        state["cmp_problem"] = f"{exc}"
        return
    for name, spec in specs.items():
        add_model(name, spec)
    state["cmp_upload_n"] = state.get("cmp_upload_n", 0) + 1  # a fresh, empty uploader


# ---- the URL ---------------------------------------------------------------------------------

def url_state() -> dict[str, str]:
    """This page's parameters as they should stand in the URL."""
    chosen = state.get("cmp_models", [])
    wanted = {"cmp_models": ",".join(chosen)}
    wanted |= {SPEC_PARAM + n: custom()[n] for n in chosen if n not in PRESETS}
    if state.get("cmp_pair"):
        wanted["cmp_pair"] = state["cmp_pair"]
    return wanted


def read_url() -> None:
    """Models, pair and toggles from the URL; unknown or broken entries become one warning."""
    params = st.query_params.to_dict()
    problems: list[str] = []
    chosen: list[str] = []
    tokens = [t.strip() for t in params.get("cmp_models", "").split(",") if t.strip()]
    if len(tokens) > 2 * MAX_MODELS:  # each model in a link is checked: read a few only
        problems.append(f"the link names {len(tokens):,} models; the first {MAX_MODELS} are "
                        f"read")
        tokens = tokens[:MAX_MODELS]
    for token in tokens or DEFAULT_MODELS:
        if token in PRESETS:
            chosen.append(token)
        elif SPEC_PARAM + token in params:
            try:
                spec = read_spec(params[SPEC_PARAM + token], token)
            except ConfigError as exc:
                problems.append(f"{shown(token, 40)[1:-1]}: {exc}")
                continue
            custom()[safe_name(token)] = spec.to_json(None)
            chosen.append(safe_name(token))
        else:
            problems.append(f"{shown(token, 40)} is neither a preset nor a model stored in the "
                            f"link")
    if len(chosen) > MAX_MODELS:
        problems.append(f"only the first {MAX_MODELS} of {len(chosen)} models are shown")
    state["cmp_models"] = list(dict.fromkeys(chosen))[:MAX_MODELS]
    if "cmp_pair" in params:
        state["cmp_pair"] = params["cmp_pair"]
    if problems:  # one sentence: each reason loses its own full stop before the "; "
        state["cmp_problem"] = ("The link could not be used entirely: "
                                + "; ".join(p.rstrip(". ") for p in problems) + ".")


def write_url() -> None:
    wanted = url_state()
    write_query(wanted, owned=lambda k: k.startswith(SPEC_PARAM))
    state[WRITTEN] = wanted


def url_is_new() -> bool:
    params = st.query_params.to_dict()
    mine = {k: v for k, v in params.items() if k.startswith("cmp_") and k not in BOUND}
    return bool(mine.get("cmp_models")) and mine != state.get(WRITTEN)


# ---- cached computations ------------------------------------------------------------------

@st.cache_data(show_spinner="Counting every preset's parameters and multiply-adds (once)…")
def all_points() -> pd.DataFrame:
    return cmp.preset_points()


@st.cache_data(max_entries=64, show_spinner=False)
def point_of(label: str, spec_json: str) -> dict:
    mp = cmp.meta_pass(spec_from_json(spec_json))
    return {"name": label, "params": mp.params, "macs": mp.macs}


@st.cache_data(max_entries=32, show_spinner="Lining the layers up…")
def aligned(left_json: str, right_json: str, left: str, right: str) -> pd.DataFrame:
    return cmp.align(spec_from_json(left_json), spec_from_json(right_json), left, right)


# ---- pieces of the page --------------------------------------------------------------------

def pair_options(chosen: list[str]) -> list[str]:
    """The course-vs-torchvision pairs, then every pair of the compared models."""
    options = [f"{a}|{b}" for a, b in COURSE_PAIRS.items()]
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            if f"{a}|{b}" not in options and f"{b}|{a}" not in options:
                options.append(f"{a}|{b}")
    return options


def default_pair(chosen: list[str], options: list[str]) -> str:
    for a, b in COURSE_PAIRS.items():
        if a in chosen and b in chosen:
            return f"{a}|{b}"
    return f"{chosen[0]}|{chosen[1]}" if len(chosen) >= 2 else options[0]


def models_box() -> None:
    """The compared models, across the whole page: four long names fit on one line there, in
    the narrow left column the fourth was cut off."""
    options = list(PRESETS) + [n for n in custom() if n not in PRESETS]
    st.multiselect("Models (2 to 4)", options, key="cmp_models", persist_state=KEEP,
                   max_selections=MAX_MODELS,
                   help="Presets by name; models added on the left (the Build page's, a link, "
                        "a spec file) join this list.")


def controls() -> None:
    st.button("Add the model from the Build page", on_click=on_add_build,
              icon=":material/construction:", width="stretch")
    st.text_input("…or paste a link to a model", key="cmp_link", on_change=on_link,
                  placeholder="https://…/?family=resnet&…",
                  help="The link from the Build page's 'Share & export' tab")
    st.file_uploader("…or add a spec file (.json)", type=["json"], max_upload_size=1,
                     key=f"cmp_upload_{state.get('cmp_upload_n', 0)}", on_change=on_upload,
                     help="A spec downloaded from the Build page, or this page's download")
    chosen = state.get("cmp_models", [])
    if chosen:
        try:
            data = specs_to_json({n: spec_of(n) for n in chosen})
            st.download_button("Download the compared specs (.json)", data,
                               "compared-specs.json", "application/json",
                               icon=":material/download:", width="stretch")
        except ConfigError as exc:
            st.error(md_escape(str(exc)))


def headline(analyses: dict) -> None:
    cols = st.columns(MAX_MODELS)
    for col, (name, a) in zip(cols, analyses.items(), strict=False):
        t = a.totals
        col.metric(name, fmt_count(t["total_params"]),
                   help=f"{t['total_params']:,} parameters; {t['total_macs']:,} multiply-adds "
                        f"(torchinfo) on {'×'.join(map(str, a.input_shape))}")


def totals_tab(analyses: dict) -> None:
    st.table(cmp.totals_table(analyses).set_index("quantity"))
    st.caption("Multiply-adds are per image. The lecture counts C_out·H'·W'·C_in/g·K_h·K_w per "
               "conv and no bias; torchinfo also counts the bias, and BatchNorm and Linear "
               "parameters once. The receptive field is measured at the classifier's input; "
               "memory is float32 at batch 1.")


def charts_tab(analyses: dict) -> None:
    tables = {n: a.table for n, a in analyses.items()}
    log = st.toggle("Log scale (small stages stay visible next to a huge head)",
                    **bound("cmp_log"))
    st.plotly_chart(cmp.params_per_stage_figure(tables, log=log), width="stretch")
    st.plotly_chart(cmp.param_location_figure(tables), width="stretch")
    points = all_points()
    extra = pd.DataFrame([point_of(n, custom()[n]) for n in analyses if n not in PRESETS],
                         columns=["name", "params", "macs"])
    st.plotly_chart(cmp.macs_params_scatter(points, list(analyses), extra), width="stretch")
    st.caption("Every preset at its own input shape (course presets mostly 1×96×96 or "
               "1×224×224, torchvision's 3×224×224); stars are the compared models.")


def runs_tab(chosen: list[str]) -> None:
    """Overlay the curves of every stored run of the compared models (same spec)."""
    store = get_manager().store
    steps, epochs = {}, {}
    for name in chosen:
        for run in store.runs_with_spec(spec_of(name).to_dict())[:MAX_RUNS_PER_MODEL]:
            frame = store.metrics(run["id"])
            label = f"{name} #{run['id']}"
            steps[label] = frame[frame["kind"] == "step"]
            epochs[label] = frame[frame["kind"] == "epoch"]
    if not steps:
        st.info("No training runs of these models yet: train one on the Train page (choose "
                "the same preset, or the Build page's model), then come back.")
        return
    a, b = st.columns(2)
    a.plotly_chart(charts.overlay_figure(steps, "loss", "step", "Loss (smoothed)"),
                   width="stretch")
    b.plotly_chart(charts.overlay_figure(epochs, "test_acc", "epoch", "Test accuracy"),
                   width="stretch")
    st.caption(f"Every stored run whose model equals a compared one (the newest "
               f"{MAX_RUNS_PER_MODEL} per model); their data and settings may differ, see the "
               f"Train page's history.")


def style_rows(frame: pd.DataFrame, status: pd.Series):
    styles = [f"background-color: {ROW_COLORS[s]}" if s in ROW_COLORS else "" for s in status]
    return frame.style.apply(lambda col: styles, axis=0)


def layers_head(chosen: list[str]) -> pd.DataFrame | None:
    """The pair to line up, what differs in numbers and in sentences; returns the alignment."""
    options = pair_options(chosen)
    if state.get("cmp_pair") not in options:
        state["cmp_pair"] = default_pair(chosen, options)
    st.selectbox("Line up", options, key="cmp_pair", persist_state=KEEP,
                 format_func=lambda p: " ↔ ".join(p.split("|", 1)),
                 help="The course's networks against torchvision's, or two compared models")
    left, right = state["cmp_pair"].split("|", 1)
    try:
        frame = aligned(spec_of(left).to_json(None), spec_of(right).to_json(None), left, right)
    except (ConfigError, KeyError) as exc:
        st.error(f"These two models cannot be lined up: {md_escape(str(exc))}")
        return None
    counts = frame["status"].value_counts()
    st.markdown(f"**{len(frame)} layers** (conv, linear, batch norm, pooling): "
                f"{counts.get('differs', 0)} differ, {counts.get('left', 0)} only in {left}, "
                f"{counts.get('right', 0)} only in {right}, {counts.get('size', 0)} the same "
                f"layer on a map of another size, {counts.get('same', 0)} identical.")
    summary = cmp.differences_summary(frame)
    if len(summary):
        st.table(summary.rename(columns={"difference": "why they differ",
                                         "example": "for example"}).set_index("why they differ"))
    return frame


def layers_table(frame: pd.DataFrame) -> None:
    """Every aligned layer, coloured by status, with its reason (full page width)."""
    left, right = state["cmp_pair"].split("|", 1)
    # One under the other: side by side, a projector's narrow page cut their labels.
    only_diff = st.toggle("Only the rows that differ", **bound("cmp_diff"))
    details = st.toggle("Output shapes and parameters", **bound("cmp_details"))
    rows = frame[frame["status"] != "same"] if only_diff else frame
    view = pd.DataFrame({
        "layer": [row_name(ln, rn) for ln, rn in zip(rows["left_name"], rows["right_name"],
                                                      strict=True)],
        left: rows["left_layer"], right: rows["right_layer"]})
    if details:
        view[f"{left} output"] = rows["left_output"].to_numpy()
        view[f"{left} params"] = rows["left_params"].to_numpy()
        view[f"{right} output"] = rows["right_output"].to_numpy()
        view[f"{right} params"] = rows["right_params"].to_numpy()
    view["why"] = rows["reason"].to_numpy()
    view = view.reset_index(drop=True)
    picked = st.container()
    event = st.dataframe(style_rows(view, rows["status"].reset_index(drop=True)),
                         hide_index=True, width="stretch", height=460,
                         key=f"cmp_rows_{state['cmp_pair']}_{only_diff}",
                         on_select="rerun", selection_mode="single-row",
                         # Widths that fit a projector's 683-pixel page with every column
                         # (the table stretches them on a wider screen); a reason longer than
                         # its cell is read in full by clicking its row.
                         column_config={"layer": st.column_config.TextColumn(width=160),
                                        left: st.column_config.TextColumn(width=130),
                                        right: st.column_config.TextColumn(width=130),
                                        "why": st.column_config.TextColumn(width=160)})
    chosen_rows = event.selection.rows if event else []
    with picked:
        if chosen_rows and chosen_rows[0] < len(view):
            row = view.iloc[chosen_rows[0]]
            st.info(f"**{row['layer']}**: {row['why'] or 'the same layer in both.'}")
        else:
            st.caption("Click a row to read its reason in full.")
    st.caption("Orange: the layer differs; red: only one model has it; blue: the same layer on "
               "a map of another size. Layers pair up in forward order when they have the same "
               "kind, preferring the same kernel, width and name.")


def row_name(left: str, right: str) -> str:
    """One name for an aligned row: 'stage1.block1.conv1', or 'layer1.conv1 / conv2'."""
    if not left or not right or left == right:
        return left or right
    prefix = left.rsplit(".", 1)[0] + "."
    if "." in left and right.startswith(prefix):
        return f"{left} / {right[len(prefix):]}"
    return f"{left} / {right}"


# ------------------------------------------------------------------------------------------------
bad = refuse_unreadable_params({k: one_of(v) for k, v in ALLOWED.items()})
if url_is_new() or "cmp_models" not in state:  # a new link, or the session's first visit
    read_url()
if bad:  # shown with the link's other problems, in one sentence
    refused = "; ".join(f"{k}={v} is not one of {', '.join(ALLOWED[k])}" for k, v in bad.items())
    state["cmp_problem"] = (state["cmp_problem"].rstrip(".") + "; " if "cmp_problem" in state
                            else "The link could not be used entirely: ") + refused + "."

st.title("Compare networks")
models_box()
top = st.container()
# The keyed container lets assets/style.css put the results under the controls on a narrow screen.
left_col, right_col = st.container(key="editor_results").columns([1, 2.3], gap="medium")

with left_col:
    controls()
    for key, show in (("cmp_problem", st.error), ("cmp_note", st.info)):
        if key in state:
            show(md_escape(state.pop(key)))  # names, files and links the visitor typed

chosen = list(state.get("cmp_models", []))
analyses = {}
frame = None
with right_col:
    view = st.segmented_control("View", VIEWS, default=VIEWS[0], required=True,
                                label_visibility="collapsed", **bound("cmp_view"))
    for name in chosen:
        try:
            analyses[name] = analysis_for(spec_of(name).to_json(None))
        except ConfigError as exc:
            st.error(md_escape(f"{name} cannot be analysed: {exc}"))
    with top:
        headline(analyses)
    if len(chosen) < 2:
        st.info("Pick at least two models to compare (at most four): presets in the Models box "
                "above; the model from the Build page, a link or a spec file on the left.")
    if view == "Totals" and analyses:
        totals_tab(analyses)
    elif view == "Charts" and analyses:
        charts_tab(analyses)
    elif view == "Layer by layer":
        frame = layers_head(chosen)
    elif view == "Training runs":
        runs_tab(chosen)

if frame is not None:
    layers_table(frame)

write_url()

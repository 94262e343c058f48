"""Inspect: one image through a trained run or the Build page's model, and where a unit looks."""

from __future__ import annotations

import re

import numpy as np
import streamlit as st
import torch

from explorer import inspect_charts as ic
from explorer.bounded import parse_id
from explorer.data import DATASETS, OFFLINE
from explorer.errors import ConfigError
from explorer.forms import md_escape
from explorer.inspect import (
    evaluate,
    first_conv,
    paint_cells,
    pixels_from_file,
    prepare,
    run_image,
)
from explorer.inspect_rf import compare_sentence, effective_rf, receptive_rect, unit_geometry
from explorer.models import build
from explorer.runs import FINAL, RunStore
from explorer.specs import spec_from_dict, spec_from_json
from explorer.weights import load_into, read_weights, run_files, weights_note, weights_path
from pages.common import current_spec, dataset, use_app_navigation, visitor

state = st.session_state
SOURCES = ["A training run", "The Build page's model (untrained)"]
IMAGES = ["Test image", "By class", "A mistake", "Upload", "Draw"]
EPOCH = re.compile(r"^run-\d+-epoch(\d+)\.safetensors$")


@st.cache_resource
def store() -> RunStore:
    """The run store, read only here (the Train page's workers write it)."""
    return RunStore()


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def model_for(key: tuple):
    """("run", id, weights file, its time) or ("build", spec JSON) → (spec, eval-mode model)."""
    if key[0] == "run":
        run = store().get_run(key[1])
        spec = spec_from_dict(run["spec"])
        return spec, load_into(build(spec), read_weights(key[2])).eval()
    spec = spec_from_json(key[1])
    return spec, build(spec).eval()  # untrained: PyTorch's default initialisation


@st.cache_data(max_entries=16, show_spinner=False)
def geometry_for(key: tuple):
    spec, model = model_for(key)
    return unit_geometry(model, spec.input_shape)


@st.cache_data(max_entries=8, show_spinner="Classifying the test images…")
def evaluation_for(key: tuple, data_name: str):
    spec, model = model_for(key)
    return evaluate(model, dataset(data_name, "", False), spec.input_shape)


def linked_run() -> None:
    """A link's ?run=ID (from Train's history) opens that run, once per link."""
    raw = st.query_params.get("run")
    if raw == state.get("in_linked"):
        return
    state["in_linked"] = raw
    if raw:
        try:
            state["in_run"] = parse_id(raw, "The link's run")
            state["in_source"] = SOURCES[0]
        except ConfigError as exc:
            st.warning(md_escape(str(exc)))


def choose_model() -> tuple | None:
    linked_run()
    source = st.radio("Model", SOURCES, key="in_source", horizontal=True)
    if source == SOURCES[1]:
        return ("build", current_spec().to_json(None))
    runs = [r for r in store().list_runs(limit=200, session=visitor()) if r["status"] in FINAL]
    linked = state.get("in_run")
    if isinstance(linked, int) and linked not in {r["id"] for r in runs}:
        try:  # a link to an older run than the list holds
            run = store().get_run(linked)
            if run["status"] in FINAL:
                runs = sorted([*runs, run], key=lambda r: -r["id"])
        except ConfigError:
            pass  # no such run: the sentence below
    if not runs:
        st.info("No finished run yet: train one on the Train page, or inspect the Build page's "
                "model untrained.")
        return None
    by_id = {r["id"]: r for r in runs}
    if state.get("in_run") not in by_id:  # a link's run that is unknown or still training
        if state.get("in_run") is not None:
            st.info(f"Run {state['in_run']} is not a finished run on this server; pick another.")
        state.pop("in_run", None)
    run_id = st.selectbox("Run", list(by_id), key="in_run",
                          format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['status']})")
    files = run_files(store(), run_id)
    if not files:
        note = weights_note(store(), run_id)
        st.warning(note or f"Run #{run_id} kept no weights (it finished before weights were "
                           f"kept, or failed); train it again to inspect it.")
        return None
    epochs = {EPOCH.match(p.name).group(1): p for p in files if EPOCH.match(p.name)}
    final = weights_path(store(), run_id)
    path = final if final.is_file() else files[-1]
    if not final.is_file() and weights_note(store(), run_id):
        st.caption(weights_note(store(), run_id))
    if epochs:  # small models keep every epoch: watch the effective field change
        options = list(epochs) + (["final"] if final.is_file() else [])
        if state.get("in_epoch") not in options:
            state["in_epoch"] = options[-1]
        when = st.select_slider("Weights after epoch", options, key="in_epoch")
        path = epochs.get(when, path)
    st.download_button("Weights (.safetensors)", path.read_bytes(), path.name,
                       "application/octet-stream",
                       help="Loads into the PyTorch source that the Build page exports: "
                            "model.load_state_dict(safetensors.torch.load_file(path)).")
    return ("run", run_id, str(path), path.stat().st_mtime)


def choose_image(data, spec, key: tuple) -> tuple[torch.Tensor, int | None]:
    """The chosen image as dataset pixels (uint8 C×H×W) and its label when known."""
    how = st.radio("Image", IMAGES, key="in_image", horizontal=True)
    n = len(data.test_labels)
    if how == "Test image":
        i = st.number_input("Test image number", 0, n - 1, 0, key="in_index")
    elif how == "By class":
        c = st.selectbox("Class", range(data.num_classes), key="in_class",
                         format_func=lambda k: data.classes[k])
        idx = torch.nonzero(data.test_labels == c).flatten().tolist()
        k = st.number_input(f"Which of its {len(idx)} test images", 1, max(len(idx), 1), 1,
                            key="in_nth")
        i = idx[min(k, len(idx)) - 1]
    elif how == "A mistake":
        wrong = evaluation_for(key, data.name).mistakes(limit=64)
        if not wrong:
            st.success("This model classifies every test image correctly.")
            return data.test_images[0], int(data.test_labels[0])
        i = st.selectbox("Mistake (most confident first)", wrong, key="in_mistake")
    elif how == "Upload":
        up = st.file_uploader("A PNG or JPEG", type=["png", "jpg", "jpeg"], key="in_upload")
        invert = st.checkbox("Dark ink on light paper (invert, as MNIST digits are light on "
                             "dark)", value=True, key="in_invert")
        if up is None:
            st.caption("Until you upload one, the first test image is shown.")
            return data.test_images[0], int(data.test_labels[0])
        return pixels_from_file(up.getvalue(), data.image_shape, invert), None
    else:
        return draw_digit(data.image_shape), None
    return data.test_images[int(i)], int(data.test_labels[int(i)])


def on_paint() -> None:
    points = state["in_canvas_select"]["selection"]["points"]
    cells = [(int(p["y"]), int(p["x"])) for p in points if "x" in p and "y" in p]
    state["in_canvas"] = paint_cells(state["in_canvas"], cells)


def draw_digit(shape) -> torch.Tensor:
    c, h, w = shape
    if state.get("in_canvas") is None or state["in_canvas"].shape != (h, w):
        state["in_canvas"] = np.zeros((h, w), dtype=np.uint8)
    st.plotly_chart(ic.drawing_figure(state["in_canvas"]), key="in_canvas_select",
                    on_select=on_paint, selection_mode=("points", "box", "lasso"))
    if st.button("Clear the drawing", key="in_clear"):
        state["in_canvas"] = np.zeros((h, w), dtype=np.uint8)
        st.rerun()
    grey = torch.from_numpy(state["in_canvas"].copy())[None]
    return grey.expand(c, h, w).contiguous()


def on_unit_click() -> None:
    points = state["in_unit_select"]["selection"]["points"]
    if points and "x" in points[-1]:
        state["in_row"], state["in_col"] = int(points[-1]["y"]), int(points[-1]["x"])


@st.fragment  # choosing another unit reruns only this section
def unit_section(model, key, fwd) -> None:
    st.subheader("Where does a unit look?")
    geo = geometry_for(key)
    layers = [n for n in fwd.maps if n in geo.layers]
    spatial = fwd.spatial_layers()
    if state.get("in_unit_layer") not in layers:
        state["in_unit_layer"] = spatial[min(2, len(spatial) - 1)] if spatial else layers[-1]
    layer = st.selectbox("Layer", layers, key="in_unit_layer")
    out = fwd.maps[layer]
    cols = st.columns(3)
    if state.get("in_channel", 0) >= out.shape[0]:
        state["in_channel"] = 0
    channel = cols[0].number_input("Channel", 0, out.shape[0] - 1, key="in_channel")
    y = x = 0
    if out.dim() == 3:
        for k, limit in (("in_row", out.shape[1]), ("in_col", out.shape[2])):
            if state.get(k, limit) >= limit:  # first time, or a smaller map than the last
                state[k] = limit // 2
        y = cols[1].number_input("Row", 0, out.shape[1] - 1, key="in_row")
        x = cols[2].number_input("Column", 0, out.shape[2] - 1, key="in_col")
    rect = receptive_rect(geo, layer, y, x)
    erf = effective_rf(model, fwd.input, layer, channel, y, x)
    unit = f"{layer}[{channel}, {y}, {x}]" if out.dim() == 3 else f"{layer}[{channel}]"
    # On a narrow screen the three pictures stack (stack_ in assets/style.css), each at full width.
    left, mid, right = st.container(key="stack_unit").columns(3)
    if out.dim() == 3:
        left.plotly_chart(ic.unit_map_figure(out[channel], layer, channel, (y, x)),
                          key="in_unit_select", on_select=on_unit_click,
                          selection_mode="points")
    mid.plotly_chart(ic.receptive_field_figure(fwd.input, rect, f"Theoretical field: "
                                               f"{rect.height}×{rect.width} px"), key="in_rf")
    right.plotly_chart(ic.erf_figure(erf, rect, "Effective field: |∂unit/∂input|"),
                       key="in_erf")
    st.info(compare_sentence(rect, erf, unit))
    if not geo.exact:
        st.caption(f"Receptive field {geo.note}.")


def main() -> None:
    st.title("Inspect a network")
    st.caption("One image through the network: its probabilities, every layer's feature maps, "
               "the filters, and where any unit looks on the image.")
    controls, result = st.container(key="editor_results").columns([1, 1], gap="medium")
    with controls:
        key = choose_model()
        if key is None:
            return
        spec, model = model_for(key)
        names = list(DATASETS)
        default = OFFLINE
        if key[0] == "run":
            default = store().get_run(key[1])["dataset"] or OFFLINE
        data_name = st.selectbox("Dataset", names, key="in_data",
                                 index=names.index(default) if default in names else 0,
                                 format_func=lambda n: DATASETS[n].title)
        data = dataset(data_name, "", False)
        pixels, label = choose_image(data, spec, key)
    x = prepare(pixels, spec.input_shape, data)
    fwd = run_image(model, x)
    result.plotly_chart(ic.probabilities_figure(fwd.probs, data.classes, label), key="in_probs")
    st.plotly_chart(ic.feature_strip(fwd, ic.strip_layers(fwd), data.classes), key="in_strip")
    spatial = fwd.spatial_layers()
    if state.get("in_layer") not in fwd.maps:
        state["in_layer"] = spatial[0] if spatial else next(iter(fwd.maps))
    left, right = st.container(key="stack_channels").columns([2, 1], gap="medium")
    with left:
        layer = st.selectbox("Channels of layer", list(fwd.maps), key="in_layer")
        st.plotly_chart(ic.channel_grid(fwd.maps[layer], layer), key="in_grid")
    name, weight = first_conv(model)
    right.plotly_chart(ic.filters_figure(weight, name), key="in_filters")
    unit_section(model, key, fwd)
    st.subheader("The test set")
    if st.toggle("Confusion matrix and most confident mistakes", key="in_confusion"):
        ev = evaluation_for(key, data.name)
        wrong = ev.mistakes(limit=16)
        left, right = st.columns([1, 1], gap="medium")
        left.plotly_chart(ic.confusion_figure(ev.confusion, data.classes, ev.accuracy),
                          key="in_cm")
        right.plotly_chart(ic.images_grid(
            [data.test_images[i] for i in wrong],
            [f"#{i}: {data.classes[ev.predicted[i]]} {ev.confidence[i]:.0%}" for i in wrong],
            "Most confident mistakes (test image: predicted, probability)", cols=4),
            key="in_wrong")


use_app_navigation()  # before anything is drawn (see pages.common)
try:
    main()
except ConfigError as exc:
    st.error(str(exc))

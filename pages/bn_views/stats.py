"""Statistics during training: record a run's BN statistics on a worker and watch them live."""

from __future__ import annotations

import streamlit as st

from explorer import bn_charts, bn_lab
from explorer.admission import head_for
from explorer.data import DATA_HELP, DATASETS, OFFLINE, default_data_dir
from explorer.errors import ConfigError
from explorer.footprint import DataSizes
from explorer.forms import md_escape
from explorer.models import validate
from explorer.registry import get_preset
from explorer.training import TrainConfig
from pages.bn_views.shared import (
    KEEP,
    chosen_dataset,
    data_ref,
    settings_and_results,
    state,
    write_link,
)
from pages.common import (
    current_spec,
    fmt_bytes,
    get_manager,
    is_teacher,
    job_fragment_interval,
    price_run,
    visitor,
)

BUILD = "Build page"


@st.cache_data(show_spinner=False)
def bn_preset_names() -> list[str]:
    return bn_lab.bn_presets()


@st.cache_resource(max_entries=8, show_spinner="Reading the run's statistics…")
def stored_run(run_id: int):
    """Statistics and histograms of a finished run, read once from the store."""
    store = get_manager().store
    return bn_lab.load_stats(store, run_id), bn_lab.load_histograms(store, run_id)


def start_recording() -> None:
    """Queue a run with the statistics recorder; mistakes become a sentence."""
    try:
        if state["bn_model"] == BUILD:
            spec = current_spec()
            label = f"build_{spec.family}"
        else:
            label, spec = state["bn_model"], get_preset(state["bn_model"]).spec
        validate(spec)
        config = TrainConfig(lr=state["bn_lr"], batch_size=state["bn_batch"],
                             epochs=state["bn_epochs"], metrics_every=5)
        every = None if state["bn_every"] == "auto" else int(state["bn_every"])
        data = chosen_dataset()
        # The statistics are the point here: a head of another size is resized to the data's.
        spec = head_for(spec, DataSizes.of(data), True)
        price = price_run(spec, config, data_ref())
        if price.refusal is not None:
            raise price.refusal
        job = bn_lab.start_recorded_run(get_manager(), label, spec, config, data_ref(), data,
                                        every=every, session=visitor(), teacher=is_teacher(),
                                        footprint=price.footprint.peak_bytes)
    except ConfigError as exc:
        state["bn_error"] = str(exc)
        return
    state["bn_run"] = job
    state.pop("bn_layer", None)


def record_panel() -> None:
    with st.expander("Record a new run", expanded=not bn_lab.recorded_runs(get_manager().store)):
        models = [*bn_preset_names(), BUILD]
        st.selectbox("Model (with batch norm)", models, index=models.index("course_bn_lenet"),
                     key="bn_model", persist_state=KEEP,
                     help="Every preset with BN layers, or the network on the Build page")
        st.selectbox("Data", list(DATASETS), index=list(DATASETS).index(OFFLINE), key="bn_data",
                     persist_state=KEEP,
                     format_func=lambda k: DATASETS[k].title, help=DATA_HELP)
        if state["bn_data"] != OFFLINE:
            st.text_input("Data directory", str(default_data_dir()), key="bn_dir",
                          persist_state=KEEP,
                          help="Where torchvision's files lie (also $EXPLORER_DATA_DIR)")
        c1, c2, c3 = st.columns(3)
        c1.number_input("Epochs", 1, 50, 3, key="bn_epochs", persist_state=KEEP)
        c2.number_input("Batch", 2, 1024, 128, key="bn_batch", persist_state=KEEP)
        c3.number_input("lr", 1e-4, 5.0, 0.1, key="bn_lr", persist_state=KEEP, format="%.3f")
        st.selectbox("Record every … steps", ["auto", 1, 5, 10, 50, 100], key="bn_every",
                     persist_state=KEEP,
                     help="auto: every 10th step or less often, so that recording costs under "
                          "5% of the training time and a run keeps under 200 columns and 8 MB; "
                          "1 shows every step of a short run")
        st.button("Start recording", on_click=start_recording, type="primary", width="stretch")
        st.caption("SGD with momentum 0.9. Every BN layer's statistics are recorded, and "
                   "saved with the run at every epoch end.")


def run_picker() -> int | None:
    runs = bn_lab.recorded_runs(get_manager().store)
    ids = [r["id"] for r in runs]
    if "bn_run_refused" in state:
        st.warning(md_escape(state.pop("bn_run_refused")))
    if state.get("bn_run") is not None and state["bn_run"] not in ids:
        st.error(f"Run {state['bn_run']} has no recorded BN statistics here (it may have "
                 f"been deleted, or trained on the Train page without a recorder); pick "
                 f"another run or record a new one.")
        state["bn_run"] = None
    if not ids:
        return None
    # No status in the label: the live panel shows it, and a label would go stale while the
    # panel alone redraws.
    labels = {r["id"]: f"#{r['id']} {r['name'].removeprefix(bn_lab.RECORDED_PREFIX)}"
              for r in runs}
    if state.get("bn_run") is None:
        state["bn_run"] = ids[0]
    st.selectbox("Run", ids, key="bn_run", persist_state=KEEP,
                 format_func=lambda i: labels.get(i, f"#{i}"),
                 on_change=lambda: state.pop("bn_layer", None))
    return state["bn_run"]


def run_data(run_id: int, live: bool):
    """(statistics, histograms) of a run from the store: read afresh while its worker trains
    it (the worker saves every 2 s), read once and cached when it has finished."""
    if live:
        store = get_manager().store
        return bn_lab.load_stats(store, run_id), bn_lab.load_histograms(store, run_id)
    return stored_run(run_id)


def status_line(run_id: int) -> bool:
    """Show the run's status; True while it may still change."""
    try:
        snap = get_manager().get(run_id)
    except ConfigError as exc:
        st.error(str(exc))
        return False
    if snap.status == "queued":
        st.info(f"Run {run_id} is waiting: position {snap.queue_position} in the queue.")
    elif snap.status == "running":
        total = f" of {snap.total_steps:,}" if snap.total_steps else ""
        st.success(f"Run {run_id} is training on {snap.device}: step {snap.step:,}{total}. "
                   f"The figures follow it live.")
    elif snap.status == "failed":
        st.error(f"Run {run_id} failed: {md_escape(snap.error or '')}")
    else:
        st.info(f"Run {run_id} {snap.status}.")
    return not snap.done


def stats_panel(run_id: int) -> None:
    """Metrics and figures of one run's BN statistics (redrawn every 2 s while it trains)."""
    live = status_line(run_id)
    stats, hists = run_data(run_id, live)
    if stats is None or not stats.layers or not len(stats.steps):
        if not live:
            st.warning(f"Run {run_id} stored no BN statistics: it ended before its first save. "
                       f"Record a new run.")
        else:
            st.caption("The first statistics appear after the first training step.")
        return
    layers = stats.layers
    if state.get("bn_layer") not in layers:
        state["bn_layer"] = next(iter(layers))
    steps = stats.steps
    top = st.columns(4)
    top[0].metric("BN layers", len(layers))
    top[1].metric("Channels", f"{sum(layers.values()):,}")
    top[2].metric("Recorded steps", len(steps), help=f"every {stats.every} training steps")
    top[3].metric("Statistics", fmt_bytes(stats.nbytes))

    def layer_label(name: str) -> str:
        shape = ""
        if hists is not None and len(hists) and name in hists.get(-1):
            shape = " · " + ("N×C×H×W" if len(hists.get(-1)[name]["shape"]) > 2 else "N×D")
        return f"{name} ({layers[name]} channels{shape})"

    c1, c2 = st.columns([1.3, 1])  # the layer's label is long; the channels fit as chips
    layer = c1.selectbox("BN layer", list(layers), key="bn_layer", persist_state=KEEP,
                         format_func=layer_label)
    write_link()  # a layer chosen inside the live panel, whose reruns skip the page's end
    C = layers[layer]
    default = [c for c in state.get("bn_channels", [0, 1, 2]) if c < C] or [0]
    channels = c2.multiselect("Channels to follow", list(range(C)), default=default,
                              max_selections=8, key=f"bn_channels_{run_id}_{layer}")
    state["bn_channels"] = channels
    n = len(steps)  # a training thread may record another step while this panel draws

    def series(quantity: str):
        return stats.series(layer, quantity)[:n]

    mean, var = series("batch_mean"), series("batch_var")
    st.plotly_chart(bn_charts.stat_heatmap(steps, mean, f"{layer}: batch mean per channel",
                                           "mean", diverging=True), width="stretch",
                    key=f"bn_hm_mean_{run_id}")
    st.plotly_chart(bn_charts.stat_heatmap(steps, var ** 0.5,
                                           f"{layer}: batch standard deviation per channel",
                                           "std"), width="stretch", key=f"bn_hm_std_{run_id}")
    if channels:
        st.plotly_chart(bn_charts.running_vs_batch(
            steps, mean, series("running_mean"), var, series("running_var"), channels),
            width="stretch",
            key=f"bn_rvb_{run_id}")
        st.caption("PyTorch's running variance averages the *unbiased* batch variance "
                   "(× n/(n−1)); the dots are the biased one it normalises with. With few "
                   "values per channel (a linear layer, small batches) the line sits above "
                   "the dots.")
    else:
        st.info("Choose one or more channels to compare their running averages with the "
                "batch values.")
    step = int(steps[-1])
    if n > 1:  # a slider needs two steps to choose from
        step = st.select_slider("Step for γ and β", options=steps.tolist(), value=step)
    i = steps.tolist().index(step)
    st.plotly_chart(bn_charts.gamma_beta_bars(series("gamma")[i], series("beta")[i], step),
                    width="stretch", key=f"bn_gb_{run_id}")
    histogram_section(layer, hists)


def histogram_section(layer: str, hists) -> None:
    if hists is None or not len(hists):
        st.caption("Activation histograms are taken before the first step and at every "
                   "epoch end; none yet.")
        return
    moments = hists.moments()
    labels = ["before training (step 0)" if e == 0 else f"after epoch {e} (step {s:,})"
              for s, e in moments]
    k = st.selectbox("Histograms taken", range(len(moments)), index=len(moments) - 1,
                     format_func=lambda j: labels[j])
    layers = hists.get(k)
    if layer not in layers:
        st.info(f"{layer} was not used in that forward pass.")
        return
    st.plotly_chart(bn_charts.activation_histograms(layers[layer], layer, labels[k]),
                    width="stretch")
    st.caption("One batch of 64 test images with BN normalising by the batch's own statistics "
               "(as in training). Taken inside the run, because the run store keeps no "
               "weights to compute them from later.")


def show() -> None:
    # The recorder and the run side by side, the figures under them at the page's full width
    # (five figures with two panels each: beside the settings they were cut).
    left, right = settings_and_results((1, 1))
    with left:
        record_panel()
        if "bn_error" in state:
            st.error(state.pop("bn_error"))
    with right:
        run_id = run_picker()
        st.caption("The statistics are the input of each BN layer (batch mean and variance "
                   "per channel), its running averages, and γ, β: d2l §8.5.")
    if run_id is None:
        st.info("No run has recorded BN statistics yet. Choose a model under **Record a new "
                "run** and press **Start recording**, or run the one-click experiment "
                "(LeNet ± BN).")
        return
    # Every 2 s: five figures per redraw, and the server's CPU also trains the run.
    interval = 2.0 if job_fragment_interval(run_id) else None
    if interval:
        state["bn_live_was_running"] = run_id

    @st.fragment(run_every=interval)
    def live() -> None:
        stats_panel(run_id)
        if interval is None or state.get("bn_live_was_running") != run_id:
            return
        if job_fragment_interval(run_id) is None:
            state.pop("bn_live_was_running")
            st.rerun()  # the run ended: rerun the page so that the fragment stops polling

    live()

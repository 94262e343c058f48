"""Batch norm: statistics of a training run, BN from scratch, train vs eval, folding, norms."""

from __future__ import annotations

import contextlib

import pandas as pd
import streamlit as st
import torch

from explorer import bn, bn_charts, bn_lab
from explorer.admission import head_for
from explorer.bounded import parse_id
from explorer.data import DATA_HELP, DATASETS, OFFLINE, default_data_dir
from explorer.errors import ConfigError
from explorer.footprint import DataSizes
from explorer.forms import md_escape
from explorer.jobs import DataRef
from explorer.models import validate
from explorer.registry import get_preset
from explorer.training import TrainConfig
from pages.common import (
    current_spec,
    dataset,
    drawn,
    fmt_bytes,
    get_manager,
    is_teacher,
    job_fragment_interval,
    price_run,
    restore_widgets,
    save_widgets,
    use_app_navigation,
    visitor,
    write_query,
)

use_app_navigation()  # before anything is drawn (see pages.common)

state = st.session_state
VIEWS = {"stats": "Statistics during training", "experiment": "LeNet ± BN", "scratch":
         "BN from scratch", "modes": "Train vs eval", "batch": "Batch size", "fold": "Folding",
         "norms": "Other norms"}
BUILD = "Build page"
FOLD_CHOICES = ("course_resnet18", "course_bn_lenet", "course_resnext", "course_densenet",
                "course_resnet_3x4_28", "resnet18", "resnet50", "densenet121", "googlenet")
# Every section's controls and their first values (the keys are session-state keys; the data
# directories are added by defaults()).
DEFAULTS = {
    "bn_view": "stats",
    "bn_model": "course_bn_lenet", "bn_data": OFFLINE, "bn_epochs": 3, "bn_batch": 128,
    "bn_lr": 0.1, "bn_every": "auto",
    "bn_exp_data": OFFLINE, "bn_exp_epochs": bn_lab.EXPERIMENT_EPOCHS, "bn_exp_seed": 0,
    "bn_sc_layout": "N×C×H×W", "bn_sc_n": 8, "bn_sc_steps": 5, "bn_sc_scale": 1.0,
    "bn_sc_seed": 0,
    "bn_md_batch": 64, "bn_md_example": 0,
    "bn_fold_model": FOLD_CHOICES[0],
    "bn_nm_n": 3, "bn_nm_c": 6, "bn_nm_h": 2, "bn_nm_w": 2, "bn_nm_kind": "batch",
}
# Streamlit forgets a widget's value when a run does not draw it (another page, or another
# section of this one); a plain copy made at the end of every run brings it back.
KEPT = (*DEFAULTS, "bn_dir", "bn_exp_dir", "bn_run", "bn_layer", "bn_nm_g")
SAVED = "bn_saved"
URL_KEYS = ("bn_view", "bn_run", "bn_layer", "bn_exp")
WRITTEN = "bn_url_written"  # the URL this page wrote last: a different one is a new link


# ---- shared, cached resources -------------------------------------------------------------------

@st.cache_data(show_spinner=False)
def bn_preset_names() -> list[str]:
    return bn_lab.bn_presets()


@st.cache_resource(max_entries=8, show_spinner="Reading the run's statistics…")
def stored_run(run_id: int):
    """Statistics and histograms of a finished run, read once from the store."""
    store = get_manager().store
    return bn_lab.load_stats(store, run_id), bn_lab.load_histograms(store, run_id)


@st.cache_resource(show_spinner="Training a BN-LeNet for the demonstrations (a few seconds)…")
def demo():
    """A briefly trained BN-LeNet, the offline digits, and a lock (modes change during a demo)."""
    import threading

    data = dataset(OFFLINE, str(default_data_dir()), False)
    return bn_lab.demo_model(data), data, threading.Lock()


# ---- URL state ----------------------------------------------------------------------------------

def defaults() -> dict:
    return DEFAULTS | {"bn_dir": str(default_data_dir()), "bn_exp_dir": str(default_data_dir())}


def first_load() -> None:
    """Section, run, layer and experiment from the URL (a teacher's link); the settings the
    link does not name keep their values in this session, else their defaults."""
    restore_widgets(SAVED)
    for key, value in defaults().items():
        if key not in state:
            state[key] = value
    params = st.query_params.to_dict()
    state["bn_view"] = params.get("bn_view") if params.get("bn_view") in VIEWS else "stats"
    with contextlib.suppress(KeyError, ConfigError):  # ASCII digits in SQLite's range, or none
        state["bn_run"] = parse_id(params["bn_run"], "bn_run")
    if params.get("bn_layer"):
        state["bn_layer"] = params["bn_layer"]
    parts = str(params.get("bn_exp", "")).split(",")
    if len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts):
        try:
            state["bn_exp"] = bn_lab.linked_experiment(
                get_manager().store, parse_id(parts[0], "bn_exp"), parse_id(parts[1], "bn_exp"))
        except ConfigError as exc:
            state.pop("bn_exp", None)
            state["bn_exp_error"] = md_escape(str(exc)[0].upper() + str(exc)[1:])


def url_is_new() -> bool:
    url = {k: v for k, v in st.query_params.to_dict().items() if k in URL_KEYS}
    return bool(url) and url != state.get(WRITTEN)


def forget(key: str) -> None:
    """Drop a value for good (restore_widgets would otherwise bring the saved copy back)."""
    state.pop(key, None)
    state.get(SAVED, {}).pop(key, None)


def kept(key: str) -> str:
    """A widget's key (one of KEPT), noted as drawn in this run."""
    return drawn(SAVED, key)


def keep(key: str, value) -> None:
    """Save and link a value chosen inside a fragment, whose reruns skip the page's end."""
    state.setdefault(SAVED, {})[key] = value
    if key in URL_KEYS:
        st.query_params[key] = str(value)
        state.setdefault(WRITTEN, {})[key] = str(value)


def write_url() -> None:
    """Save every control (see KEPT) and put the section, run, layer and experiment in the URL."""
    wanted = {"bn_view": state["bn_view"]}
    if state.get("bn_run") is not None:
        wanted["bn_run"] = str(state["bn_run"])
    if state.get("bn_layer"):
        wanted["bn_layer"] = state["bn_layer"]
    if state.get("bn_exp") is not None:
        wanted["bn_exp"] = f"{state['bn_exp'].bn_run},{state['bn_exp'].plain_run}"
    write_query(wanted, owned=lambda k: k in URL_KEYS)
    state[WRITTEN] = wanted
    save_widgets(SAVED, KEPT)


def data_ref(prefix: str = "bn") -> DataRef:
    return DataRef(state[f"{prefix}_data"], state.get(f"{prefix}_dir", str(default_data_dir())),
                   state.get(f"{prefix}_download", False))


def chosen_dataset(prefix: str = "bn"):
    ref = data_ref(prefix)
    return dataset(ref.name, ref.data_dir, ref.download)


# ---- Statistics during training -----------------------------------------------------------------

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
    forget("bn_layer")


def record_panel() -> None:
    with st.expander("Record a new run", expanded=not bn_lab.recorded_runs(get_manager().store)):
        st.selectbox("Model (with batch norm)", [*bn_preset_names(), BUILD], key=kept("bn_model"),
                     help="Every preset with BN layers, or the network on the Build page")
        st.selectbox("Data", list(DATASETS), key=kept("bn_data"),
                     format_func=lambda k: DATASETS[k].title, help=DATA_HELP)
        if state["bn_data"] != OFFLINE:
            st.text_input("Data directory", key=kept("bn_dir"),
                          help="Where torchvision's files lie (also $EXPLORER_DATA_DIR)")
        c1, c2, c3 = st.columns(3)
        c1.number_input("Epochs", 1, 50, key=kept("bn_epochs"))
        c2.number_input("Batch", 2, 1024, key=kept("bn_batch"))
        c3.number_input("lr", 1e-4, 5.0, key=kept("bn_lr"), format="%.3f")
        st.selectbox("Record every … steps", ["auto", 1, 5, 10, 50, 100], key=kept("bn_every"),
                     help="auto: every 10th step or less often, so that recording costs under "
                          "5% of the training time and a run keeps under 200 columns and 8 MB; "
                          "1 shows every step of a short run")
        st.button("Start recording", on_click=start_recording, type="primary", width="stretch")
        st.caption("SGD with momentum 0.9. Every BN layer's statistics are recorded, and "
                   "saved with the run at every epoch end.")


def run_picker() -> int | None:
    runs = bn_lab.recorded_runs(get_manager().store)
    ids = [r["id"] for r in runs]
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
    st.selectbox("Run", ids, key=kept("bn_run"), format_func=lambda i: labels.get(i, f"#{i}"),
                 on_change=lambda: forget("bn_layer"))
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

    c1, c2 = st.columns([1, 1.4])
    layer = c1.selectbox("BN layer", list(layers), key=kept("bn_layer"), format_func=layer_label)
    keep("bn_layer", layer)  # a layer chosen inside the live panel
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


def view_stats() -> None:
    left, right = st.columns([1, 2.3], gap="medium")
    with left:
        record_panel()
        if "bn_error" in state:
            st.error(state.pop("bn_error"))
        run_id = run_picker()
        st.caption("The statistics are the input of each BN layer (batch mean and variance "
                   "per channel), its running averages, and γ, β: d2l §8.5.")
    with right:
        if run_id is None:
            st.info("No run has recorded BN statistics yet. Choose a model on the left and "
                    "press **Start recording**, or run the one-click experiment (LeNet ± BN).")
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


# ---- The lecture's experiment -------------------------------------------------------------------

EXPECT = (
    "**What you should see** (measured on the offline digits, seeds 0–2): with BN the "
    "training loss falls from about 1.3 in epoch 1 to 0.5 in epoch 2 and below 0.2 by epoch "
    "5, and test accuracy passes 85% by epoch 3 or 4. Without BN the same sigmoid LeNet at "
    "learning rate 1.0 stays at loss ≈ 2.30 = ln 10, a uniform guess, with 10% test accuracy "
    "for at least the first 6 epochs in all three seeds; after 10 epochs the best of them had "
    "reached 27% (with BN: 93–95%)."
)


def start_experiment() -> None:
    try:
        exp = bn_lab.start_experiment(get_manager(), data_ref("bn_exp"),
                                      chosen_dataset("bn_exp"), state["bn_exp_epochs"],
                                      state["bn_exp_seed"], session=visitor(),
                                      teacher=is_teacher())
    except ConfigError as exc:
        state["bn_exp_error"] = str(exc)
        return
    state["bn_exp"] = exp


def apply_goto() -> None:
    """Switch to a run's statistics, asked for from inside a fragment (see experiment_panel)."""
    run_id = state.pop("bn_goto", None)
    if run_id is not None:
        state["bn_view"], state["bn_run"] = "stats", run_id
        forget("bn_layer")


def experiment_panel(exp: bn_lab.Experiment) -> None:
    manager = get_manager()
    try:
        bn_snap, plain_snap = manager.get(exp.bn_run), manager.get(exp.plain_run)
    except ConfigError as exc:
        st.error(f"{exc} Start the experiment again.")
        return
    for name, snap in (("with BN", bn_snap), ("without BN", plain_snap)):
        if snap.status == "failed":
            st.error(f"LeNet {name} (run {snap.job_id}) failed: {md_escape(snap.error or '')}")
    cols = st.columns(4)
    for col, (name, snap) in zip(cols[:2], (("with BN", bn_snap), ("without BN", plain_snap)),
                                 strict=True):
        ep = snap.epoch_metrics
        col.metric(f"Loss {name}", f"{ep[-1]['train_loss']:.2f}" if ep else "–",
                   help=f"run {snap.job_id}, {snap.status}: training loss of the last epoch")
    for col, (name, snap) in zip(cols[2:], (("with BN", bn_snap), ("without BN", plain_snap)),
                                 strict=True):
        ep = snap.epoch_metrics
        acc = ep[-1].get("test_acc") if ep else None
        col.metric(f"Test acc {name}", f"{acc:.0%}" if acc is not None else "–")
    frames = []
    for snap in (bn_snap, plain_snap):
        steps = pd.DataFrame(list(snap.step_metrics))
        epochs = pd.DataFrame(list(snap.epoch_metrics))
        frames += [steps, epochs]
    st.plotly_chart(bn_charts.experiment_curves(frames[0], frames[2], frames[1], frames[3]),
                    width="stretch", key="bn_exp_curves")
    verdict = bn_lab.experiment_verdict(bn_snap.epoch_metrics, plain_snap.epoch_metrics)
    if bn_snap.done and plain_snap.done:
        (st.success if verdict.happened else st.warning)(verdict.text)
    else:
        waiting = [f"{n} (run {s.job_id}: {s.status}"
                   + (f", queue position {s.queue_position})" if s.queue_position else ")")
                   for n, s in (("with BN", bn_snap), ("without BN", plain_snap)) if not s.done]
        st.info(f"Training {' and '.join(waiting)}. So far: {verdict.text}")
    if st.button(f"Open the statistics of the BN run (#{exp.bn_run})"):
        # A fragment's button reruns only the fragment; switching sections needs the whole page.
        state["bn_goto"] = exp.bn_run
        st.rerun()


def view_experiment() -> None:
    left, right = st.columns([1, 2.3], gap="medium")
    with left:
        st.markdown("The batch-norm lecture's experiment: the classic LeNet (sigmoid, max "
                    "pooling, Xavier init) trained with plain SGD at **learning rate 1.0**, "
                    "batch 256, once with BN before every sigmoid and once without, on the same "
                    "data with the same seed.")
        st.selectbox("Data", list(DATASETS), key=kept("bn_exp_data"),
                     format_func=lambda k: DATASETS[k].title, help=DATA_HELP)
        if state["bn_exp_data"] != OFFLINE:
            st.text_input("Data directory", key=kept("bn_exp_dir"))
        c1, c2 = st.columns(2)
        c1.number_input("Epochs", 1, 30, key=kept("bn_exp_epochs"),
                        help="5 epochs of both runs: about 4 s on an idle CPU core (offline "
                             "digits); longer while the server is busy")
        c2.number_input("Seed", 0, 2**31 - 1, key=kept("bn_exp_seed"))
        st.button("Train both", type="primary", on_click=start_experiment, width="stretch")
        if "bn_exp_error" in state:
            st.error(state.pop("bn_exp_error"))
        st.markdown(EXPECT)
        st.caption("With BN the test accuracy can dip for an epoch: at lr 1.0 the weights move "
                   "fast and the running averages used in eval mode lag behind them.")
    with right:
        exp = state.get("bn_exp")
        if exp is None:
            st.info("Press **Train both**: two short runs queue on the server, the BN one "
                    "recording its statistics, and their curves appear here.")
            return
        ids = (exp.bn_run, exp.plain_run)
        interval = 1.0 if any(job_fragment_interval(i) for i in ids) else None
        if interval:
            state["bn_exp_live"] = ids

        @st.fragment(run_every=interval)
        def live() -> None:
            experiment_panel(exp)
            if interval and state.get("bn_exp_live") == ids and not any(
                    job_fragment_interval(i) for i in ids):
                state.pop("bn_exp_live")
                st.rerun()

        live()


# ---- BN from scratch against nn.BatchNorm -------------------------------------------------------

@st.cache_data(max_entries=32, show_spinner=False)
def scratch_tables(layout: str, n: int, steps: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 4) if layout == "N×D" else (n, 3, 4, 4)
    x = (torch.randn(shape, generator=g) * 2 + 1) * scale
    table = pd.DataFrame(bn.compare_with_torch(x, steps, seed=seed)).T
    return table, bn_lab.one_step_running_var(x)


def view_scratch() -> None:
    left, right = st.columns([1, 2.3], gap="medium")
    with left:
        st.markdown("The layer written from scratch as the lecture derives it "
                    "(`explorer.bn.batch_norm`), in four conventions, against PyTorch's "
                    "`nn.BatchNorm1d/2d` on the same input, the same γ and β, and the same "
                    "training steps.")
        st.radio("Input", ["N×C×H×W", "N×D"], key=kept("bn_sc_layout"), horizontal=True,
                 format_func={"N×C×H×W": "after a conv (N×3×4×4)",
                              "N×D": "after a linear layer (N×4)"}.get)
        st.number_input("Batch size N", 2, 256, key=kept("bn_sc_n"))
        st.number_input("Training steps", 1, 50, key=kept("bn_sc_steps"))
        st.select_slider("Input scale", [1.0, 0.1, 0.01, 0.001], key=kept("bn_sc_scale"),
                         help="Multiply the input: a small σ makes (σ + ε) and √(σ² + ε) "
                              "disagree")
        st.number_input("Seed", 0, 10_000, key=kept("bn_sc_seed"))
    table, one = scratch_tables(state["bn_sc_layout"], state["bn_sc_n"], state["bn_sc_steps"],
                                state["bn_sc_scale"], state["bn_sc_seed"])
    with right:
        py = table.loc["pytorch"]
        top = st.columns(3)
        top[0].metric("Train output, max |Δ|", f"{py['train_output']:.1e}",
                      help="scratch 'pytorch' convention against nn.BatchNorm, training mode")
        top[1].metric("Eval output, max |Δ|", f"{py['eval_output']:.1e}")
        top[2].metric("running_var, max |Δ|", f"{py['running_var']:.1e}")
        shown = table.assign(convention=table.index)
        st.dataframe(shown[["convention", "momentum", "train_output", "eval_output",
                            "running_mean", "running_var"]],
                     hide_index=True, width="stretch", column_config={
                         k: st.column_config.NumberColumn(k, format="%.1e") for k in
                         ("train_output", "eval_output", "running_mean", "running_var")})
        st.caption("Each number is the largest absolute difference from nn.BatchNorm after "
                   f"{state['bn_sc_steps']} training steps (float32: 1e-7 means equal).")
        with st.expander("What each convention does"):
            for name in table.index:
                st.markdown(f"- **{name}**: {bn.CONVENTIONS[name].description}")
        st.markdown("**Three convention traps**")
        st.markdown(
            f"1. **Unbiased running variance.** PyTorch normalises with the biased variance "
            f"(÷ n) but updates running_var with the unbiased one (÷ (n−1)). Here n = "
            f"{one['n']} values per channel: channel 0's batch variance is "
            f"{one['biased_var']:.4f} biased, {one['unbiased_var']:.4f} unbiased, so after one "
            f"step PyTorch's running_var is 0.9 + 0.1 × {one['unbiased_var']:.4f} = "
            f"{one['torch_running_var']:.4f}, the book's {one['book_running_var']:.4f}. That "
            f"is the d2l row's running_var difference "
            f"({table.loc['d2l', 'running_var']:.1e}); it shrinks as n grows.")
        st.markdown(
            f"2. **Momentum 0.1 = momentum 0.9.** PyTorch's momentum weights the new batch "
            f"(new = 0.9·old + 0.1·batch); the MXNet notebook's 0.9 weights the old value, the "
            f"same update. The mxnet row's running mean differs by "
            f"{table.loc['mxnet', 'running_mean']:.1e}; only its running variance differs "
            f"(biased, trap 1).")
        st.markdown(
            f"3. **(σ + ε) against √(σ² + ε).** Dividing by σ + ε matches only while σ ≫ ε = "
            f"1e-5: the sigma_eps row's training output differs by "
            f"{table.loc['sigma_eps', 'train_output']:.1e} at input scale "
            f"{state['bn_sc_scale']:g}; try 0.001.")


# ---- Train vs eval ------------------------------------------------------------------------------

@st.cache_data(max_entries=64, show_spinner="Running the model in both modes…")
def modes_result(batch_size: int, example: int):
    model, data, lock = demo()
    x = bn_lab.demo_batch(data, batch_size, (1, 28, 28))
    with lock:
        result = bn.train_vs_eval(model, x, example=example, bn_only=True)
    labels = data.test_labels[:batch_size].numpy()
    return result, labels


def view_modes() -> None:
    left, right = st.columns([1, 2.3], gap="medium")
    with left:
        st.markdown("A BN-LeNet trained for 45 steps (lr 1.0) on the offline digits, fed the "
                    "same test batch in **eval mode** (running averages, `model.eval()`) and in "
                    "**training mode** (each BN layer uses this batch's own mean and variance).")
        st.select_slider("Batch size", [2, 4, 8, 16, 32, 64, 128, 256], key=kept("bn_md_batch"))
        st.number_input("Example to follow", 0, 255, key=kept("bn_md_example"),
                        help="Its position in the batch")
    n, ex = state["bn_md_batch"], state["bn_md_example"]
    with right:
        if ex >= n:
            st.error(f"Example {ex} is not in a batch of {n}; choose a position from 0 to "
                     f"{n - 1} or a larger batch.")
            return
        r, labels = modes_result(n, ex)
        top = st.columns(4)
        top[0].metric("Max |Δ output|", f"{r['max_abs_diff']:.2f}",
                      help="largest difference between the two modes' logits")
        # Short labels: four metrics share the right column (about 165 px each at 1280 px).
        top[1].metric("Disagreement", f"{r['pred_disagreement']:.0%}",
                      help="share of the batch whose predicted class differs between the "
                           "two modes")
        acc_eval = float((r["eval_pred"] == labels).mean())
        acc_train = float((r["train_pred"] == labels).mean())
        top[2].metric("Accuracy, eval", f"{acc_eval:.0%}",
                      help="eval mode: every BN layer uses its running averages")
        top[3].metric("Accuracy, train", f"{acc_train:.0%}",
                      help="training mode: every BN layer uses this batch's mean and variance")
        st.plotly_chart(bn_charts.train_vs_eval_scores(r, ex, int(labels[ex])), width="stretch")
        single = r["single"]
        st.markdown(
            f"**One example alone.** In eval mode example {ex} gets the same scores alone as "
            f"inside the batch (largest difference {single['eval_alone_vs_in_batch']:.1e}): "
            f"each example is normalised with fixed averages. In training mode its scores "
            f"depend on the other {n - 1} examples of the batch.")
        if single["error"]:
            st.warning(f"Alone in training mode it cannot run at all. PyTorch says: "
                       f"“{single['error']}”: the BN layers after the linear layers see one "
                       f"value per channel, whose variance is 0.")
        st.caption("Forgetting `model.eval()` before testing is the classic bug: smaller "
                   "batches make the two modes disagree more. Try batch size 2.")


# ---- Batch size ---------------------------------------------------------------------------------

@st.cache_data(show_spinner="Drawing 200 batches of each size…")
def noise_results():
    model, data, lock = demo()
    x = bn_lab.demo_batch(data, len(data.test_labels), (1, 28, 28))
    with lock:
        inputs = bn_lab.bn_inputs(model, x)
    conv, fc = inputs["features.bn2"][:, :4], inputs["head.bn1"]
    return {
        "conv": bn.batch_stat_noise(bn_lab.standardise_channels(conv), trials=100),
        "fc": bn.batch_stat_noise(bn_lab.standardise_channels(fc), trials=200),
        "one_conv": bn.batch_size_one(conv), "one_fc": bn.batch_size_one(fc),
        "conv_shape": tuple(conv.shape[1:]), "fc_shape": tuple(fc.shape[1:]),
    }


def view_batch() -> None:
    res = noise_results()
    left, right = st.columns([1, 2.3], gap="medium")
    with left:
        st.markdown("BN's mean and variance come from one batch, so they are noisy. The inputs "
                    "are what two BN layers of the trained BN-LeNet receive for the 1,000 "
                    "offline test digits; batches are drawn from them 200 times per size "
                    "(100 for the conv layer).")
        st.markdown("Each channel is measured in units of its own population mean and "
                    "standard deviation, so the two layers compare. The mean's spread falls "
                    "like 1/√(batch size); a conv channel pools every position of every "
                    "example, so its statistics are steadier at the same batch size.")
        st.markdown("The lecture's advice: batches of 50–100 give statistics stable enough to "
                    "train with, and noisy enough to regularise a little.")
    with right:
        c, h, w = res["conv_shape"]
        per = h * w
        curves = {"after a linear layer (head.bn1: 1 value per example)": res["fc"]["rows"],
                  f"after a conv (features.bn2: {h}×{w} = {per} values per example)":
                      res["conv"]["rows"]}
        st.plotly_chart(bn_charts.batch_noise(curves), width="stretch")
        fc1, cv1 = res["one_fc"], res["one_conv"]
        rows = [
            {"layer": "after a linear layer (N×D)", "values per channel": fc1["values_per_channel"],
             "channels with variance 0": f"{(fc1['batch_var'] == 0).mean():.0%}",
             "output": "β exactly" if fc1["output_equals_beta"] else "depends on the input",
             "nn.BatchNorm": "refuses" if fc1["torch_error"] else "runs"},
            {"layer": "after a conv (N×C×H×W)", "values per channel": cv1["values_per_channel"],
             "channels with variance 0": f"{(cv1['batch_var'] == 0).mean():.0%}",
             "output": "β exactly" if cv1["output_equals_beta"] else "depends on the input",
             "nn.BatchNorm": "refuses" if cv1["torch_error"] else "runs"},
        ]
        st.markdown("**Batch size 1** in training mode:")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        st.markdown(f"After a linear layer each channel sees one number per example: with one "
                    f"example its variance is 0, x̂ = 0 and the output is β whatever the input, "
                    f"so PyTorch refuses (“{fc1['torch_error']}”). A conv channel still has "
                    f"{per} positions per example, so its batch statistics exist even for a "
                    f"single image (they become instance norm's).")


# ---- Folding ------------------------------------------------------------------------------------

@st.cache_resource(max_entries=2, show_spinner="Building and folding the model…")
def folded(preset: str):
    spec = get_preset(preset).spec
    return bn_lab.fold_check(spec), spec


def timed(preset: str):
    result, spec = folded(preset)
    x = torch.randn((8, *spec.input_shape), generator=torch.Generator().manual_seed(0))
    return bn_lab.time_fold(result["model"], result["folded"], x, repeats=5)


def view_fold() -> None:
    left, right = st.columns([1, 2.3], gap="medium")
    with left:
        st.selectbox("Model", FOLD_CHOICES, key=kept("bn_fold_model"))
        st.markdown("At test time BN is a fixed affine map per channel, y = s·x + t with "
                    "s = γ/√(σ² + ε) and t = β − μ·s. After a conv or linear layer "
                    "W·x + b it folds into it: W' = s·W, b' = s·b + t, and the BN layer "
                    "disappears (d2l §8.5).")
        st.caption("The model has random weights and randomised running statistics, γ and β "
                   "(as if trained), so the comparison is not trivial.")
        measure = st.button("Time it on this CPU", width="stretch",
                            help="A batch of 8 images through the original and the folded "
                                 "model, 5 times each, alternately: a few seconds")
    result, spec = folded(state["bn_fold_model"])
    with right:
        top = st.columns(4)
        top[0].metric("BN layers folded", len(result["pairs"]))
        top[1].metric("BN layers kept", len(result["kept"]))
        top[2].metric("Max |Δ output|", f"{result['max_abs_diff']:.1e}",
                      help="eval mode, 4 random inputs, float32")
        top[3].metric("Largest output", f"{result['max_abs_output']:.2f}")
        ok = result["max_abs_diff"] <= 1e-4 * max(1.0, result["max_abs_output"])
        (st.success if ok else st.warning)(
            f"The folded model's eval-mode outputs equal the original's up to "
            f"{result['max_abs_diff']:.1e}, float32 rounding." if ok else
            f"The folded outputs differ by {result['max_abs_diff']:.1e}: more than float32 "
            f"rounding explains.")
        if measure:
            with st.spinner("Timing…"):
                t = timed(state["bn_fold_model"])
            st.info(f"Measured now, batch of 8 at {'×'.join(map(str, spec.input_shape))}: "
                    f"{t['images_per_s_unfolded']:.0f} images/s unfolded, "
                    f"{t['images_per_s_folded']:.0f} folded: {t['speedup']:.2f}× "
                    f"(a busy, shared server makes this noisy).")
        st.caption("Benchmark: `python bench/bench_bn_fold.py` times torchvision's resnet18 "
                   "at 3×224×224 on the CPU, folded against unfolded, interleaved.")
        table = pd.DataFrame(
            [{"BN layer": b, "folded into": c, "why not": ""} for c, b in result["pairs"]]
            + [{"BN layer": b, "folded into": "—", "why not": why} for b, why in result["kept"]])
        st.dataframe(table, hide_index=True, width="stretch", height=300)


# ---- Batch, layer, instance and group norm ------------------------------------------------------

def means_frame(kind: str, mean: torch.Tensor) -> pd.DataFrame:
    """One row per example (one row in all for batch norm), one column per channel or group."""
    if mean.dim() == 1:
        prefix = "c" if kind == "batch" else "n"
        return pd.DataFrame([mean.numpy()], index=["mean"],
                            columns=[f"{prefix}{i}" for i in range(len(mean))]).round(3)
    prefix = "g" if kind == "group" else "c"
    return pd.DataFrame(mean.numpy(), index=[f"n{i}" for i in range(mean.shape[0])],
                        columns=[f"{prefix}{i}" for i in range(mean.shape[1])]).round(3)


def view_norms() -> None:
    left, right = st.columns([1, 2.3], gap="medium")
    with left:
        c1, c2 = st.columns(2)
        c1.number_input("N (examples)", 1, 8, key=kept("bn_nm_n"))
        c2.number_input("C (channels)", 1, 12, key=kept("bn_nm_c"))
        c1.number_input("H", 1, 6, key=kept("bn_nm_h"))
        c2.number_input("W", 1, 6, key=kept("bn_nm_w"))
        divisors = [g for g in range(1, state["bn_nm_c"] + 1) if state["bn_nm_c"] % g == 0]
        if state.get("bn_nm_g") not in divisors:
            state["bn_nm_g"] = divisors[len(divisors) // 2]
        st.selectbox("Groups G (group norm)", divisors, key=kept("bn_nm_g"),
                     help="G must divide C")
        st.caption("Batch norm needs the batch (so training and eval differ); the other three "
                   "normalise each example on its own.")
    n, c, h, w, g = (state[k] for k in ("bn_nm_n", "bn_nm_c", "bn_nm_h", "bn_nm_w", "bn_nm_g"))
    with right:
        try:
            axes = bn.norm_axes((n, c, h, w), g)
        except ConfigError as exc:
            st.error(str(exc))
            return
        st.plotly_chart(bn_charts.norm_axes_picture(axes), width="stretch")
        st.caption("Rows are examples, columns channels; the H×W positions of a cell share its "
                   "colour. One number (and colour) is one set of values normalised together.")
        x = torch.randn((n, c, h, w), generator=torch.Generator().manual_seed(0)) * 3 + 1
        values = bn.normalize_all(x, g)
        check = bn_lab.norms_vs_torch(x, g)
        rows = [{"norm": bn_charts.NORM_TITLES[k], "one statistic per": "·".join(a["per"]),
                 "sets": a["n_sets"], "values per set": a["values_per_set"],
                 "train ≠ eval": "yes" if a["train_eval_differ"] else "no",
                 "max |hand − torch|": check[k]} for k, a in axes.items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "max |hand − torch|": st.column_config.NumberColumn(format="%.1e")})
        kind = st.radio("Means of", list(values), horizontal=True, key=kept("bn_nm_kind"),
                        format_func=bn_charts.NORM_TITLES.get)
        st.dataframe(means_frame(kind, values[kind]["mean"]), width="stretch")
        st.caption("; ".join(f"{bn_charts.NORM_TITLES[k]}: `{a['torch']}` ({a['paper']})"
                             for k, a in axes.items()) + ".")
        st.caption(f"The means of a seeded {n}×{c}×{h}×{w} tensor (×3 + 1): one per set. Hand "
                   f"computation (`explorer.bn.normalize_all`) against PyTorch's modules in the "
                   f"table above.")


# ------------------------------------------------------------------------------------------------
if url_is_new() or not restore_widgets(SAVED):
    first_load()
apply_goto()

st.title("Batch norm")
st.radio("Section", list(VIEWS), key=kept("bn_view"), horizontal=True, format_func=VIEWS.get,
         label_visibility="collapsed")
{"stats": view_stats, "experiment": view_experiment, "scratch": view_scratch,
 "modes": view_modes, "batch": view_batch, "fold": view_fold, "norms": view_norms}[
    state["bn_view"]]()
write_url()

"""LeNet ± BN: the lecture's one-click experiment, two runs and their verdict."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import bn_charts, bn_lab
from explorer.bn.experiment import Outcome
from explorer.data import DATA_HELP, DATASETS, OFFLINE, default_data_dir
from explorer.errors import ConfigError
from explorer.forms import md_escape
from pages.bn_views.shared import (
    KEEP,
    chosen_dataset,
    data_ref,
    settings_and_results,
    show_run,
    state,
)
from pages.common import get_manager, is_teacher, job_fragment_interval, visitor

EXPECT = (
    "**What you should see** (measured on the offline digits, seeds 0–2): with BN the "
    "training loss falls from about 1.3 in epoch 1 to 0.5 in epoch 2 and below 0.2 by epoch "
    "5, and test accuracy passes 85% by epoch 3 or 4. Without BN the same sigmoid LeNet at "
    "learning rate 1.0 stays at loss ≈ 2.30 = ln 10, a uniform guess, with 10% test accuracy "
    "for at least the first 6 epochs in all three seeds; after 10 epochs the best of them had "
    "reached 27% (with BN: 93–95%)."
)
# How each outcome of the finished experiment is shown (the verdict is data, never parsed).
ALERT = {Outcome.HAPPENED: st.success, Outcome.REVERSED: st.warning,
         Outcome.UNCLEAR: st.warning, Outcome.NO_LOSS: st.warning, Outcome.PENDING: st.info}


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


def experiment_panel(exp: bn_lab.Experiment) -> None:
    manager = get_manager()
    try:
        bn_snap, plain_snap = manager.get(exp.bn_run), manager.get(exp.plain_run)
    except ConfigError as exc:
        st.error(f"{exc} Start the experiment again.")
        return
    pair = (("with BN", bn_snap), ("without BN", plain_snap))
    for name, snap in pair:
        if snap.status == "failed":
            st.error(f"LeNet {name} (run {snap.job_id}) failed: {md_escape(snap.error or '')}")
    cols = st.columns(4)
    for col, (name, snap) in zip(cols[:2], pair, strict=True):
        ep = snap.epoch_metrics
        col.metric(f"Loss {name}", f"{ep[-1]['train_loss']:.2f}" if ep else "–",
                   help=f"run {snap.job_id}, {snap.status}: training loss of the last epoch")
    for col, (name, snap) in zip(cols[2:], pair, strict=True):
        ep = snap.epoch_metrics
        acc = ep[-1].get("test_acc") if ep else None
        col.metric(f"Test acc {name}", f"{acc:.0%}" if acc is not None else "–")
    frames = []
    for snap in (bn_snap, plain_snap):
        frames += [pd.DataFrame(list(snap.step_metrics)), pd.DataFrame(list(snap.epoch_metrics))]
    st.plotly_chart(bn_charts.experiment_curves(frames[0], frames[2], frames[1], frames[3]),
                    width="stretch", key="bn_exp_curves")
    verdict = bn_lab.experiment_verdict(bn_snap.epoch_metrics, plain_snap.epoch_metrics)
    if bn_snap.done and plain_snap.done:
        ALERT[verdict.outcome](verdict.text)
    else:
        waiting = [f"{n} (run {s.job_id}: {s.status}"
                   + (f", queue position {s.queue_position})" if s.queue_position else ")")
                   for n, s in pair if not s.done]
        st.info(f"Training {' and '.join(waiting)}. So far: {verdict.text}")
    if st.button(f"Open the statistics of the BN run (#{exp.bn_run})"):
        # A fragment's button reruns only the fragment; switching tabs needs the whole page.
        show_run(exp.bn_run)
        st.rerun()


def settings() -> None:
    st.markdown("The batch-norm lecture's experiment: the classic LeNet (sigmoid, max "
                "pooling, Xavier init) trained with plain SGD at **learning rate 1.0**, "
                "batch 256, once with BN before every sigmoid and once without, on the same "
                "data with the same seed.")
    st.selectbox("Data", list(DATASETS), index=list(DATASETS).index(OFFLINE), key="bn_exp_data",
                 persist_state=KEEP, format_func=lambda k: DATASETS[k].title, help=DATA_HELP)
    if state["bn_exp_data"] != OFFLINE:
        st.text_input("Data directory", str(default_data_dir()), key="bn_exp_dir",
                      persist_state=KEEP)
    c1, c2 = st.columns(2)
    c1.number_input("Epochs", 1, 30, bn_lab.EXPERIMENT_EPOCHS, key="bn_exp_epochs",
                    persist_state=KEEP,
                    help="5 epochs of both runs: about 4 s on an idle CPU core (offline "
                         "digits); longer while the server is busy")
    c2.number_input("Seed", 0, 2**31 - 1, 0, key="bn_exp_seed", persist_state=KEEP)
    st.button("Train both", type="primary", on_click=start_experiment, width="stretch")
    if "bn_exp_error" in state:
        st.error(state.pop("bn_exp_error"))
    st.markdown(EXPECT)
    st.caption("With BN the test accuracy can dip for an epoch: at lr 1.0 the weights move "
               "fast and the running averages used in eval mode lag behind them.")


def show() -> None:
    left, right = settings_and_results()
    with left:
        settings()
    if state.get("bn_exp") is None and not state.get("bn_exp_refused"):
        # A fresh visit shows the newest experiment on the server once its runs exist.
        state["bn_exp"] = bn_lab.latest_experiment(get_manager().store)
    exp = state.get("bn_exp")
    with right:
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

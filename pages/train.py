"""Train: a short run with live Plotly curves, trained by the server's worker processes."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from explorer import charts, settings
from explorer.admission import head_for
from explorer.bounded import parse_id
from explorer.data import DATA_HELP, DATASETS, OFFLINE, default_data_dir
from explorer.errors import ConfigError
from explorer.estimate import head_option
from explorer.footprint import DataSizes
from explorer.formatting import fmt_count, plural, run_list
from explorer.forms import md_escape
from explorer.io import export_runs, import_runs_file, runs_export_name, weights_export_problem
from explorer.jobs import DataRef
from explorer.models import validate
from explorer.registry import PRESETS, get_preset
from explorer.runs import FINAL
from explorer.training import INITS, OPTIMIZERS, SCHEDULES, TrainConfig
from pages.common import (
    SPEC_QUERY_KEYS,
    current_spec,
    dataset,
    get_manager,
    is_teacher,
    job_fragment_interval,
    price_run,
    teacher_box,
    use_app_navigation,
    visitor,
    write_query,
)

use_app_navigation()  # before anything is drawn (see pages.common)

state = st.session_state
SOURCES = ["Build page", "Preset"]
SETTINGS = {  # widget key → (TrainConfig field, default); also their URL parameters
    "tr_optimizer": ("optimizer", "sgd"), "tr_lr": ("lr", 0.1), "tr_batch": ("batch_size", 128),
    "tr_epochs": ("epochs", 3), "tr_schedule": ("schedule", "constant"), "tr_seed": ("seed", 0),
    "tr_momentum": ("momentum", 0.9), "tr_wd": ("weight_decay", 0.0),
    "tr_smooth": ("label_smoothing", 0.0), "tr_init": ("init", "default"),
}
NUMBERS = {  # number widgets' ranges; a link's value outside them is refused with a sentence
    "tr_lr": (1e-6, 10.0), "tr_batch": (1, 4096), "tr_epochs": (1, 200), "tr_seed": (0, 2**31 - 1),
    "tr_momentum": (0.0, 0.999), "tr_wd": (0.0, 1.0), "tr_smooth": (0.0, 0.9),
}
CHOICES = {"tr_optimizer": OPTIMIZERS, "tr_schedule": SCHEDULES, "tr_init": INITS,
           "tr_preset": tuple(PRESETS), "tr_data": tuple(DATASETS)}
# Streamlit keeps each widget's value while a run does not draw it (another page, or the preset
# box while the Build page's model is chosen).
KEEP = "session"
URL_SOURCES = {"Build page": "build", "Preset": "preset"}  # tr_source in the URL


def url_value(key: str, raw: str, default):
    """A link's value for a setting, or None when the page's widget would not accept it."""
    if key in CHOICES:
        return raw if raw in CHOICES[key] else None
    try:
        value = type(default)(raw)
    except ValueError:
        return None
    lo, hi = NUMBERS[key]
    return value if math.isfinite(value) and lo <= value <= hi else None


def allowed(key: str) -> str:
    if key in CHOICES:
        return "a preset name" if key == "tr_preset" else "one of " + ", ".join(CHOICES[key])
    lo, hi = NUMBERS[key]
    return f"from {lo:,} to {hi:,}" if isinstance(lo, int) else f"from {lo:g} to {hi:g}"


def first_load() -> None:
    """Settings from the URL (a teacher's link), else defaults; reattach to ?run=ID."""
    params = st.query_params.to_dict()
    defaults = {key: default for key, (_field, default) in SETTINGS.items()} | {
        "tr_preset": "course_lenet5", "tr_data": OFFLINE}
    refused = []
    for key, default in defaults.items():
        raw = params.get(key)
        value = default if raw is None else url_value(key, raw, default)
        if value is None:
            refused.append(f"{key}={md_escape(raw[:40])} ({allowed(key)})")
            value = default
        state[key] = value
    by_url = {v: k for k, v in URL_SOURCES.items()}.get(params.get("tr_source", ""))
    state["tr_source"] = by_url or ("Build page" if "current_spec_json" in state else "Preset")
    state["tr_dir"] = str(default_data_dir())
    if params.get("run"):
        try:
            state["tr_job"] = parse_id(params["run"], "run")
        except ConfigError:
            refused.append(f"run={md_escape(params['run'][:40])} (a run number such as 12)")
    if refused:
        state["tr_url_warning"] = (f"The link's settings {'; '.join(refused)} cannot be used; "
                                   f"the defaults are shown instead.")
    state["tr_loaded"] = True


def chosen_spec():
    if state["tr_source"] == "Preset":
        return state["tr_preset"], get_preset(state["tr_preset"]).spec
    spec = current_spec()
    return f"build_{spec.family}", spec


def config_from_widgets() -> TrainConfig:
    # Metrics every 5 steps: short CPU runs get a readable loss curve, and reading a value back
    # from the GPU that often costs little.
    return TrainConfig(metrics_every=5,
                       **{field: state[key] for key, (field, _d) in SETTINGS.items()})


def priced():
    """(name, data reference, price) of the run the settings describe; mistakes raise
    ConfigError. The price is cached for a few seconds (see pages.common.price_run)."""
    name, spec = chosen_spec()
    validate(spec)
    ref = DataRef(state["tr_data"], state.get("tr_dir", ""), state.get("tr_download", False))
    data = dataset(ref.name, ref.data_dir, ref.download)  # a missing dataset: a sentence now
    spec = head_for(spec, DataSizes.of(data), state.get("tr_head", False), f"The model {name}",
                    f"the {DATASETS[ref.name].title}")
    return name, ref, data, price_run(spec, config_from_widgets(), ref)


def start() -> None:
    """Validate and price the run, then queue it; refusals become a sentence on the page."""
    try:
        name, ref, data, price = priced()
        if price.refusal is not None:
            raise price.refusal
        job = get_manager().submit(f"{name} · {data.name}", price.spec.to_dict(),
                                   config_from_widgets(), ref, session=visitor(),
                                   teacher=is_teacher(), footprint=price.footprint.peak_bytes)
    except ConfigError as exc:
        state["tr_error"] = str(exc)
        return
    state["tr_job"] = job
    st.query_params["run"] = str(job)


def number(where, label: str, key: str, **kwargs) -> None:
    """A number input with its range from NUMBERS (``format="%g"`` shows 1e-06 and 5e-05 as
    they are, where ``%.4f`` would show 0.0000)."""
    where.number_input(label, *NUMBERS[key], key=key, persist_state=KEEP, **kwargs)


def settings_panel() -> None:
    st.radio("Model", SOURCES, key="tr_source", persist_state=KEEP, horizontal=True,
             help="The network on the Build page, or any preset")
    if state["tr_source"] == "Preset":
        st.selectbox("Preset", list(PRESETS), key="tr_preset", persist_state=KEEP)
    name, spec = chosen_spec()
    st.caption(f"{name}: {spec.title} on {'×'.join(map(str, spec.input_shape))}, "
               f"{spec.num_classes} classes")
    st.selectbox("Data", list(DATASETS), key="tr_data", persist_state=KEEP,
                 format_func=lambda k: DATASETS[k].title, help=DATA_HELP)
    if state["tr_data"] != OFFLINE:
        st.text_input("Data directory", key="tr_dir", persist_state=KEEP,
                      help=f"Where torchvision's files lie; blank means {default_data_dir()} "
                           f"($EXPLORER_DATA_DIR, else ./data)")
        st.checkbox("Download when missing (needs a network)", key="tr_download",
                    persist_state=KEEP)
    c1, c2 = st.columns(2)
    c1.selectbox("Optimizer", OPTIMIZERS, key="tr_optimizer", persist_state=KEEP)
    number(c2, "Learning rate", "tr_lr", format="%g", step=0.01)
    number(c1, "Batch size", "tr_batch")
    number(c2, "Epochs", "tr_epochs")
    c1.selectbox("Schedule", SCHEDULES, key="tr_schedule", persist_state=KEEP)
    number(c2, "Seed", "tr_seed")
    with st.expander("More settings"):
        number(st, "SGD momentum", "tr_momentum", step=0.05)
        number(st, "Weight decay", "tr_wd", format="%g", step=1e-4)
        number(st, "Label smoothing", "tr_smooth", step=0.05)
        st.selectbox("Weight init", INITS, key="tr_init", persist_state=KEEP,
                     help="xavier: the lectures' Xavier-uniform init")
    classes = DATASETS[state["tr_data"]].num_classes
    if spec.num_classes != classes:
        st.checkbox(head_option(classes), key="tr_head", persist_state=KEEP,
                    help=f"{name} has {spec.num_classes} outputs; the data has {classes} "
                         f"classes. Ticked, the run trains the same network with a "
                         f"{classes}-way classifier.")


def capitalised(text: str) -> str:
    """A refusal's sentence as the page shows it (explorer's sentences start in lower case)."""
    return text[:1].upper() + text[1:]


def estimate_line() -> None:
    """The run's price before Start, or the sentence Start would answer with."""
    try:
        _name, _ref, _data, price = priced()
    except ConfigError as exc:
        st.warning(md_escape(capitalised(str(exc))))
        return
    if price.refusal is not None:
        st.warning(md_escape(capitalised(str(price.refusal))))
    else:
        st.caption(f"{price.sentence} {get_manager().outlook(visitor(), is_teacher())}")


def status_line(job_id: int, snap) -> None:
    whose = "Your run" if snap.session == visitor() else "Run"
    if snap.status == "queued":
        st.info(f"{whose} {job_id} is waiting: position {snap.queue_position} in the queue. "
                f"Each worker of this server trains one run at a time, and the queue takes "
                f"one run of each visitor in turn.")
    elif snap.stopping:
        st.warning(f"Run {job_id} is stopping: the step in flight finishes first, which takes "
                   f"long only for a big model on the CPU. What it measured is kept.")
    elif snap.status == "running":
        st.success(f"{whose} {job_id} is training on {snap.device}.")
    elif snap.status == "failed":
        st.error(f"{whose} {job_id} failed: {md_escape(snap.error or '')}")
    elif snap.status == "stopped" and not snap.step:  # taken out of the queue
        st.info(f"{whose} {job_id} was stopped before it trained a step: it has no curves.")
    elif snap.status == "stopped":
        total = f" of {snap.total_steps:,}" if snap.total_steps else ""
        st.info(f"{whose} {job_id} was stopped at step {snap.step:,}{total}; what it measured "
                f"is kept.")
    else:
        st.info(f"{whose} {job_id} {snap.status}.")


def stop_run(job_id: int) -> None:
    try:
        get_manager().stop(job_id, visitor(), is_teacher())
    except ConfigError as exc:
        state["tr_stop_msg"] = str(exc)


def live_panel(job_id: int) -> None:
    """Status, progress and curves of one job; redrawn every second while it runs."""
    manager = get_manager()
    try:
        snap = manager.get(job_id)
    except ConfigError:
        st.info(f"There is no run {job_id} on this server: it was deleted, or the link comes "
                f"from another server. Start a new run on the left.")
        state.pop("tr_job", None)
        st.query_params.pop("run", None)
        return
    status_col, stop_col = st.columns([5, 1], vertical_alignment="center")
    if not snap.done and not snap.stopping and manager.may_manage(
            {"session": snap.session}, visitor(), is_teacher()):
        stop_col.button("Stop", key=f"stop_{job_id}", type="primary", width="stretch",
                        on_click=stop_run, args=(job_id,))
    with status_col:
        status_line(job_id, snap)
        if "tr_stop_msg" in state:
            st.error(md_escape(capitalised(state.pop("tr_stop_msg"))))
    last = snap.step_metrics[-1] if snap.step_metrics else {}
    epochs = snap.epoch_metrics
    if snap.total_steps:
        eta = last.get("eta_s")
        eta_text = f", about {eta:,.0f} s left" if eta is not None and not snap.done else ""
        st.progress(min(snap.step / snap.total_steps, 1.0),
                    text=f"step {snap.step:,} of {snap.total_steps:,}{eta_text}")
    cols = st.columns(4)
    cols[0].metric("Loss", f"{last['loss']:.3f}" if "loss" in last else "–")
    train_acc = epochs[-1].get("train_acc") if epochs else None  # an imported run may lack it
    cols[1].metric("Train acc", f"{train_acc:.1%}" if train_acc is not None else "–")
    test = epochs[-1].get("test_acc") if epochs else None
    cols[2].metric("Test acc", f"{test:.1%}" if test is not None else "–")
    rate = snap.images_per_s
    cols[3].metric("Images/s", fmt_count(rate) if rate is not None else "–",
                   help="Training images per second: the median of the last five reports "
                        "while the run trains, the last epoch's own rate once it has ended")
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_figure(snap.step_metrics), width="stretch",
                      key=f"loss_{job_id}")
    right.plotly_chart(charts.accuracy_figure(epochs), width="stretch", key=f"acc_{job_id}")
    with st.expander("Learning rate"):
        st.plotly_chart(charts.lr_figure(snap.step_metrics), width="stretch",
                        key=f"lr_{job_id}")
    if snap.done and state.get("tr_live_was_running") == job_id:
        state.pop("tr_live_was_running")
        st.rerun()  # the run ended: rerun the page so that the fragment stops polling


def on_import() -> None:
    """Import an uploaded runs file: all of its runs or, with a sentence, none."""
    upload = state.get("tr_import")
    if upload is None:
        return
    try:
        kept = None if is_teacher() else settings.read("EXPLORER_RUNS_KEPT_PER_VISITOR")
        ids, notes = import_runs_file(get_manager().store, upload.getvalue(), upload.name,
                                      session=visitor(), max_kept=kept)
    except ConfigError as exc:
        state["tr_import_msg"] = ("error", md_escape(str(exc)))
        return
    state["tr_import_msg"] = ("success", " ".join(
        [f"Imported {plural(len(ids), 'run')} as {run_list(ids)}."]
        + [md_escape(n) for n in notes]))


def delete_runs(ids: list[int]) -> None:
    """Delete the chosen runs this visitor may delete (a teacher: any), after the confirmation.

    A queued run of one's own goes at once; a training one is stopped and kept, with a sentence,
    until it has stopped; someone else's run stays, with a sentence.
    """
    manager, deleted, notes = get_manager(), [], []
    for i in ids:
        try:
            manager.delete(i, visitor(), is_teacher())
            deleted.append(i)
        except ConfigError as exc:
            notes.append(f"Run {i}: {exc}")
    state["tr_overlay"] = [i for i in state.get("tr_overlay", []) if i not in deleted]
    state.pop("tr_confirm_delete", None)
    if notes:
        state["tr_delete_msg"] = " ".join(notes)


def history() -> None:
    store = get_manager().store
    st.file_uploader("Import runs (a .json or .zip from another server's Train page)",
                     type=["json", "zip"],
                     key="tr_import", on_change=on_import)
    if "tr_import_msg" in state:
        kind, text = state.pop("tr_import_msg")
        (st.error if kind == "error" else st.success)(text)
    me, teacher = visitor(), is_teacher()
    runs = store.list_runs(limit=200, session=me)  # the newest 200, and all of one's own
    if not runs:
        st.caption("No runs yet. Start one above.")
        return
    table = pd.DataFrame(runs)
    table["whose"] = ["yours" if r["session"] == me else "others'" for r in runs]
    show = [c for c in ("id", "name", "whose", "status", "created_at", "error") if c in table]
    table = table[show]
    if "error" in table:  # a run without a message shows a blank, not "None"
        table["error"] = table["error"].fillna("")
    if "created_at" in table:  # a time no calendar can show reads as blank, not as an error
        table["created_at"] = pd.to_datetime(table["created_at"], unit="s",
                                             errors="coerce").dt.strftime("%Y-%m-%d %H:%M")
    st.dataframe(table, hide_index=True, width="stretch", height=220, column_config={
        "id": st.column_config.NumberColumn("Run", format="%d"), "name": "Model · data",
        "whose": "Whose", "status": "Status", "created_at": "Queued at", "error": "Message"})
    ids = [r["id"] for r in runs]
    labels = {r["id"]: f"#{r['id']} {r['name']} ({r['status']})" for r in runs}
    status = {r["id"]: r["status"] for r in runs}
    # Kept across pages (persist_state); runs deleted since then leave the selection.
    state["tr_overlay"] = [i for i in state.get("tr_overlay", []) if i in labels]
    chosen = st.multiselect("Overlay runs", ids, format_func=labels.get,
                            key="tr_overlay", persist_state=KEEP,
                            max_selections=8)
    if not chosen:
        state.pop("tr_confirm_delete", None)  # a question about runs no longer chosen
    if chosen:
        frames = {labels[i]: store.metrics(i) for i in chosen}
        steps = {k: f[f["kind"] == "step"] for k, f in frames.items()}
        epochs = {k: f[f["kind"] == "epoch"] for k, f in frames.items()}
        a, b = st.columns(2)
        a.plotly_chart(charts.overlay_figure(steps, "loss", "step", "Loss (smoothed)"),
                       width="stretch")
        b.plotly_chart(charts.overlay_figure(epochs, "test_acc", "epoch", "Test accuracy"),
                       width="stretch")
        csv = pd.concat([f.assign(run=k) for k, f in frames.items()]).to_csv(index=False)
        c1, c2, c3 = st.columns(3)
        c1.download_button("Metrics (CSV)", csv, "metrics.csv", "text/csv")
        ended = [i for i in chosen if status[i] in FINAL]  # Inspect opens finished runs only
        for i in ended[:2]:  # its weights through an image: feature maps, receptive fields
            c1.page_link(Path(__file__).resolve().parent / "inspect.py", label=f"Inspect run #{i}",
                         icon=":material/visibility:", query_params={"run": str(i)})
        with_weights = c2.checkbox("With their weights", key="tr_export_weights",
                                   help="A zip of the runs and their safetensors weights, to "
                                        "import on another server and inspect there.")
        problem = weights_export_problem(store, chosen) if with_weights else None
        if problem:
            c2.caption(md_escape(problem))
        else:
            name, mime = runs_export_name(with_weights)
            c2.download_button("Runs (to import elsewhere)",  # made on click, not kept
                               lambda: export_runs(store, chosen, with_weights), name, mime)
        deletable = [i for i in chosen
                     if get_manager().may_manage(next(r for r in runs if r["id"] == i), me,
                                                 teacher)]
        if deletable:
            c3.button(f"Delete {'your ' if not teacher else ''}"
                      f"{'run' if len(deletable) == 1 else f'{len(deletable)} runs'}…",
                      on_click=state.__setitem__, args=("tr_confirm_delete", deletable))
        else:
            c3.caption("Only the visitor who started a run (or the teacher) can delete it.")
        confirm = state.get("tr_confirm_delete")
        if confirm and confirm != deletable:  # the selection changed since: ask again
            state.pop("tr_confirm_delete")
            confirm = None
        if confirm:
            training = [i for i in confirm if status.get(i) == "running"]
            what = "it and its metrics" if len(confirm) == 1 else "them and their metrics"
            is_, it = ("is", "it") if len(training) == 1 else ("are", "them")
            note = (f" {run_list(training)} {is_} training: Yes stops {it}, and you delete {it} "
                    f"once stopped." if training else "")
            st.warning(f"Delete {'run' if len(confirm) == 1 else 'runs'} {run_list(confirm)} "
                       f"for good? This deletes {what} and cannot be undone.{note}")
            y, n = st.columns(2)
            y.button("Yes, delete", type="primary", on_click=delete_runs, args=(confirm,))
            n.button("Cancel", on_click=lambda: state.pop("tr_confirm_delete", None))
    if "tr_delete_msg" in state:
        st.warning(state.pop("tr_delete_msg"))


# ------------------------------------------------------------------------------------------------
if "tr_loaded" not in state:
    first_load()

st.title("Train")
teacher_box()
if "tr_url_warning" in state:
    st.warning(state.pop("tr_url_warning"))
left, right = st.container(key="editor_results").columns([1, 2.3], gap="medium")
with left:
    settings_panel()
    estimate_line()
    st.button("Start training", type="primary", on_click=start, width="stretch")
    if "tr_error" in state:
        st.error(md_escape(capitalised(state.pop("tr_error"))))
# The URL reopens what is shown: the settings, the model (a preset, or the Build page's spec in
# the Build page's own parameters) and the run on the right.
wanted = {k: str(state[k]) for k in SETTINGS} | {
    "tr_preset": state["tr_preset"], "tr_data": state["tr_data"],
    "tr_source": URL_SOURCES[state["tr_source"]]}
if state["tr_source"] == "Build page":
    wanted |= current_spec().to_query()
if state.get("tr_job") is not None:
    wanted["run"] = str(state["tr_job"])
write_query(wanted, owned=lambda k: k in SPEC_QUERY_KEYS or k == "run")

with right:
    job_id = state.get("tr_job")
    if job_id is None:
        st.info("Choose a model and press **Start training**. The server's worker processes "
                "train the queued runs, one run of each visitor in turn; the curves update "
                "every second while a run trains.")
    else:
        interval = job_fragment_interval(job_id)
        if interval:
            state["tr_live_was_running"] = job_id
            # The panel redraws every second, and at each redraw Streamlit's own "Running…
            # Stop" flashed in the top bar beside the run's Stop: a second Stop that stops
            # only the redraw. Hidden while the panel is live; back once the run has ended.
            st.html("<style>[data-testid='stStatusWidget'] {visibility: hidden;}</style>")

        @st.fragment(run_every=interval)
        def live() -> None:
            live_panel(job_id)

        live()

st.subheader("Run history")
history()

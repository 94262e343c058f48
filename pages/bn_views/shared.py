"""What several views of the Batch norm page share: the link, the data, the trained demo model.

Widget values persist through Streamlit itself (``persist_state="session"`` on every setting,
the open tab bound to the URL); what a link carries besides the tab is the run, the layer and
the experiment, which are ids checked against the store (a sentence for a bad one), so they
are read and written here.
"""

from __future__ import annotations

import streamlit as st

from explorer import bn_lab
from explorer.bounded import parse_id
from explorer.data import OFFLINE, default_data_dir
from explorer.errors import ConfigError
from explorer.forms import md_escape
from explorer.jobs import DataRef
from pages.common import dataset, get_manager

state = st.session_state
KEEP = "session"  # every setting outlives other tabs and other pages (Streamlit's persist_state)
LINK = "query-params"  # a demonstration's settings are in the URL while its tab is open
# The tabs, in order: module name → label. The label is what the URL's bn_view holds.
VIEWS = {"stats": "Statistics", "experiment": "LeNet ± BN", "scratch": "From scratch",
         "modes": "Train vs eval", "batch": "Batch size", "fold": "Folding",
         "norms": "Other norms"}
LINKED = ("bn_run", "bn_layer", "bn_exp")  # what a link names besides the tab
WRITTEN = "bn_link_written"  # the values this page last put in the URL: others are a new link


def first_sentence(exc: Exception) -> str:
    """A ConfigError's text as a sentence on the page (capital first, Markdown escaped)."""
    text = str(exc)
    return md_escape(text[:1].upper() + text[1:])


def read_link() -> None:
    """Apply what the URL names that this session did not write itself (a teacher's link).

    A link from before the tabs (``bn_view=fold``) opens its tab too. A run number that is not
    a number, or one that names no recorded run, is a sentence above the run picker.
    """
    params = st.query_params.to_dict()
    old_view = VIEWS.get(params.get("bn_view", ""))
    if old_view is not None:  # Streamlit drops the unknown value; the session's then holds
        state["bn_view"] = old_view
    written = state.get(WRITTEN, {})
    new = {k: params[k] for k in LINKED if k in params and params[k] != written.get(k)}
    if "bn_run" in new:
        try:
            state["bn_run"] = parse_id(new["bn_run"], "The link's bn_run")
        except ConfigError as exc:  # said above the run picker
            state["bn_run_refused"] = str(exc)
    if new.get("bn_layer"):
        state["bn_layer"] = new["bn_layer"]  # checked against the run's layers when drawn
    if "bn_exp" in new:
        state.pop("bn_exp", None)
        parts = new["bn_exp"].split(",")
        try:
            if len(parts) != 2:
                raise ConfigError("the link's bn_exp must be two run numbers, such as 12,13; "
                                  "start the experiment with Train both.")
            state["bn_exp"] = bn_lab.linked_experiment(
                get_manager().store, parse_id(parts[0], "bn_exp"), parse_id(parts[1], "bn_exp"))
        except ConfigError as exc:
            state["bn_exp_refused"] = True  # no other experiment stands in for the link's
            state["bn_exp_error"] = first_sentence(exc)


def write_link() -> None:
    """Put the run, the layer and the experiment in the URL (the tab is Streamlit's)."""
    wanted = {}
    if state.get("bn_run") is not None:
        wanted["bn_run"] = str(state["bn_run"])
    if state.get("bn_layer"):
        wanted["bn_layer"] = str(state["bn_layer"])
    if state.get("bn_exp") is not None:
        wanted["bn_exp"] = f"{state['bn_exp'].bn_run},{state['bn_exp'].plain_run}"
    current = st.query_params.to_dict()
    for key in LINKED:
        if key not in wanted and key in current:
            del st.query_params[key]
    for key, value in wanted.items():
        if current.get(key) != value:
            st.query_params[key] = value
    state[WRITTEN] = wanted


def show_run(run_id: int) -> None:
    """Open a run's statistics on the next run of the page (from a button or a callback)."""
    state["bn_goto"] = run_id


def apply_goto() -> None:
    """Switch to the run asked for by ``show_run`` (before the tabs and the picker are drawn)."""
    run_id = state.pop("bn_goto", None)
    if run_id is not None:
        state["bn_view"], state["bn_run"] = VIEWS["stats"], run_id
        state.pop("bn_layer", None)


def settings_and_results(widths: tuple[float, float] = (1, 2.3)):
    """(left, right) columns: a view's settings beside its results, the results under them at
    full width on a narrow screen or in presentation mode (assets/style.css, present.css key on
    the container's name)."""
    return st.container(key="editor_results").columns(list(widths), gap="medium")


def data_ref(prefix: str = "bn") -> DataRef:
    return DataRef(state.get(f"{prefix}_data", OFFLINE),
                   state.get(f"{prefix}_dir", str(default_data_dir())), False)


def chosen_dataset(prefix: str = "bn"):
    ref = data_ref(prefix)
    return dataset(ref.name, ref.data_dir, ref.download)


@st.cache_resource(show_spinner="Training a BN-LeNet for the demonstrations (a few seconds)…")
def demo():
    """A briefly trained BN-LeNet, the offline digits, and a lock (modes change during a demo)."""
    import threading

    data = dataset(OFFLINE, str(default_data_dir()), False)
    return bn_lab.demo_model(data), data, threading.Lock()

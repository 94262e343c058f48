"""Helpers shared by the page scripts: cached analysis and the spec currently being built.

Streamlit code lives here and in the page scripts only; everything else is in ``explorer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from explorer.analysis import Analysis, analyze
from explorer.data import load_dataset
from explorer.registry import DEFAULT_PRESET, get_preset
from explorer.specs import SPEC_TYPES, spec_from_json

# Streamlit treats an app beside a pages/ folder as a "v1" multipage app until app.py first
# calls st.navigation; a fresh server whose first visitor opens /build directly would run this
# page without app.py's navigation, sidebar and styles. Switch to st.navigation and rerun
# through app.py instead.
if PagesManager.uses_pages_directory:
    PagesManager.uses_pages_directory = False
    st.rerun()

SPEC_KEY = "current_spec_json"  # the spec on the Build page, shared with the other pages


@st.cache_data(max_entries=128, show_spinner=False)
def analysis_for(spec_json: str) -> Analysis:
    """Analyse a spec, cached by its JSON (so every page and user shares the result)."""
    return analyze(spec_from_json(spec_json))


# The URL parameters that carry a spec (``SpecBase.to_query``): the family and every field.
SPEC_QUERY_KEYS = frozenset({"family"} | {f.name for cls in SPEC_TYPES.values()
                                          for f in dataclasses.fields(cls)})


@st.cache_resource(max_entries=4, show_spinner="Loading the dataset…")
def dataset(name: str, data_dir: str, download: bool):
    """One cache for every page: a dataset is loaded once and shared by every user of the
    server (read-only uint8 tensors); a blank directory means the default one."""
    return load_dataset(name, data_dir, download)


def current_spec():
    """The spec on the Build page, or the default preset before the Build page has run."""
    text = st.session_state.get(SPEC_KEY)
    if text:
        return spec_from_json(text)
    if "family" in st.query_params:  # a link that carries a Build page spec
        from explorer.errors import ConfigError
        from explorer.specs import spec_from_query

        try:
            return spec_from_query(st.query_params.to_dict())
        except ConfigError:
            pass
    return get_preset(DEFAULT_PRESET).spec


def fmt_count(n: float) -> str:
    """12,345,678 → '12.35 M' (metrics read from the back of a lecture hall)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:,.0f}"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:,.0f} B"


def shape_text(shape) -> str:
    """(64, 24, 24) → '64×24×24'; containers that are never called whole show a dash."""
    return "×".join(str(s) for s in shape) if shape is not None else "—"


@st.cache_resource
def get_pool():
    """The server's local worker processes (one per device slot), or its dispatcher of runs to
    the Ray cluster at $RAY_ADDRESS, started on first use; None when $EXPLORER_LOCAL_WORKERS is
    0 (workers started by hand, or elsewhere)."""
    import atexit
    import os

    from explorer.pool import WorkerPool
    from explorer.runs import default_store_path

    if os.environ.get("EXPLORER_LOCAL_WORKERS", "1") == "0":
        return None
    if os.environ.get("RAY_ADDRESS"):
        from explorer.ray_runner import RayDispatcher

        pool = RayDispatcher(default_store_path(), os.environ["RAY_ADDRESS"])
    else:
        pool = WorkerPool(default_store_path())
    atexit.register(pool.close)
    return pool


@st.cache_resource
def get_manager():
    """The server's view of the training queue (runs are rows of the store that the worker
    processes claim), shared by all users; starts the local workers."""
    import os

    from explorer.jobs import JobManager
    from explorer.pool import default_slots
    from explorer.runs import RunStore

    pool = get_pool()
    slots = pool.slots if pool is not None else default_slots()
    raw = os.environ.get("EXPLORER_RUNS_PER_VISITOR", "1")
    per_visitor = int(raw) if raw.isascii() and raw.isdigit() and int(raw) > 0 else 1
    return JobManager(RunStore(), [s.device for s in slots], max_active=per_visitor)


def visitor() -> str:
    """This browser's anonymous id: it owns the runs it starts (see explorer.ownership)."""
    import uuid

    from explorer.ownership import visitor_id

    state = st.session_state
    if "visitor" not in state:
        state["visitor_fallback"] = uuid.uuid4().hex
        state["visitor"] = visitor_id(st.context.cookies.get("_streamlit_xsrf"),
                                      state["visitor_fallback"])
    return state["visitor"]


def is_teacher() -> bool:
    """True once this session typed the server's teacher key."""
    return bool(st.session_state.get("teacher"))


def teacher_box() -> None:
    """The teacher key field, in the sidebar, where the server has a key."""
    from explorer.ownership import is_teacher_key, teacher_key_set

    if not teacher_key_set():
        return
    if is_teacher():
        st.sidebar.caption("Teacher: no run limit; you can stop or delete any run.")
        return

    def check() -> None:
        text = st.session_state.pop("teacher_key_input", "")
        st.session_state["teacher"] = is_teacher_key(text)
        if not st.session_state["teacher"] and text:
            st.session_state["teacher_msg"] = "That is not this server's teacher key."

    st.sidebar.text_input("Teacher key", type="password", key="teacher_key_input",
                          on_change=check, help="Set by the server's owner "
                          "($EXPLORER_TEACHER_KEY); lifts the one-run limit and lets you stop "
                          "or delete any run")
    if "teacher_msg" in st.session_state:
        st.sidebar.warning(st.session_state.pop("teacher_msg"))


def job_fragment_interval(job_id: int) -> float | None:
    """Seconds between live redraws of a job's panel: 1 while it may change, else None (off)."""
    from explorer.errors import ConfigError

    try:
        return None if get_manager().get(job_id).done else 1.0
    except ConfigError:
        return None


def restore_widgets(saved_key: str) -> bool:
    """Put back the widget values saved under ``saved_key`` that Streamlit dropped.

    Streamlit deletes a widget's state when a run does not draw it (another page ran, or a
    mode hid it); a page saves its values each run and calls this first. False on a first run.
    """
    saved = st.session_state.get(saved_key)
    if not saved:
        return False
    for key, value in saved.items():
        if key not in st.session_state:
            st.session_state[key] = value
    return True


def drawn(saved_key: str, key: str) -> str:
    """``key``, noted as a widget this run draws (pass it as the widget's key)."""
    st.session_state.setdefault(f"{saved_key}.drawn", set()).add(key)
    return key


def save_widgets(saved_key: str, keys: Iterable[str]) -> None:
    """Save ``keys``' values under ``saved_key`` at the end of a run, for ``restore_widgets``.

    A value that code set before its widget was first drawn (a URL's, a default) outlives that
    widget in Streamlit and comes back, stale, once a run stops drawing the widget; so the keys
    this run did not draw (see ``drawn``) are deleted here, and the next run restores them from
    the copy just saved.
    """
    state = st.session_state
    keys = list(keys)
    state[saved_key] = state.get(saved_key, {}) | {k: state[k] for k in keys if k in state}
    shown = state.pop(f"{saved_key}.drawn", set())
    for key in keys:
        if key not in shown and key in state:
            del state[key]


def write_query(wanted: Mapping[str, str], owned: Callable[[str], bool]) -> None:
    """Make the URL hold ``wanted``: the page's other parameters (those ``owned`` says are its
    own) go, other pages' stay, and a value already there is not written again."""
    current = st.query_params.to_dict()
    for key in [k for k in current if owned(k) and k not in wanted]:
        del st.query_params[key]
    for key, value in wanted.items():
        if current.get(key) != value:
            st.query_params[key] = value

"""Helpers shared by the page scripts: cached analysis and the spec currently being built.

Streamlit code lives here and in the page scripts only; everything else is in ``explorer``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import gc
import importlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitAPIException

from explorer.analysis import Analysis, analyze
from explorer.cost import check_spec
from explorer.data import load_dataset_for_visitor
from explorer.errors import ConfigError
from explorer.formatting import fmt_bytes, fmt_count, shape_text  # noqa: F401 (the pages' names)
from explorer.forms import md_escape
from explorer.registry import DEFAULT_PRESET, get_preset
from explorer.specs import SPEC_TYPES, spec_from_json

SPEC_KEY = "current_spec_json"  # the spec on the Build page, shared with the other pages
_log = logging.getLogger("explorer.pages")
# The libraries the pages import sooner or later (module objects, classes, functions: they live
# as long as the server does).
_LONG_LIVED_IMPORTS = ("torch", "torchvision", "torchinfo", "pandas", "pyarrow",
                       "plotly.graph_objects", "plotly.subplots", "explorer.charts")


def _freeze_long_lived_objects() -> None:
    """Move the libraries' objects out of the garbage collector's reach, once per server.

    Streamlit runs a full ``gc.collect(2)`` after every script run (``runner.postScriptGC``),
    and with torch, torchvision, pandas and Plotly loaded that walks some 420,000 objects: 0.2
    CPU-s of each render and rerun, for every visitor. ``gc.freeze`` (Python's own remedy for
    objects made at start-up) puts them in a permanent generation that collections skip; what
    a visitor's run creates afterwards is still collected as before.
    """
    for name in _LONG_LIVED_IMPORTS:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


_freeze_long_lived_objects()  # this module is imported once, by app.py, before any page runs


APP_SCRIPT = Path(__file__).resolve().parent.parent / "app.py"
# Set while app.py runs a page (run_page): a page run without it was started by Streamlit's
# pages/-folder mode, not through app.py's st.navigation.
_THROUGH_APP: contextvars.ContextVar[bool] = contextvars.ContextVar("through_app", default=False)


# app.py's pages in the sidebar's order: script, title, icon, URL path (None: the default page,
# served at "/"; Streamlit ignores a url_path on it).
PAGE_TABLE = (("build.py", "Build", "construction", None),
              ("train.py", "Train", "monitoring", "train"),
              ("bn_lab.py", "Batch norm", "equalizer", "bn_lab"),
              ("inspect.py", "Inspect", "visibility", "inspect"),
              ("compare.py", "Compare", "compare_arrows", "compare"),
              ("conv.py", "Conv arithmetic", "calculate", "conv"),
              ("gallery.py", "Lecture gallery", "school", "gallery"),
              ("readme.py", "README", "menu_book", "readme"))


def app_pages() -> list:
    """app.py's pages, in the sidebar's order (also used by a page that must rerun through
    app.py, see ``use_app_navigation``)."""
    here = APP_SCRIPT.parent / "pages"
    return [st.Page(here / script, title=title, icon=f":material/{icon}:",
                    **({"default": True} if path is None else {"url_path": path}))
            for script, title, icon, path in PAGE_TABLE]


def use_app_navigation() -> None:
    """Run this page through app.py's st.navigation (call it first thing in every page).

    Streamlit treats an app beside a pages/ folder as a "v1" multipage app until app.py first
    calls st.navigation; a fresh server whose first visitor opens /train directly runs the page
    without app.py's navigation, sidebar and styles. Such a page calls the public
    ``st.navigation`` with app.py's pages itself (which ends the pages/-folder mode for the
    server) and reruns, through app.py this time. A page run on its own as the main script
    (AppTest of one page) is left alone. This is a function, not code run on import: a rerun
    raised while this module is being imported fails that import, and pages importing it at
    the same moment in other sessions then found it half made.
    """
    if _THROUGH_APP.get():
        return
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main is None or Path(main).resolve() != APP_SCRIPT:
        return
    st.navigation(app_pages(), position="hidden")
    st.rerun()


def run_page(page) -> None:
    """``page.run()`` with a last guard: an exception no page expected becomes one sentence
    on the page and a traceback in the server's log, never a traceback or a path in the browser.

    Streamlit's own reruns and stops are BaseExceptions and pass through.
    """
    token = _THROUGH_APP.set(True)
    try:
        page.run()
    except ConfigError as exc:  # a sentence meant for the student, not caught by the page
        st.error(md_escape(str(exc)))
    except Exception:
        _log.exception("page %r failed", getattr(page, "url_path", "") or "build")
        st.error("Something went wrong on this page and was written to the server's log. "
                 "Undo your last change or reload the page; if it happens again, tell the "
                 "teacher.")
    finally:
        _THROUGH_APP.reset(token)


@st.cache_data(max_entries=256, show_spinner=False)
def _checked_spec(spec_json: str) -> None:
    """A spec's size and cost limits, checked on the meta device (cached: a refusal raises and
    is not cached, an accepted spec is checked once)."""
    check_spec(spec_from_json(spec_json))


@st.cache_data(max_entries=128, show_spinner=False)
def _analysis(spec_json: str) -> Analysis:
    return analyze(spec_from_json(spec_json))


def analysis_for(spec_json: str) -> Analysis:
    """Analyse a spec, cached by its JSON (so every page and user shares the result).

    The cost limits are checked first (``explorer.cost``); a visitor runs one analysis at a
    time, and a second one asked for meanwhile (a fragment, another widget) is refused with a
    sentence rather than queued behind the first.
    """
    _checked_spec(spec_json)
    lock = st.session_state.setdefault("_analysis_lock", threading.Lock())
    if not lock.acquire(blocking=False):
        raise ConfigError("your previous model is still being analysed; wait a moment and "
                          "change a setting again.")
    try:
        return _analysis(spec_json)
    finally:
        lock.release()


# The URL parameters that carry a spec (``SpecBase.to_query``): the family and every field.
SPEC_QUERY_KEYS = frozenset({"family"} | {f.name for cls in SPEC_TYPES.values()
                                          for f in dataclasses.fields(cls)})


@st.cache_resource(max_entries=4, show_spinner="Loading the dataset…")
def dataset(name: str, data_dir: str, download: bool):
    """One cache for every page: a dataset is loaded once and shared by every user of the
    server (read-only uint8 tensors); a blank directory means the default one, and a visitor
    names only folders inside it (``explorer.data.confined_data_dir``)."""
    return load_dataset_for_visitor(name, data_dir, download)


def current_spec():
    """The spec on the Build page, or the default preset before the Build page has run."""
    text = st.session_state.get(SPEC_KEY)
    if text:
        return spec_from_json(text)
    if "family" in st.query_params:  # a link that carries a Build page spec
        from explorer.specs import spec_from_query

        try:
            return spec_from_query(st.query_params.to_dict())
        except ConfigError:
            pass
    return get_preset(DEFAULT_PRESET).spec


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
        from explorer.admission import warm_up

        # The CPU's speed probes run now, in a child process, not when the first student
        # waits for an estimate; students who ask meanwhile wait for this one child.
        warm_up(pool.slots[0].device.split(":")[0] if pool.slots else "cpu",
                default_store_path())
    atexit.register(pool.close)
    return pool


@st.cache_resource
def get_manager():
    """The server's view of the training queue (runs are rows of the store that the worker
    processes claim), shared by all users; starts the local workers."""
    from explorer import settings
    from explorer.jobs import JobManager
    from explorer.pool import default_slots
    from explorer.runs import RunStore

    pool = get_pool()
    slots = pool.slots if pool is not None else default_slots()
    per_visitor = int(settings.read("EXPLORER_RUNS_PER_VISITOR"))
    return JobManager(RunStore(), [s.device for s in slots], max_active=per_visitor)


@st.cache_data(ttl=15, max_entries=256, show_spinner=False)
def _price(spec_json: str, config_json: str, data_name: str, data_dir: str, download: bool):
    import json

    from explorer.admission import price, slots_busy
    from explorer.footprint import DataSizes
    from explorer.runs import default_store_path
    from explorer.training import TrainConfig

    pool = get_pool()
    slots = pool.slots if pool is not None else []
    device = slots[0].device.split(":")[0] if slots else "cpu"
    data = DataSizes.of(dataset(data_name, data_dir, download))
    n = max(1, sum(s.device.startswith(device) for s in slots))
    busy = device == "cpu" and slots_busy(get_manager().store, device, n)
    return price(spec_from_json(spec_json), TrainConfig.from_dict(json.loads(config_json)), data,
                 device, n, default_store_path(), busy)


def price_run(spec, config, ref):
    """The price of a run on this server (explorer.admission), shared by every visitor for a
    few seconds: the time estimate reads the machine's load."""
    import json

    return _price(spec.to_json(), json.dumps(config.to_dict(), sort_keys=True), ref.name,
                  ref.data_dir, ref.download)


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
    """True once this browser typed the server's teacher key (in this tab or another, before a
    reload or after: the server remembers the browser, see explorer.ownership.TeacherBrowsers)."""
    from explorer.ownership import TEACHERS

    return TEACHERS.knows(visitor())


def teacher_box() -> None:
    """The teacher key field, in the sidebar, where the server has a key."""
    from explorer.ownership import TEACHERS, teacher_key_set

    if not teacher_key_set():
        return
    if is_teacher():
        st.sidebar.caption("Teacher: no run limit; you can stop or delete any run. This "
                           "browser stays the teacher's until you leave.")
        st.sidebar.button("Leave teacher mode", on_click=TEACHERS.forget, args=(visitor(),))
        return

    def check() -> None:
        text = st.session_state.pop("teacher_key_input", "")
        wait = TEACHERS.wait_s(visitor())
        if wait > 0:
            st.session_state["teacher_msg"] = (f"Too many wrong keys from this browser: try "
                                               f"again in {wait:.0f} s.")
        elif not TEACHERS.enter(visitor(), text) and text:
            st.session_state["teacher_msg"] = "That is not this server's teacher key."

    st.sidebar.text_input("Teacher key", type="password", key="teacher_key_input",
                          on_change=check, help="Set by the server's owner "
                          "($EXPLORER_TEACHER_KEY); lifts the one-run limit and lets you stop "
                          "or delete any run")
    if "teacher_msg" in st.session_state:
        st.sidebar.warning(st.session_state.pop("teacher_msg"))


def job_fragment_interval(job_id: int) -> float | None:
    """Seconds between live redraws of a job's panel: 1 while it may change, else None (off)."""
    try:
        return None if get_manager().get(job_id).done else 1.0
    except ConfigError:
        return None


def refuse_unreadable_params(readers: Mapping[str, Callable[[str], object]]) -> dict[str, str]:
    """The URL's values for this page's bound widgets that cannot be read, each taken out of
    the URL; returns {key: the value as typed, shortened}, for one sentence on the page.

    ``readers`` maps a widget key (its URL parameter) to a function that returns its value or
    raises ``ValueError``. Streamlit drops an unreadable bound value without a word, and a
    number input's binding fails outright on a number of thousands of digits; so a widget whose
    URL value is refused here is drawn unbound for this run (``bound``), the parameter is gone
    from the address, and the next run binds it again.
    """
    from explorer.bounded import shown

    refused = {}
    for key, read in readers.items():
        raw = st.query_params.get(key)
        if raw is None:
            continue
        try:
            read(raw)
        except (ValueError, OverflowError):
            refused[key] = shown(raw, 40)
            with contextlib.suppress(StreamlitAPIException):  # bound since an earlier visit
                del st.query_params[key]
    st.session_state["_unbound_this_run"] = set(refused)
    return refused


def bound(key: str) -> dict:
    """A widget's ``key``, bound to the URL parameter of that name and kept by Streamlit across
    pages (``persist_state``); unbound for a run whose URL value was refused."""
    if key in st.session_state.get("_unbound_this_run", ()):
        return {"key": key, "persist_state": "session"}
    return {"key": key, "bind": "query-params", "persist_state": "session"}


def whole(lo: int, hi: int) -> Callable[[str], int]:
    """A reader for ``refuse_unreadable_params``: a whole number from lo to hi."""
    def read(raw: str) -> int:
        if not (raw.isascii() and raw.strip().lstrip("-").isdigit()) or len(raw) > 12:
            raise ValueError(raw)
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(raw)
        return value
    return read


def one_of(options: Iterable[str]) -> Callable[[str], str]:
    """A reader for ``refuse_unreadable_params``: one of the options, as written."""
    allowed = [str(o) for o in options]

    def read(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(raw)
        return raw
    return read


def write_query(wanted: Mapping[str, str], owned: Callable[[str], bool]) -> None:
    """Make the URL hold ``wanted``: the page's other parameters (those ``owned`` says are its
    own) go, other pages' stay, and a value already there is not written again."""
    current = st.query_params.to_dict()
    for key in [k for k in current if owned(k) and k not in wanted]:
        del st.query_params[key]
    for key, value in wanted.items():
        if current.get(key) != value:
            st.query_params[key] = value

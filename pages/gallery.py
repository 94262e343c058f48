"""Lecture gallery: every course network with what to look at, one click from the Build page."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer.formatting import fmt_count, shape_text
from explorer.models import estimate
from explorer.registry import COURSE_PAIRS, PRESETS, preset_names
from pages.common import use_app_navigation

use_app_navigation()  # before anything is drawn (see pages.common)

state = st.session_state
HERE = Path(__file__).resolve().parent
# Absolute paths: st.switch_page matches them against st.navigation's pages wherever the
# entry script lives.
BUILD_PAGE = HERE / "build.py"
COMPARE_PAGE = HERE / "compare.py"
PER_ROW = 3


@st.cache_data(show_spinner=False)
def size_of(name: str) -> int:
    """Parameters of a preset, counted on the meta device (no weights allocated)."""
    return estimate(PRESETS[name].spec).params


def open_on_build(name: str) -> None:
    """Show ``name`` on the Build page, also when this session has visited it before.

    The Build page reads ?preset=NAME only on its first run in a session (its "build_version"
    key marks that run); dropping the key makes its next run read the link again.
    """
    state.pop("build_version", None)
    st.switch_page(BUILD_PAGE, query_params={"preset": name})


def open_on_compare(name: str) -> None:
    """Show the preset beside its torchvision counterpart on the Compare page."""
    other = COURSE_PAIRS[name]
    st.switch_page(COMPARE_PAGE, query_params={"cmp_models": f"{name},{other}",
                                               "cmp_pair": f"{name}|{other}",
                                               "cmp_view": "Layer by layer"})


st.title("Lecture gallery")
st.markdown("The networks of the lectures, each at its lecture input. Open one on the Build page "
            "to read every layer, or put it beside torchvision's version.")

names = preset_names("course")
gallery = st.container(key="gallery")  # assets/style.css keeps its names whole
for start in range(0, len(names), PER_ROW):
    for col, name in zip(gallery.columns(PER_ROW, gap="medium"), names[start:start + PER_ROW],
                         strict=False):
        preset = PRESETS[name]
        with col.container(border=True):
            # A zero-width space after each underscore: a narrow card breaks the name there.
            st.markdown("#### " + name.replace("_", "_\u200b"))
            st.markdown(f"**{preset.description}**")
            st.caption(f"{shape_text(preset.spec.input_shape)} input · "
                       f"{fmt_count(size_of(name))} parameters · "
                       f"{preset.spec.num_classes} classes")
            st.markdown(f"**What to look at.** {preset.note}")
            if st.button("Open on the Build page", key=f"gal_open_{name}", type="primary",
                         icon=":material/construction:", width="stretch"):
                open_on_build(name)
            if name in COURSE_PAIRS and st.button(
                    f"Compare with {COURSE_PAIRS[name]}", key=f"gal_cmp_{name}",
                    icon=":material/compare_arrows:", width="stretch",
                    help=f"torchvision's {COURSE_PAIRS[name]} beside it, layer by layer"):
                open_on_compare(name)

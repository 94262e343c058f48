"""Batch norm: statistics of a training run, BN from scratch, train vs eval, folding, norms.

One tab per view, each in its own module of ``pages/bn_views``; only the open tab runs
(``st.tabs(on_change="rerun")``), and the URL's ``bn_view`` names it (``bind="query-params"``).
"""

from __future__ import annotations

import streamlit as st

from pages.bn_views import batch, experiment, fold, modes, norms, scratch, stats
from pages.bn_views.shared import VIEWS, apply_goto, read_link, write_link
from pages.common import use_app_navigation

use_app_navigation()  # before anything is drawn (see pages.common)

SHOW = {"stats": stats.show, "experiment": experiment.show, "scratch": scratch.show,
        "modes": modes.show, "batch": batch.show, "fold": fold.show, "norms": norms.show}

read_link()
apply_goto()
st.title("Batch norm")
tabs = st.tabs(list(VIEWS.values()), key="bn_view", on_change="rerun", bind="query-params")
for tab, view in zip(tabs, VIEWS, strict=True):
    if tab.open:
        with tab:
            SHOW[view]()
write_link()

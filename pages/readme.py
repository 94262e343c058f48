"""README: the project's README rendered in the app (the sidebar links here)."""

from pathlib import Path

import streamlit as st

from pages.common import use_app_navigation

use_app_navigation()

st.markdown(Path(__file__).resolve().parent.parent.joinpath("README.md").read_text("utf-8"))

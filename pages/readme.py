"""README: the project's README rendered in the app (the sidebar links here)."""

from pathlib import Path

import streamlit as st

import pages.common  # noqa: F401  (routes a direct visit through app.py)

st.markdown(Path(__file__).resolve().parent.parent.joinpath("README.md").read_text("utf-8"))

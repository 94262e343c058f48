"""CNN Explorer: the Streamlit entry point (page config, navigation, shared sidebar)."""

import streamlit as st

from explorer.system import device_description, versions

# The pages' shared module is imported here, once, before st.navigation runs any page: the
# pages of several first visitors then find it whole instead of importing it side by side.
from pages.common import app_pages, run_page

# Presentation mode (?present=true, the sidebar toggle below): bigger type, no sidebar, results
# under the editors at full width. Read from the URL here because the sidebar's first state
# is part of the page config, drawn before the toggle is.
PRESENT = (bool(st.session_state["present"]) if "present" in st.session_state
           else st.query_params.get("present", "").lower() == "true")
# A width (250 px, narrower than Streamlit's default) means "auto": the sidebar opens on a wide
# screen and stays closed below 768 CSS pixels (a 1024×768 projector at 150 % zoom is 683 wide),
# where it would cover a third of the page.
st.set_page_config(page_title="CNN Explorer", page_icon="🧠", layout="wide",
                   initial_sidebar_state="collapsed" if PRESENT else 250)

PAGES = app_pages()  # the sidebar's pages (pages/common.py, where a page also finds them)
page = st.navigation(PAGES)

with open("assets/style.css", encoding="utf-8") as css:
    st.html(f"<style>{css.read()}</style>")
if PRESENT:
    with open("assets/present.css", encoding="utf-8") as css:
        st.html(f"<style>{css.read()}</style>")

with st.sidebar:
    st.markdown("### CNN Explorer")
    st.caption("Modern convolutional networks, layer by layer.")
    st.markdown(f"**Trains on:** {device_description()}")
    v = versions()
    st.caption(f"torch {v['torch']} · torchvision {v['torchvision']} · "
               f"torchinfo {v['torchinfo']}")
    st.toggle("Presentation mode", key="present", bind="query-params",
              help="Bigger type, the sidebar closed, results at full width under the editors. "
                   "The link carries it: add ?present=true to any page's address.")
    st.page_link(PAGES[-1], label="How to use it", icon=":material/menu_book:",
                 help="The README: how to run the app, the command line and the spec format.")

run_page(page)  # an unexpected exception becomes a sentence, its traceback goes to the log

"""CNN Explorer: the Streamlit entry point (page config, navigation, shared sidebar)."""

import streamlit as st

from explorer.system import device_description, versions

# The pages' shared module is imported here, once, before st.navigation runs any page: the
# pages of several first visitors then find it whole instead of importing it side by side.
from pages.common import run_page

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

PAGES = [
    # The default page is served at "/" (Streamlit ignores a url_path on it).
    st.Page("pages/build.py", title="Build", icon=":material/construction:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/monitoring:", url_path="train"),
    st.Page("pages/bn_lab.py", title="Batch norm", icon=":material/equalizer:",
            url_path="bn_lab"),
    st.Page("pages/inspect.py", title="Inspect", icon=":material/visibility:", url_path="inspect"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:",
            url_path="compare"),
    st.Page("pages/conv.py", title="Conv arithmetic", icon=":material/calculate:",
            url_path="conv"),
    st.Page("pages/gallery.py", title="Lecture gallery", icon=":material/school:",
            url_path="gallery"),
    st.Page("pages/readme.py", title="README", icon=":material/menu_book:", url_path="readme"),
]
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

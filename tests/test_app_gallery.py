"""AppTest of the lecture gallery: every course preset with its note, and the hand-off to the
Build page (also when the session has been on the Build page before) and to Compare."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.registry import PRESETS, preset_names

ROOT = Path(__file__).resolve().parent.parent
BUILD, GALLERY, COMPARE, INSPECT = (str(ROOT / "pages" / f"{n}.py")
                                    for n in ("build", "gallery", "compare", "inspect"))
# A navigation like app.py's with the pages this test needs (absolute paths, so the script can
# live anywhere); it does not depend on app.py listing the new pages yet.
NAV = f"""
import streamlit as st
pages = [st.Page({BUILD!r}, title="Build", default=True, url_path="build"),
         st.Page({GALLERY!r}, title="Gallery", url_path="gallery"),
         st.Page({COMPARE!r}, title="Compare", url_path="compare"),
         st.Page({INSPECT!r}, title="Inspect", url_path="inspect")]
st.navigation(pages).run()
"""


def qp(at: AppTest, key: str) -> str:
    value = at.query_params[key]
    return value[-1] if isinstance(value, list) else value


def on_gallery() -> AppTest:
    at = AppTest.from_string(NAV, default_timeout=180).run()
    return at.switch_page(GALLERY).run()


@pytest.fixture(scope="module")
def gallery() -> AppTest:
    return on_gallery()


def test_every_course_preset_has_a_card_with_its_note(gallery):
    assert not gallery.exception and not gallery.error
    assert gallery.title[0].value == "Lecture gallery"
    # The page puts a zero-width space after each underscore (where a narrow card may break).
    headings = [m.value.replace("\u200b", "") for m in gallery.markdown
                if m.value.startswith("#### ")]
    assert headings == [f"#### {n}" for n in preset_names("course")]
    text = "\n".join(m.value for m in gallery.markdown)
    for name in preset_names("course"):
        assert PRESETS[name].note in text
    opens = [b for b in gallery.button if b.key and b.key.startswith("gal_open_")]
    assert len(opens) == len(preset_names("course"))
    # The classic LeNet's card by hand: 156 + 2,416 + 30,840 + 10,164 + 850 = 44,426.
    assert any("1×28×28 input · 44.43 k parameters · 10 classes" in c.value
               for c in gallery.caption)


def test_open_on_build_after_the_build_page_was_visited():
    at = AppTest.from_string(NAV, default_timeout=180).run()
    assert at.selectbox(key="build_preset").value == "course_resnet18"  # Build was visited
    at.switch_page(GALLERY).run()
    at.button(key="gal_open_course_lenet").click().run()
    assert not at.exception
    assert at.title[0].value == "Build a network"
    assert at.selectbox(key="build_preset").value == "course_lenet"
    assert qp(at, "preset") == "course_lenet"
    # 44,426 parameters by hand (see above).
    params = next(m for m in at.metric if m.label == "Parameters")
    assert params.help == "44,426"


def test_compare_with_torchvision_opens_the_pair():
    at = on_gallery()
    at.button(key="gal_cmp_course_alexnet").click().run()
    assert not at.exception
    assert at.title[0].value == "Compare networks"
    assert at.multiselect(key="cmp_models").value == ["course_alexnet", "alexnet"]
    assert at.selectbox(key="cmp_pair").value == "course_alexnet|alexnet"
    assert at.segmented_control(key="cmp_view").value == "Layer by layer"
    # Opening another pair later in the same session replaces the comparison.
    at.switch_page(GALLERY).run()
    at.button(key="gal_cmp_course_resnet18").click().run()
    assert at.multiselect(key="cmp_models").value == ["course_resnet18", "resnet18"]
    assert at.selectbox(key="cmp_pair").value == "course_resnet18|resnet18"


def test_leaving_compare_and_coming_back_keeps_the_comparison():
    at = AppTest.from_string(NAV, default_timeout=180)
    at.query_params["cmp_models"] = "course_lenet,course_lenet5"
    at.query_params["cmp_view"] = "Layer by layer"
    at.run().switch_page(COMPARE).run()
    assert at.multiselect(key="cmp_models").value == ["course_lenet", "course_lenet5"]
    at.toggle(key="cmp_diff").set_value(True).run()
    at.switch_page(GALLERY).run()
    for key in list(at.query_params):  # the sidebar's navigation clears the URL
        del at.query_params[key]
    at.switch_page(COMPARE).run()
    assert not at.exception
    assert at.multiselect(key="cmp_models").value == ["course_lenet", "course_lenet5"]
    assert at.segmented_control(key="cmp_view").value == "Layer by layer"
    assert at.toggle(key="cmp_diff").value is True
    assert qp(at, "cmp_models") == "course_lenet,course_lenet5"
